"""Attention for padding-free (packed) batches on PyTorch SDPA: one causal SDPA call per sample.

A packed training row holds several samples; `position_ids` restart at 0 at each one. Plain
`sdpa` then gets a [T x T] block-causal mask from transformers, which (on CPU) rules out the
causal fast path, computes all T^2 scores although only sum(n_i^2)/2 are needed, and keeps a float
copy of the mask in every layer. `packed_sdpa` instead cuts the row at the restarts and runs
SDPA with `is_causal=True` on each sample: the same result, a fraction of the work, no mask.

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
_PER_SAMPLE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def packed_lengths(position_ids: torch.Tensor | None, length: int) -> list[int] | None:
    """Sample lengths of a packed row, or None if it is not one.

    A row is packed when it is a single row of `length` positions that starts at 0 and restarts
    at 0 later on (what `PackedCollator` produces; a KV-cache step never starts at 0 mid-row).
    """
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape != (1, length) or length < 2:
        return None
    starts = torch.nonzero(position_ids[0] == 0).flatten().tolist()
    if len(starts) < 2 or starts[0] != 0:
        return None
    return [end - start for start, end in zip(starts, [*starts[1:], length])]


def packed_sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """`sdpa` per packed sample; query/key/value are [1, heads, T, head_dim]."""
    q_len = query.shape[2]
    lengths = None
    # transformers builds a (block-causal) mask whenever it detects a packed row; None means it chose
    # plain causal attention over the whole row (e.g. an all-ones attention_mask given with restarting
    # position_ids: `packing: true` without neat_packing), which splitting would contradict.
    if key.shape[2] == q_len and query.shape[0] == 1 and attention_mask is not None:
        lengths = packed_lengths(kwargs.get("position_ids"), q_len)
    window = getattr(module, "sliding_window", None)
    if lengths is not None and window and max(lengths) > window:
        lengths = None  # the mask transformers built also applies the sliding window
    if lengths is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    outputs = []
    # split (not slicing): its backward is one concatenation instead of a zero-filled
    # full-size gradient per sample.
    with sdpa_kernel(_PER_SAMPLE_BACKENDS):
        for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2)):
            out, _ = sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=True)
            outputs.append(out)  # [1, n_i, heads, head_dim]
    return torch.cat(outputs, dim=1), None


def register_packed_sdpa() -> str:
    """Make `attn_implementation=PACKED_SDPA` known to transformers (idempotent); returns the name."""
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, sdpa_mask)
    return PACKED_SDPA
