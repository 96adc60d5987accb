"""Batches of the sft layouts `data/packing.py` describes: `sft_collator` picks the collator for a config, and
`BinCollator` batches `packing: true` rows (kept apart from the encoding side, which runs without torch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tuneforge.config.args import DataArguments
from tuneforge.data.collate import PackedCollator, PaddedCollator
from tuneforge.data.packing import packing_mode
from tuneforge.errors import DataError


def _positions(feature: Mapping[str, Any], index: int) -> list[int]:
    positions, length = feature.get("position_ids"), len(feature["input_ids"])
    if isinstance(positions, torch.Tensor):
        positions = positions.reshape(-1).tolist()
    if positions is None or len(positions) != length or not length or positions[0] != 0:
        raise DataError(f"packed row {index} has no position_ids starting at 0 for its {length} tokens; "
                        "expected a row built by `packing: true`")
    return [int(p) for p in positions]


def _samples_of_row(feature: Mapping[str, Any], index: int) -> list[dict[str, list]]:
    """A packed row cut back into its samples (position_ids restart at 0 at each one)."""
    positions = _positions(feature, index)
    ids, labels = feature["input_ids"], feature["labels"]
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    return [{"input_ids": ids[a:b], "labels": labels[a:b]} for a, b in zip(starts, starts[1:])]


class BinCollator:
    """Batches of `packing: true` rows. neat: every sample of every row into one padding-free row (no
    attention across samples); otherwise right-padded rows with `attention_mask` and the rows' own
    `position_ids` (one causal sequence per row)."""

    def __init__(self, pad_token_id: int, *, neat: bool, share_prefix: bool = False) -> None:
        self.neat = neat
        self.padded = PaddedCollator(pad_token_id=pad_token_id)
        self.packed = PackedCollator(share_prefix=share_prefix)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if self.neat:
            return self.packed([sample for i, row in enumerate(features) for sample in _samples_of_row(row, i)])
        batch = self.padded(features)
        positions = torch.zeros_like(batch["input_ids"])  # padding: position 0, as LF
        for row, feature in enumerate(features):
            values = _positions(feature, row)
            positions[row, : len(values)] = torch.tensor(values, dtype=torch.long)
        batch["position_ids"] = positions
        return batch


def sft_collator(data: DataArguments, pad_token_id: int, *, share_prefix: bool = False,
                 batching_strategy: str | None = None):
    """The collator for sft's layout (see `packing_mode`); `share_prefix` (a model on tuneforge's packed SDPA):
    padding-free batches compute the prompt prefix their samples share once (data/collate.py)."""
    mode = packing_mode(data, batching_strategy)
    if mode == "bins":
        return BinCollator(pad_token_id, neat=data.neat_packing, share_prefix=share_prefix)
    return PaddedCollator(pad_token_id=pad_token_id) if mode == "padded" else PackedCollator(share_prefix=share_prefix)

