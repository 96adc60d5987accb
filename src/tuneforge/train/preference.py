"""What the preference stages (rm, dpo, kto) share: padding-free batches and per-sequence log-probs.

Batches follow `PackedCollator`: all sequences of a batch in one row, `position_ids` restarting at 0
per sequence, no attention_mask, forward with `use_cache=False` (transformers then builds the
block-causal mask from the position_ids). A pair's chosen and rejected answers go through the model
in the same forward: the row holds every chosen sequence, then every rejected one. On tuneforge's packed
SDPA the prompt prefix all of them share (a system prompt) is computed once (data/collate.py `share_prefix`):
sequences are then cut where positions do not go on by one (model/attention.py `segment_starts`).

`sequence_logps` runs the decoder once and computes log-probs only at label positions: the LM head
runs on those hidden states only, `chunk_size` rows at a time under activation checkpointing, so no
[tokens x vocab] logits tensor exists for the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tuneforge.data.collate import PackedCollator
from tuneforge.model.attention import segment_starts
from tuneforge.model.lm_parts import resolve_lm_parts
from tuneforge.train.loss import DEFAULT_CHUNK_SIZE, IGNORE_INDEX, head_logits, in_one_head_call
from tuneforge.train.sharding import through_wrapper
from tuneforge.utils.vision_models import IMAGE_INPUTS

_FORWARD_KEYS = ("input_ids", "position_ids")


class PairwisePackedCollator:
    """Samples with input_ids/labels (chosen) and rejected_input_ids/rejected_labels -> one packed
    row `[chosen_0 .. chosen_{B-1}, rejected_0 .. rejected_{B-1}]` (input_ids, labels, position_ids);
    `share_prefix`: the prompt prefix all of them share (a system prompt) once (data/collate.py)."""

    def __init__(self, *, share_prefix: bool = False) -> None:
        self.packed = PackedCollator(share_prefix=share_prefix)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        chosen = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
        rejected = [{"input_ids": f["rejected_input_ids"], "labels": f["rejected_labels"]} for f in features]
        return self.packed(chosen + rejected)


class FeedbackPackedCollator:
    """KTO samples -> the rated answers packed in one row (input_ids, labels, position_ids), the
    mismatched KL answers in another (kl_input_ids, kl_labels, kl_position_ids), and `kto_tags` [B]."""

    def __init__(self, *, share_prefix: bool = False) -> None:
        self.packed = PackedCollator(share_prefix=share_prefix)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        target = self.packed([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        kl = self.packed([{"input_ids": f["kl_input_ids"], "labels": f["kl_labels"]} for f in features])
        return {**target, **{f"kl_{key}": value for key, value in kl.items()},
                "kto_tags": torch.tensor([bool(f["kto_tag"]) for f in features], dtype=torch.bool)}


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """[T] index of the packed sequence each position belongs to (model/attention.py's `segment_starts`)."""
    return segment_starts(position_ids.reshape(-1)).long().cumsum(0) - 1


def _chunk_token_logps(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, softcap: float | None):
    return -F.cross_entropy(head_logits(head, hidden, softcap).float(), targets, reduction="none")


def chunked_token_logps(
    hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, *,
    chunk_size: int = DEFAULT_CHUNK_SIZE, final_logit_softcapping: float | None = None,
) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) for every row of `hidden` [N, H], `chunk_size` rows of logits at a time."""
    if hidden.shape[0] == 0:
        return hidden.sum(-1) * 0.0
    use_checkpoint = torch.is_grad_enabled() and hidden.requires_grad

    def chunks(head_forward, rows: torch.Tensor) -> torch.Tensor:
        parts = []
        for start in range(0, rows.shape[0], chunk_size):
            h, t = rows[start : start + chunk_size], targets[start : start + chunk_size]
            if use_checkpoint:  # recompute this chunk's logits in backward instead of keeping them
                parts.append(checkpoint(_chunk_token_logps, h, t, head_forward, final_logit_softcapping,
                                        use_reentrant=False))
            else:
                parts.append(_chunk_token_logps(h, t, head_forward, final_logit_softcapping))
        return torch.cat(parts)

    return in_one_head_call(head, chunks, hidden)  # an FSDP2-sharded head: the loop as its one call


def label_token_logps(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor, *,
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p of every label token of a packed row ([1, T] tensors, position_ids restarting at 0 per sequence):
    (log-probs [N] in row order, the sequence each belongs to [N], the mask [T-1] of predicting positions)."""
    segments = segment_ids(position_ids)
    shift_labels = labels[0, 1:]
    keep = shift_labels != IGNORE_INDEX
    targets, owner = shift_labels[keep], segments[1:][keep]
    inner = _unwrap(model)  # DDP, FSDP1 and DeepSpeed wrap the model; FSDP2 shards it in place
    parts, _ = resolve_lm_parts(inner)
    if parts is not None:
        def label_logps(input_ids, position_ids):
            out = parts.decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            return chunked_token_logps(hidden[0, :-1][keep], targets, parts.head, chunk_size=chunk_size,
                                       final_logit_softcapping=parts.final_logit_softcapping)

        # a wrapper's (or FSDP2's) own work around the forward must run: the label-only computation as its forward
        token_logps = through_wrapper(model, inner, label_logps, {"input_ids": input_ids, "position_ids": position_ids})
    else:  # the model's own forward: full logits (models outside the chunked-path list)
        logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
        token_logps = -F.cross_entropy(logits[0, :-1][keep].float(), targets, reduction="none")
    return token_logps, owner, keep


