"""SlotKVCache: the keys and values of several sequences decoded together (continuous batching).

Each sequence owns one slot of a per-layer buffer ``[slots, kv_heads, capacity, head_dim]``. Slots stay
compact -- the n active sequences hold slots 0..n-1 -- so a decode step reads ``buffer[:n, :, :longest]``
without a gather; when a sequence ends, the last slot moves into its place. A sequence joins with the
cache of its own prefill (the model's forward on its prompt), copied into a free slot. Attention masks
out each slot's positions past its own length, so sequences of any length share one SDPA call per layer.
Buffers grow by doubling (slots and capacity), never shrink: the engine drops the whole cache when idle.
"""

from __future__ import annotations

import torch


class SlotKVCache:
    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, *, slots: int = 4, capacity: int = 256):
        self.shape = (kv_heads, head_dim)
        self.num_layers, self.dtype, self.device = num_layers, dtype, device
        self.keys = [self._empty(slots, capacity) for _ in range(num_layers)]
        self.values = [self._empty(slots, capacity) for _ in range(num_layers)]
        self.lengths: list[int] = []  # tokens held by slot i (the active sequences, in slot order)

    def _empty(self, slots: int, capacity: int) -> torch.Tensor:
        kv_heads, head_dim = self.shape
        return torch.zeros(slots, kv_heads, capacity, head_dim, dtype=self.dtype, device=self.device)

    @property
    def count(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def _grow(self, slots: int, capacity: int) -> None:
        old_slots, old_capacity = self.keys[0].shape[0], self.capacity
        if slots <= old_slots and capacity <= old_capacity:
            return
        slots, capacity = max(slots, old_slots), max(capacity, old_capacity)
        longest = max(self.lengths, default=0)
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                new = self._empty(slots, capacity)
                new[: self.count, :, :longest].copy_(old[: self.count, :, :longest])
                buffers[i] = new

    def add(self, layer_keys: list[torch.Tensor], layer_values: list[torch.Tensor]) -> int:
        """A new sequence from its prefill cache (per layer ``[1, kv_heads, length, head_dim]``); its slot."""
        length = layer_keys[0].shape[-2]
        slot = self.count
        self._grow(_doubled(self.keys[0].shape[0], slot + 1), _doubled(self.capacity, length + 1))
        for i in range(self.num_layers):
            self.keys[i][slot, :, :length].copy_(layer_keys[i][0])
            self.values[i][slot, :, :length].copy_(layer_values[i][0])
        self.lengths.append(length)
        return slot

    def remove(self, slot: int) -> int | None:
        """Free ``slot``; the last slot's sequence moves into it. Returns the moved sequence's old slot (None
        when ``slot`` was the last)."""
        last = self.count - 1
        if slot != last:
            length = self.lengths[last]
            for buffers in (self.keys, self.values):
                for buffer in buffers:
                    buffer[slot, :, :length].copy_(buffer[last, :, :length])
            self.lengths[slot] = length
        self.lengths.pop()
        return last if slot != last else None

    def begin_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Before a decode step: room for one more token each; returns (write positions ``[n]``, attention
        mask ``[n, 1, 1, longest + 1]`` -- True where a slot may attend)."""
        longest = max(self.lengths) + 1
        if longest > self.capacity:
            self._grow(0, _doubled(self.capacity, longest))
        positions = torch.tensor(self.lengths, dtype=torch.long, device=self.device)
        mask = torch.arange(longest, device=self.device).unsqueeze(0) <= positions.unsqueeze(1)
        # the same for every layer of this step: made once here, not in `write`
        self._step_rows = torch.arange(self.count, device=self.device)
        self._step_positions, self._step_longest = positions, longest
        return positions, mask[:, None, None, :]

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's ``[n, kv_heads, 1, head_dim]`` key/value of every slot; returns the views to attend."""
        n, rows = self.count, self._step_rows
        keys, values = self.keys[layer], self.values[layer]
        keys[rows, :, self._step_positions] = key[:, :, 0].to(self.dtype)
        values[rows, :, self._step_positions] = value[:, :, 0].to(self.dtype)
        return keys[:n, :, : self._step_longest], values[:n, :, : self._step_longest]

    def end_step(self) -> None:
        self.lengths = [length + 1 for length in self.lengths]


def _doubled(current: int, needed: int) -> int:
    size = max(current, 1)
    while size < needed:
        size *= 2
    return size
