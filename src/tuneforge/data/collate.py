"""Batch collators: padding-free packing for training, right padding for everything else.

`PackedCollator` concatenates the samples of a batch into one row. Attention never crosses a
sample boundary because `position_ids` restart at 0 for each sample:

- SDPA / eager (CPU): transformers' `create_causal_mask` detects the restarts when
  `attention_mask is None` and there is no KV cache, and builds a block-causal mask. The forward
  must therefore run with `use_cache=False` (with a cache the detection is skipped and samples
  attend to each other); `TuneforgeTrainer` always passes it.
- FlashAttention-2 (GPU): the same position_ids select the varlen kernel. With
  `return_flash_attn_kwargs=True` the batch also carries `cu_seq_lens_q/k` and `max_length_q/k`,
  so the kernel does not re-derive the boundaries from position_ids in every layer.

With `share_prefix=True` (sft on tuneforge's packed SDPA) the prompt prefix every sample of the batch
shares -- typically the system prompt -- is written once, with the first sample, and every other sample
continues it with positions that go on from it (model/attention.py attends across the two). Only a
prefix carrying no label is shared, so losses and gradients are those of the unshared row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tuneforge.errors import DataError

IGNORE_INDEX = -100
# Shorter common prefixes are not worth a separate segment (and an attention mask per sample).
MIN_SHARED_PREFIX = 8


def _as_id_list(feature: Mapping[str, Any], key: str, index: int) -> list[int]:
    value = feature.get(key)
    if value is None:
        raise DataError(
            f"Batch sample {index} has no {key!r} (keys found: {sorted(feature)}); "
            "expected the encoded sample {'input_ids': [...], 'labels': [...]}."
        )
    if isinstance(value, torch.Tensor):
        return value.reshape(-1).tolist()
    return list(value)


def _ids_and_labels(features: Sequence[Mapping[str, Any]]) -> list[tuple[list[int], list[int]]]:
    if len(features) == 0:
        raise DataError("Cannot collate an empty batch: expected at least one sample.")
    pairs = []
    for index, feature in enumerate(features):
        input_ids = _as_id_list(feature, "input_ids", index)
        # Pre-training samples may come without labels: every token is then a target.
        labels = _as_id_list(feature, "labels", index) if "labels" in feature else list(input_ids)
        if len(input_ids) == 0:
            raise DataError(f"Batch sample {index} has empty 'input_ids'; expected at least one token.")
        if len(labels) != len(input_ids):
            raise DataError(
                f"Batch sample {index}: 'labels' has {len(labels)} entries but 'input_ids' has "
                f"{len(input_ids)}; expected one label per token."
            )
        pairs.append((input_ids, labels))
    return pairs


def shared_prefix_length(pairs: Sequence[tuple[list[int], list[int]]]) -> int:
    """Tokens every sample starts with that can be computed once: no label on them nor on the token after
    them (that token's label would be predicted from the shared part), and every sample keeps one token."""
    limit = min(next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
                for _, labels in pairs) - 1
    first = pairs[0][0]
    length = 0
    while length < limit and all(ids[length] == first[length] for ids, _ in pairs[1:]):
        length += 1
    return max(length, 0)


class PackedCollator:
    """Padding-free batches: all samples of a batch become one row of length T = sum of lengths.

    Returns `input_ids [1,T]`, `labels [1,T]`, `position_ids [1,T]` (restarting at 0 per sample)
    and no `attention_mask`. The first label of every sample is -100: with the usual causal shift
    that label would be predicted from the previous sample's last token. With `share_prefix` and a common
    label-free prefix of P >= MIN_SHARED_PREFIX tokens, the first sample is written whole and every other
    one from its token P on, positions P, P+1, ...: T = sum of lengths - (B - 1) x P.
    """

    def __init__(self, *, return_flash_attn_kwargs: bool = False, share_prefix: bool = False) -> None:
        if share_prefix and return_flash_attn_kwargs:
            raise ValueError("share_prefix needs tuneforge's packed SDPA attention, not FlashAttention's varlen kernel")
        self.return_flash_attn_kwargs = return_flash_attn_kwargs
        self.share_prefix = share_prefix

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        pairs = _ids_and_labels(features)
        shared = shared_prefix_length(pairs) if self.share_prefix and len(pairs) > 1 else 0
        if shared < MIN_SHARED_PREFIX:
            shared = 0
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        boundaries = [0]
        for index, (sample_ids, sample_labels) in enumerate(pairs):
            skip = shared if index else 0  # the first sample is written whole: the others continue it
            input_ids.extend(sample_ids[skip:])
            labels.append(IGNORE_INDEX)
            labels.extend(sample_labels[skip + 1:])
            position_ids.extend(range(skip, len(sample_ids)))
            boundaries.append(len(input_ids))

        batch: dict[str, Any] = {
            "input_ids": torch.tensor([input_ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([position_ids], dtype=torch.long),
        }
        if self.return_flash_attn_kwargs:
            cu_seq_lens = torch.tensor(boundaries, dtype=torch.int32)
            max_length = int(cu_seq_lens.diff().max())
            batch.update(
                cu_seq_lens_q=cu_seq_lens,
                cu_seq_lens_k=cu_seq_lens.clone(),
                max_length_q=max_length,
                max_length_k=max_length,
            )
        return batch


class PaddedCollator:
    """Right padding to the longest sample (rounded up to `pad_to_multiple_of` when given).

    Returns `input_ids`, `attention_mask` (1 = real token) and `labels` (-100 on padding).
    """

    def __init__(
        self,
        pad_token_id: int,
        *,
        pad_to_multiple_of: int | None = None,
        label_pad_token_id: int = IGNORE_INDEX,
    ) -> None:
        if pad_token_id is None:
            raise DataError(
                "PaddedCollator needs a pad token id but the tokenizer has none; "
                "expected tokenizer.pad_token_id to be set (the template sets one)."
            )
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise DataError(f"pad_to_multiple_of must be a positive integer, found {pad_to_multiple_of}.")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.label_pad_token_id = label_pad_token_id

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        pairs = _ids_and_labels(features)
        width = max(len(ids) for ids, _ in pairs)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of

        input_ids = torch.full((len(pairs), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(pairs), width), self.label_pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for row, (ids, sample_labels) in enumerate(pairs):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            labels[row, : len(ids)] = torch.tensor(sample_labels, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
