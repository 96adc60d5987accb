"""The pieces of a causal LM that tuneforge calls directly (the chunked loss, the value head, regional
compile): its decoder and LM head, found only for model types whose head is a plain projection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

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
DECODER_INPUT_KEYS = frozenset(
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
        extra = sorted(set(inputs) - DECODER_INPUT_KEYS - {"labels"})
        if extra:
            return None, f"batch has inputs the decoder alone does not take: {extra}"
    decoder = getattr(base, "base_model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not isinstance(decoder, nn.Module) or decoder is base or not isinstance(head, nn.Module):
        return None, f"could not find decoder and lm_head on {type(base).__name__}"
    softcap = getattr(config, "final_logit_softcapping", None)
    return LMParts(decoder=decoder, head=head, final_logit_softcapping=softcap), ""
