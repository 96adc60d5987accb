"""Model FLOPs of one training step, the numerator of the benchmark's MFU.

Counted as useful work only (recomputation by checkpointing is overhead, not counted):

- every linear layer of the decoder, per real token: 2·N forward + 2·N backward through the
  activations, + 2·N_trainable for weight gradients (so ≈ 4·N for LoRA, 6·N for full);
- attention scores and weighted sum, per sample of length s: 2 matmuls x 2·s(s+1)/2·d_attn per
  layer forward (causal half), x 3 for forward + backward;
- the LM head only at label positions (the chunked loss never computes it elsewhere):
  2·V·H forward + 2·V·H backward (+ 2·V·H when the head trains).

Embedding lookups, norms and element-wise ops are not matmuls and are left out, as in the usual
MFU definitions (PaLM appendix B).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFlopsShape:
    linear_params: int  # decoder linear weights (LoRA A/B included), no LM head
    trainable_linear_params: int
    head_params: int  # V x H of the output projection
    head_trainable: bool
    num_layers: int
    attention_width: int  # num_heads x head_dim (the width of Q K^T and A V)


def shape_from_model(model) -> ModelFlopsShape:
    """Read the counts from a loaded (possibly peft-wrapped) model."""
    from torch import nn

    base = model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    head_weight = getattr(head, "weight", None)
    linear = trainable = 0
    for module in base.modules():
        if not isinstance(module, nn.Linear) or module is head:
            continue
        if head_weight is not None and module.weight is head_weight:
            continue
        # a bitsandbytes 4-bit weight is packed (several values an element); its quant_state has the real shape
        quant_shape = getattr(getattr(module.weight, "quant_state", None), "shape", None)
        count = math.prod(quant_shape) if quant_shape is not None else module.weight.numel()
        linear += count
        if module.weight.requires_grad:
            trainable += count
    config = getattr(base.config, "text_config", None) or base.config
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return ModelFlopsShape(
        linear_params=linear,
        trainable_linear_params=trainable,
        head_params=head_weight.numel() if head_weight is not None else 0,
        head_trainable=bool(head_weight is not None and head_weight.requires_grad),
        num_layers=int(config.num_hidden_layers),
        attention_width=heads * head_dim,
    )


def linear_flops_per_token(shape: ModelFlopsShape) -> float:
    return 4.0 * shape.linear_params + 2.0 * shape.trainable_linear_params


def head_flops_per_label(shape: ModelFlopsShape) -> float:
    return (6.0 if shape.head_trainable else 4.0) * shape.head_params


def attention_flops_per_sample(shape: ModelFlopsShape, length: int) -> float:
    forward = 2 * 2.0 * (length * (length + 1) / 2) * shape.attention_width * shape.num_layers
    return 3.0 * forward


def attention_flops_per_token(shape: ModelFlopsShape, sample_lengths: Iterable[int]) -> float:
    """Attention FLOPs averaged over the real tokens of a data set (they grow with sample length)."""
    total = tokens = 0.0
    for length in sample_lengths:
        total += attention_flops_per_sample(shape, int(length))
        tokens += int(length)
    return total / tokens if tokens else 0.0


def step_flops(shape: ModelFlopsShape, real_tokens: float, label_tokens: float, attn_per_token: float) -> float:
    """Model FLOPs for `real_tokens` inputs of which `label_tokens` are predicted."""
    return real_tokens * (linear_flops_per_token(shape) + attn_per_token) + label_tokens * head_flops_per_label(shape)