def padded_label_logps(model: nn.Module, inputs: Mapping[str, torch.Tensor], prefix: str = ""):
    """log p of every label token of right-padded rows ([N, T] with `attention_mask`; a vision-language model's
    batch, data/collate_vision.py, whose forward also takes the pixels), the rows under `prefix` (kto's `kl_`):
    (log-probs, the row of each, the column of the token predicting it -- its position in the sequence)."""
    labels = inputs[f"{prefix}labels"]
    forward = {key: inputs[prefix + key] for key in ("input_ids", "attention_mask", *IMAGE_INPUTS)
               if prefix + key in inputs}
    logits = model(**forward, use_cache=False).logits[:, :-1]
    keep = labels[:, 1:] != IGNORE_INDEX
    token_logps = -F.cross_entropy(logits[keep].float(), labels[:, 1:][keep], reduction="none")
    rows, columns = keep.nonzero(as_tuple=True)
    return token_logps, rows, columns


def sequence_logps(
    model: nn.Module, inputs: Mapping[str, torch.Tensor], *, prefix: str = "", chunk_size: int = DEFAULT_CHUNK_SIZE,
    ld_alpha: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the label tokens of every packed sequence, and their token counts.

    `inputs` holds `{prefix}input_ids`, `{prefix}labels`, `{prefix}position_ids` ([1, T], packed), or padded
    rows with an `attention_mask` (`padded_label_logps`).
    Returns two [N] tensors (N = sequences in the row, in order): sum of log p over labelled
    tokens (float32) and the number of those tokens. With `ld_alpha` (LD-DPO; the row must be a pairwise
    one: N/2 chosen sequences, then their N/2 rejected ones) the sums are `length_desensitized_sums`; the
    counts stay the plain label counts, as in LF.
    """
    if f"{prefix}position_ids" not in inputs and f"{prefix}attention_mask" in inputs:
        token_logps, owner, positions = padded_label_logps(model, inputs, prefix)  # a vision-language model's rows
        counts = torch.bincount(owner, minlength=inputs[f"{prefix}input_ids"].shape[0])
        if ld_alpha is not None:
            return length_desensitized_sums(token_logps, owner, positions, counts, ld_alpha), counts
        sums = torch.zeros(counts.shape[0], dtype=torch.float32, device=token_logps.device)
        return sums.index_add(0, owner, token_logps), counts
    position_ids = inputs[f"{prefix}position_ids"]
    token_logps, owner, keep = label_token_logps(model, inputs[f"{prefix}input_ids"], inputs[f"{prefix}labels"],
                                                 position_ids, chunk_size=chunk_size)
    num_sequences = int(segment_ids(position_ids)[-1]) + 1
    counts = torch.zeros(num_sequences, dtype=torch.long, device=owner.device)
    counts = counts.index_add(0, owner, torch.ones_like(owner))
    if ld_alpha is not None:
        # the position of the token that predicts each label: its offset in the sequence (LF's padded column)
        positions = position_ids[0, :-1][keep]
        return length_desensitized_sums(token_logps, owner, positions, counts, ld_alpha), counts
    sums = torch.zeros(num_sequences, dtype=torch.float32, device=token_logps.device)
    return sums.index_add(0, owner, token_logps), counts


def length_desensitized_sums(token_logps: torch.Tensor, owner: torch.Tensor, positions: torch.Tensor,
                             counts: torch.Tensor, alpha: float) -> torch.Tensor:
    """LD-DPO (Liu et al. 2024) log-probs of pairwise sequences, as LF's `get_batch_logps(ld_alpha=...)`.

    Sequences are `[chosen_0 .. chosen_{B-1}, rejected_0 .. rejected_{B-1}]`; `token_logps`, `owner` (the
    sequence of each labelled token) and `positions` (the offset in its sequence of the token that predicts
    it) hold one entry per labelled token, `counts` the labelled tokens per sequence. Pair i shares the length
    l_i = min(counts[chosen_i], counts[rejected_i]); a token counts fully when its position is before the
    sequence's first labelled position + l_i (the shared part) and `alpha` times beyond it (the verbose tail).
    Returns the [2B] weighted sums.
    """
    num_sequences = counts.shape[0]
    half = num_sequences // 2
    shared = torch.minimum(counts[:half], counts[half:]).repeat(2)
    first = torch.zeros(num_sequences, dtype=torch.long, device=positions.device)  # first labelled position
    first = first.scatter_reduce(0, owner, positions.long(), reduce="amin", include_self=False)
    front = positions < (first + shared)[owner]
    weights = torch.where(front, torch.ones_like(token_logps), torch.full_like(token_logps, alpha))
    sums = torch.zeros(num_sequences, dtype=torch.float32, device=token_logps.device)
    return sums.index_add(0, owner, token_logps * weights)


def mean_metrics(**values: torch.Tensor) -> dict[str, float]:
    """`{name: mean}` of non-empty tensors (empty ones are left out, e.g. no undesirable sample)."""
    return {name.replace("__", "/"): float(value.float().mean()) for name, value in values.items() if value.numel()}


# Stage metrics kept in trainer_log.jsonl and the console line (see LogCallback.extra_keys).
PREFERENCE_LOG_KEYS = ("rewards/", "logps/", "accuracy", "kl")


def build_objective_trainer(cfg, model, tokenizer, bundle, collator, objective):
    """`workflow.build_trainer` with a stage objective and the preference metrics logged."""
    from tuneforge.train.workflow import build_trainer

    return build_trainer(cfg, model, tokenizer, bundle, collator, objective=objective,
                         extra_log_keys=PREFERENCE_LOG_KEYS)


def load_reference_model(cfg, *, lora_policy: bool):
    """The frozen reference model of dpo/kto, or None when the LoRA policy with its adapter disabled
    serves as reference (no second copy in memory).

    `ref_model` (+ `ref_model_adapters`) when set; else, for full/freeze, a frozen copy of the
    starting model.
    """
    import dataclasses

    from tuneforge.model.loader import load_model
    from tuneforge.train.workflow import compute_dtype, ref_model_arguments

    finetuning = cfg.finetuning
    model_args = ref_model_arguments(cfg)
    if model_args is not None:
        ref_finetuning = dataclasses.replace(finetuning, finetuning_type="lora" if model_args.adapter_name_or_path
                                             else "full")
        return load_model(model_args, ref_finetuning, is_trainable=False, compute_dtype=compute_dtype(cfg))
    if lora_policy:
        return None
    return load_model(cfg.model, finetuning, is_trainable=False, compute_dtype=compute_dtype(cfg))


def reference_logps(model: nn.Module, ref_model: nn.Module | None, inputs, *, prefix: str = "",
                    chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_logps` of the reference: `ref_model`, else `model` with its LoRA adapter disabled (plain
    sums: LF applies `ld_alpha` to the policy only)."""
    with torch.no_grad():
        if ref_model is not None:
            return sequence_logps(ref_model, inputs, prefix=prefix, chunk_size=chunk_size)
        with _unwrap(model).disable_adapter():
            return sequence_logps(model, inputs, prefix=prefix, chunk_size=chunk_size)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)
