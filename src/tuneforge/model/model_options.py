"""LLaMA-Factory's smaller model options, with its meaning: `moe_aux_loss_coef`, `upcast_layernorm`,
`upcast_lmhead_output`, `print_param_status` (`train_from_scratch` is a branch of model/loader.py)."""

from __future__ import annotations

import logging

from tuneforge.errors import NotSupportedError

logger = logging.getLogger(__name__)

# LF: a 1-D parameter whose name contains one of these is a normalisation weight
LAYERNORM_NAMES = ("norm", "ln")

# LF's configure_moe: the model types whose forward adds the router loss when `output_router_logits` is on, and
# the config attribute that weighs it
_ROUTER_LOGITS_TYPES = {"dbrx", "ernie4_5_moe", "granitemoe", "jamba", "jetmoe", "llama4", "mixtral", "olmoe",
                        "phimoe", "qwen2_moe", "qwen3_moe"}
_AUX_COEF_ATTRIBUTE = {**{t: "router_aux_loss_coef" for t in _ROUTER_LOGITS_TYPES - {"dbrx", "jetmoe"}},
                       "deepseek": "aux_loss_alpha", "jetmoe": "aux_loss_coef"}
_TEXT_CONFIG_TYPES = {"glm4v_moe_text", "qwen3_moe"}  # vision-language models with a MoE language model


def configure_moe(config, coefficient: float | None, *, is_trainable: bool) -> None:
    """`moe_aux_loss_coef`: train with the router's load-balancing loss at this weight (LF sets the same config
    attributes; the model's own loss then adds it, and tuneforge's chunked loss steps aside: model/lm_parts.py)."""
    if not is_trainable or not coefficient:
        return
    model_type = getattr(config, "model_type", None)
    text_config = getattr(config, "text_config", None)
    text_type = getattr(text_config, "model_type", None)
    if model_type in _ROUTER_LOGITS_TYPES:
        config.output_router_logits = True
    if text_type in _TEXT_CONFIG_TYPES:
        text_config.output_router_logits = True
    if model_type in _AUX_COEF_ATTRIBUTE:
        setattr(config, _AUX_COEF_ATTRIBUTE[model_type], coefficient)
    elif text_type == "qwen3_moe":
        text_config.router_aux_loss_coef = coefficient
    else:  # LF ignores the key here; accepted and doing nothing would hide a mistaken model or key
        raise NotSupportedError(f"moe_aux_loss_coef: {model_type} is not a mixture-of-experts model with a router "
                                "loss, so the key would do nothing; remove it")
    logger.info("MoE router auxiliary loss on, weight %s", coefficient)


def upcast_layernorms(model) -> int:
    """`upcast_layernorm`: normalisation weights in float32 (LF; for half-precision or quantized bases).
    Returns how many were cast."""
    import torch

    cast = 0
    for name, param in model.named_parameters():
        if param.ndim == 1 and any(part in name for part in LAYERNORM_NAMES) and param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)
            cast += 1
    logger.info("upcast_layernorm: %d normalisation weights in float32", cast)
    return cast


def upcast_lmhead_output(model) -> bool:
    """`upcast_lmhead_output`: a half-precision LM head's logits cast to float32 (LF's forward hook), for the
    model's own loss and for generation; tuneforge's chunked loss casts each chunk's logits so already."""
    import torch

    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.weight.dtype == torch.float32:
        logger.info("upcast_lmhead_output: the LM head already computes in float32")
        return False
    head.register_forward_hook(lambda module, args, output: output.to(torch.float32))
    logger.info("upcast_lmhead_output: LM-head outputs in float32")
    return True


def print_param_status(model) -> None:
    """`print_param_status`: every parameter's name, dtype, device and trainability, LF's line format."""
    for name, param in model.named_parameters():
        print(f"name: {name}, dtype: {param.dtype}, device: {param.device}, trainable: {param.requires_grad}")
