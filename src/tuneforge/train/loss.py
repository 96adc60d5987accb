"""Causal-LM loss computed only at label positions, LM head + cross-entropy in chunks.

The usual `model(input_ids, labels=labels)` materialises logits for every position of the batch
([tokens x vocab], in fp32 for the loss) -- for a 150k vocabulary that is often the largest tensor
of the whole step. Here the decoder runs once, the hidden states at positions whose (shifted) label
is not -100 are gathered, and `logits = head(h)` + cross-entropy run `chunk_size` rows at a time
under activation checkpointing, so only one chunk's logits exist at a time, forward and backward.

The math is HF's `ForCausalLMLoss`: fp32 cross-entropy, summed, divided by `num_items_in_batch`
when the Trainer passes it (correct normalisation across gradient accumulation), else by the
number of label tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
DEFAULT_CHUNK_SIZE = 1024

# Model types whose `...ForCausalLM.forward` computes `logits = lm_head(hidden)` and nothing else
# (gemma2 / gemma3_text add a final soft-capping, handled below). Everything else -- logit scaling
# (granite, cohere), multimodal inputs, remote code -- uses the model's own forward.
_PLAIN_HEAD_MODEL_TYPES = frozenset(
    {
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi", "phi3",
        "gemma", "gemma2", "gemma3_text", "smollm3", "olmo", "olmo2", "starcoder2", "glm", "glm4",
        "deepseek_v3",
    }
)  # fmt: skip

# Batch keys the decoder understands; anything else (pixel_values, ...) -> plain forward.
_DECODER_INPUT_KEYS = frozenset(
    {"input_ids", "attention_mask", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"}
)


@dataclass(frozen=True)
class LMParts:
    """The pieces of a causal LM that the chunked loss calls directly."""

    decoder: nn.Module  # returns last_hidden_state (final norm applied)
    head: nn.Module  # hidden -> vocab logits (may be a LoRA-wrapped Linear)
    final_logit_softcapping: float | None


def unwrap_peft(model: nn.Module) -> nn.Module:
    """PeftModel -> the transformers model inside it (LoRA layers are injected in place)."""
    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model) and hasattr(model, "peft_config"):
        return get_base_model()
    return model


def resolve_lm_parts(model: nn.Module, inputs: dict[str, Any] | None = None) -> tuple[LMParts | None, str]:
    """Find decoder and LM head of a causal LM; `(None, reason)` when the chunked path does not apply."""
    base = unwrap_peft(model)
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _PLAIN_HEAD_MODEL_TYPES:
        return None, f"model type {model_type!r} ({type(base).__name__}) is not on the chunked-loss list"
    if getattr(config, "output_router_logits", False):
        return None, "output_router_logits adds a router auxiliary loss the chunked path does not compute"
    if inputs is not None:
        extra = sorted(set(inputs) - _DECODER_INPUT_KEYS - {"labels"})
        if extra:
            return None, f"batch has inputs the decoder alone does not take: {extra}"
    decoder = getattr(base, "base_model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not isinstance(decoder, nn.Module) or decoder is base or not isinstance(head, nn.Module):
        return None, f"could not find decoder and lm_head on {type(base).__name__}"
    softcap = getattr(config, "final_logit_softcapping", None)
    return LMParts(decoder=decoder, head=head, final_logit_softcapping=softcap), ""


def _chunk_cross_entropy_sum(
    hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, softcap: float | None
) -> torch.Tensor:
    logits = head(hidden)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def chunked_cross_entropy_sum(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Module,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    final_logit_softcapping: float | None = None,
) -> torch.Tensor:
    """Sum of CE(head(hidden[i]), targets[i]) over rows, `chunk_size` rows of logits at a time.

    `hidden` is [N, H] (only rows that have a target), `targets` is [N].
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0  # keeps the graph connected so backward() still works
    # One chunk: recomputing its logits in backward would save nothing (backward needs them all
    # at once anyway) and cost a second head GEMM.
    use_checkpoint = torch.is_grad_enabled() and hidden.requires_grad and hidden.shape[0] > chunk_size
    total = None
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if use_checkpoint:
            # Recompute this chunk's logits in backward instead of keeping them.
            part = checkpoint(_chunk_cross_entropy_sum, h, t, head, final_logit_softcapping, use_reentrant=False)
        else:
            part = _chunk_cross_entropy_sum(h, t, head, final_logit_softcapping)
        total = part if total is None else total + part
    return total


def shifted_label_count(labels: torch.Tensor) -> int:
    """Number of tokens that are predicted: labels after the causal shift that are not -100."""
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


def chunked_causal_lm_loss(
    parts: LMParts,
    inputs: dict[str, Any],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Mean next-token loss over label tokens (or sum / num_items_in_batch), like HF's default."""
    labels = inputs["labels"]
    decoder_inputs = {k: v for k, v in inputs.items() if k in _DECODER_INPUT_KEYS}
    # use_cache=False: with a cache, transformers does not detect packed sequences (see collate.py).
    outputs = parts.decoder(**decoder_inputs, use_cache=False)
    hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]

    shift_hidden = hidden[:, :-1, :]
    shift_labels = labels[:, 1:].to(hidden.device)
    keep = shift_labels != IGNORE_INDEX
    loss_sum = chunked_cross_entropy_sum(
        shift_hidden[keep],
        shift_labels[keep],
        parts.head,
        chunk_size=chunk_size,
        final_logit_softcapping=parts.final_logit_softcapping,
    )
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(loss_sum.device)
        return loss_sum / num_items_in_batch
    return loss_sum / keep.sum().clamp(min=1)
