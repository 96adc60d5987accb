"""Attention for padding-free (packed) batches on PyTorch SDPA: one SDPA call per sample.

A packed training row holds several samples; a new sample starts wherever `position_ids` do not
follow on (+1). Plain `sdpa` then gets a [T x T] block-causal mask from transformers, which (on CPU)
rules out the causal fast path, computes all T^2 scores although only sum(n_i^2)/2 are needed, and
keeps a float copy of the mask in every layer. `packed_sdpa` instead cuts the row into its segments
and runs SDPA with `is_causal=True` on each: the same result, a fraction of the work, no mask.

Shared prefixes: a segment whose positions start at s > 0 continues the last segment that started at
0 -- it attends to that segment's first s tokens, then to itself causally. `PackedCollator(share_prefix=
True)` writes the prompt prefix all samples of a batch share (a system prompt) once, with the first
sample, and only the rest of every other sample: the prefix is computed once per batch instead of once
per sample, with the same attention, positions and loss (exact up to float summation order).

On a CPU, 16-bit (bf16 autocast) query/key/value go through SDPA in float32 and come back in their dtype:
PyTorch's CPU flash attention is ~3x slower in bf16 than in float32 (its backward above all; measured in
bench/RESULTS.md section 17), and float32 is the more exact of the two.

Everything that is not a packed row (padded batches, KV-cache decoding, a single sample, a row given an
all-ones attention_mask: one causal sequence whatever its position_ids) goes to transformers' own `sdpa`
unchanged, with the mask transformers built for it.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

PACKED_SDPA = "tuneforge_packed_sdpa"
# Every packed sample has its own length: cuDNN attention builds a graph per new shape (2.7 ms of CPU per
# call on an H200, 15x the kernel; bench/RESULTS.md "GPU"), so the per-sample calls leave it out.
_HALF = (torch.bfloat16, torch.float16)
_PER_SAMPLE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def segment_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """Bool tensor of `position_ids`' shape: True where a packed segment begins (the first position, and
    wherever the position does not go on by one) -- the one rule for cutting a packed row into sequences."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[..., 1:] = position_ids[..., 1:] != position_ids[..., :-1] + 1
    return starts


def packed_segments(position_ids: torch.Tensor | None, length: int) -> list[tuple[int, int]] | None:
    """(length, first position) of every segment of a packed row, or None if it is not one.

    A row is packed when it is a single row of `length` positions that starts at 0 and has more than one
    segment, every segment that starts at s > 0 continuing an earlier one of at least s tokens that
    started at 0 (what `PackedCollator` produces; a KV-cache step never starts at 0 mid-row).
    """
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape != (1, length) or length < 2:
        return None
    positions = position_ids[0]
    starts = torch.nonzero(segment_starts(positions)[1:]).flatten().add(1).tolist()
    if not starts or int(positions[0]) != 0:
        return None
    bounds = [0, *starts, length]
    segments, root = [], 0
    for start, end, first in zip(bounds, bounds[1:], positions[bounds[:-1]].tolist()):
        if first == 0:
            root = end - start
        elif first > root:  # nothing to continue: not a layout this module writes
            return None
        segments.append((end - start, first))
    return segments


def sample_token_count(position_ids: torch.Tensor) -> int:
    """Tokens of the samples a packed row holds: a shared prefix counts once for every sample that has it."""
    segments = packed_segments(position_ids, position_ids.shape[-1]) or [(position_ids.shape[-1], 0)]
    return sum(first + length for length, first in segments)


def _continuation_mask(length: int, first: int, window: int | None, device) -> torch.Tensor | None:
    """[1, 1, length, first + length] mask of a segment starting at position `first` (None: plain causal)."""
    if first == 0 and (not window or length <= window):
        return None
    query = torch.arange(first, first + length, device=device)[:, None]
    key = torch.arange(first + length, device=device)[None, :]
    allowed = key <= query
    if window:  # transformers' sliding window: a key more than `window - 1` positions back is not seen
        allowed &= key > query - window
    return allowed[None, None]


def packed_sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """`sdpa` per packed segment; query/key/value are [1, heads, T, head_dim]."""
    if query.device.type == "cpu" and (torch.is_autocast_enabled("cpu") or query.dtype in _HALF):
        if attention_mask is not None and attention_mask.is_floating_point():  # an additive mask: same dtype
            attention_mask = attention_mask.float()
        with torch.autocast("cpu", enabled=False):  # CPU autocast would run SDPA in its 16-bit dtype
            out, weights = _packed_sdpa(module, query.float(), key.float(), value.float(), attention_mask,
                                        dropout=dropout, scaling=scaling, **kwargs)
        return out.to(value.dtype), weights
    return _packed_sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def _packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    q_len = query.shape[2]
    segments = None
    # transformers builds a (block-causal) mask whenever it detects a packed row; None means it chose
    # plain causal attention over the whole row (e.g. an all-ones attention_mask given with restarting
    # position_ids: `packing: true` without neat_packing), which splitting would contradict.
    if key.shape[2] == q_len and query.shape[0] == 1 and attention_mask is not None:
        segments = packed_segments(kwargs.get("position_ids"), q_len)
    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    window = getattr(module, "sliding_window", None)
    lengths = [length for length, _ in segments]
    outputs = []
    # split (not slicing): its backward is one concatenation instead of a zero-filled
    # full-size gradient per sample.
    with sdpa_kernel(_PER_SAMPLE_BACKENDS):
        for q, k, v, (length, first) in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2),
                                            segments):
            if first == 0:
                root_key, root_value = k, v
            else:  # a shared prefix's keys/values come first; their gradient sums over every continuation
                k, v = torch.cat([root_key[:, :, :first], k], 2), torch.cat([root_value[:, :, :first], v], 2)
            mask = _continuation_mask(length, first, window, q.device)
            out, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=dropout, scaling=scaling,
                                            is_causal=mask is None)
            outputs.append(out)  # [1, n_i, heads, head_dim]
    return torch.cat(outputs, dim=1), None


def runs_packed_sdpa(*models) -> bool:
    """Whether every given model (None: none there, e.g. no reference model) runs `packed_sdpa`, the only
    attention that reads shared-prefix rows right; a value-head model answers through its `config` property."""
    return all(getattr(getattr(model, "config", None), "_attn_implementation", None) == PACKED_SDPA
               for model in models if model is not None)


def register_packed_sdpa() -> str:
    """Make `attn_implementation=PACKED_SDPA` known to transformers (idempotent); returns the name."""
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, sdpa_mask)
    return PACKED_SDPA
