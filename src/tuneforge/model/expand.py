"""LLaMA Pro block expansion (`tuneforge expand-layers`, LLaMA-Factory's `scripts/llama_pro.py`).

A model of L decoder layers becomes one of L + n: after every L / n layers, a copy of the layer just before
is inserted whose output projections (`o_proj`, `down_proj`, weights and biases) are zero. Each new block
then adds nothing to the residual stream, so the expanded model computes exactly what the original did
(tested); training with `finetuning_type: freeze` (or lora), `freeze_trainable_layers: n` and
`use_llama_pro: true` updates only the new blocks and keeps the original layers as they were.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from tuneforge.errors import ConfigError

logger = logging.getLogger(__name__)

ZEROED_PROJECTIONS = ("o_proj", "down_proj")  # the new block's outputs into the residual stream (LF's rule)


def expanded_layer_sources(num_layers: int, num_expand: int) -> list[tuple[int, bool]]:
    """For each layer of the expanded model: (the original layer it is copied from, whether it is a new block)."""
    if num_expand <= 0 or num_layers % num_expand:
        raise ConfigError(f"expand-layers: --num_expand must divide the model's {num_layers} layers, got {num_expand}")
    group = num_layers // num_expand
    order = []
    for layer in range(num_layers):
        order.append((layer, False))
        if (layer + 1) % group == 0:
            order.append((layer, True))
    return order


def expand_state_dict(state_dict: dict, layer_prefix: str, num_layers: int, num_expand: int) -> dict:
    """The expanded model's weights: original layers renumbered, new blocks as copies with zeroed projections."""
    pattern = re.compile(rf"^{re.escape(layer_prefix)}\.(\d+)\.(.+)$")
    by_layer: dict[int, list[tuple[str, object]]] = {}
    out = {}
    for key, value in state_dict.items():
        match = pattern.match(key)
        if match:
            by_layer.setdefault(int(match.group(1)), []).append((match.group(2), value))
        else:
            out[key] = value
    for new_index, (source, is_new) in enumerate(expanded_layer_sources(num_layers, num_expand)):
        params = by_layer.get(source, [])
        if is_new and not any(any(p in name for p in ZEROED_PROJECTIONS) for name, _ in params):
            raise ConfigError(f"expand-layers: layer {source} has no {' or '.join(ZEROED_PROJECTIONS)} weights "
                              f"(it has {', '.join(sorted({n.split('.')[0] for n, _ in params}))}); block expansion "
                              f"needs a LLaMA-style decoder (Llama, Mistral, Qwen2/3, Yi, ...)")
        for name, value in params:
            zero = is_new and any(p in name for p in ZEROED_PROJECTIONS)
            out[f"{layer_prefix}.{new_index}.{name}"] = value.new_zeros(value.shape) if zero else value.clone()
    return out


def _decoder_layer_prefix(model, num_layers: int) -> str:
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers and name:
            return name
    raise ConfigError(f"expand-layers: found no list of {num_layers} decoder layers in {type(model).__name__}")


def expand_layers(model_name_or_path: str, output_dir: str | Path, num_expand: int) -> Path:
    """Write the expanded model (config, weights, tokenizer) to `output_dir`; returns it."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuneforge.config.args import ModelArguments
    from tuneforge.model.loader import load_base_model, resolve_model_source
    from tuneforge.model.tokenizer_loading import load_tokenizer
    from tuneforge.model.saved_config import saved_dtype

    output = Path(output_dir)
    if output.exists() and any(output.iterdir()):
        raise ConfigError(f"expand-layers: {output} is not empty; give a new folder for the expanded model")
    model_args = ModelArguments(model_name_or_path=model_name_or_path)
    saved = saved_dtype(resolve_model_source(model_args))
    if saved in ("bfloat16", "float16", "float32"):  # written in the dtype it was saved in (bf16 stays bf16)
        model_args = ModelArguments(model_name_or_path=model_name_or_path, infer_dtype=saved)
    tokenizer = load_tokenizer(model_args)
    model = load_base_model(model_args, is_trainable=False)
    config = model.config
    num_layers = int(config.num_hidden_layers)
    sources = expanded_layer_sources(num_layers, num_expand)
    prefix = _decoder_layer_prefix(model, num_layers)
    state = expand_state_dict(model.state_dict(), prefix, num_layers, num_expand)

    config.num_hidden_layers = num_layers + num_expand
    if isinstance(getattr(config, "layer_types", None), list) and len(config.layer_types) == num_layers:
        config.layer_types = [config.layer_types[source] for source, _ in sources]
    with torch.device("meta"):
        expanded = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    expanded.load_state_dict(state, strict=False, assign=True)
    expanded.tie_weights()
    missing = [name for name, p in expanded.named_parameters() if p.is_meta]
    if missing:
        raise ConfigError(f"expand-layers: no weights for {', '.join(missing[:5])} in the expanded model")
    output.mkdir(parents=True, exist_ok=True)
    expanded.save_pretrained(output)
    tokenizer.save_pretrained(output)
    logger.info("expanded %d layers to %d (new blocks at %s) in %s", num_layers, num_layers + num_expand,
                ", ".join(str(i) for i, (_, new) in enumerate(sources) if new), output)
    return output
