"""Micro-batches sized by a token budget: LF v1's `batching_strategy: dynamic_batching | dynamic_padding_free`.

The budget is `cutoff_len` x `per_device_train_batch_size` tokens (v1: `cutoff_len * micro_batch_size`).
Samples are taken in shuffled order and added to the current micro-batch while it stays within the budget:
`dynamic_batching` counts padded tokens (the longest sample x the number of samples: the batch is padded),
`dynamic_padding_free` counts the sum of the sample lengths (the batch is one padding-free row). A sample that
would overflow starts the next micro-batch; a micro-batch always takes at least one sample. Same seed and epoch,
same micro-batches. Unlike v1 (which carries the leftover samples into the next step and replays one order), an
epoch here is one pass over the data, reshuffled per epoch, ending with a possibly smaller micro-batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def token_budget_batches(order: Sequence[int], lengths: Sequence[int], budget: int, *, padded: bool) -> list[list[int]]:
    """The samples of `order` grouped greedily into micro-batches of at most `budget` tokens."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = total = 0
    for index in order:
        length = lengths[index]
        cost = max(longest, length) * (len(current) + 1) if padded else total + length
        if current and cost > budget:
            batches.append(current)
            current, longest, total = [], 0, 0
        current.append(index)
        longest, total = max(longest, length), total + length
    if current:
        batches.append(current)
    return batches


class TokenBudgetBatchSampler:
    """A batch sampler (DataLoader `batch_sampler=`) of token-budget micro-batches, reshuffled per epoch."""

    def __init__(self, lengths: Sequence[int], budget: int, *, padded: bool, seed: int, shuffle: bool = True) -> None:
        self.lengths, self.budget, self.padded = list(lengths), int(budget), padded
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self._cached: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        if self._cached is None or self._cached[0] != self.epoch:
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed + self.epoch)
                order = torch.randperm(len(self.lengths), generator=generator).tolist()
            else:
                order = list(range(len(self.lengths)))
            self._cached = (self.epoch, token_budget_batches(order, self.lengths, self.budget, padded=self.padded))
        return self._cached[1]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
