"""RoPE scaling as LLaMA-Factory applies it (its model_utils/rope.py), on transformers 5's `rope_parameters`."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def configure_rope(config, rope_scaling: str | None, model_max_length: int | None) -> None:
    """LF's `configure_rope`, on transformers 5's `rope_parameters`: the rotary embedding becomes `rope_scaling`
    (linear, dynamic, yarn or llama3) with factor ceil(model_max_length / original length) when the run's
    `model_max_length` (its cutoff_len in `tuneforge train`) exceeds the length the model was trained for (its
    rope `original_max_position_embeddings`, else `max_position_embeddings`), and no scaling when it does not;
    factor 2 at inference (model_max_length None). `max_position_embeddings` grows by the factor (so, as in LF,
    dynamic NTK only rescales beyond the enlarged length); the rope theta is kept. Config changed in place."""
    import math

    if rope_scaling is None:
        return
    params = getattr(config, "rope_parameters", None)
    if not params:
        logger.warning("rope_scaling: %s has no RoPE parameters; RoPE scaling is not applied",
                       type(config).__name__)
        return
    nested = config.nested_rope_parameter_keys(params) if hasattr(config, "nested_rope_parameter_keys") else []
    entries = [params[key] for key in nested if params[key] is not None] if nested else [params]
    originals = [e["original_max_position_embeddings"] for e in entries if "original_max_position_embeddings" in e]
    old_length = originals[0] if originals else getattr(config, "max_position_embeddings", None)
    if old_length is None:
        logger.warning("rope_scaling: the model config has no max_position_embeddings; RoPE scaling is not applied")
        return
    if model_max_length is not None:  # training
        if model_max_length <= old_length:
            logger.warning("rope_scaling: cutoff_len %d is not longer than the model's %d positions; RoPE scaling "
                           "is not applied", model_max_length, old_length)
            return
        if rope_scaling == "dynamic":
            logger.warning("rope_scaling: dynamic NTK scaling may not work well with fine-tuning "
                           "(https://github.com/huggingface/transformers/pull/24653)")
        factor = float(math.ceil(model_max_length / old_length))
    else:  # inference
        factor = 2.0
    scaling: dict[str, Any] = {"rope_type": rope_scaling, "factor": factor}
    if rope_scaling in ("yarn", "llama3"):  # LF sets it for dynamic too, which transformers 5 does not read
        scaling["original_max_position_embeddings"] = old_length
    if rope_scaling == "llama3":
        scaling.update(low_freq_factor=1.0, high_freq_factor=4.0)
    for entry in entries:
        kept = {k: v for k, v in entry.items() if k in ("rope_theta", "partial_rotary_factor", "mrope_section")}
        entry.clear()
        entry.update(kept, **scaling)
    config.max_position_embeddings = int(old_length * factor)
    if hasattr(config, "validate_rope"):
        config.validate_rope()
    logger.info("rope_scaling: %s, factor %g: max positions %d -> %d", rope_scaling, factor, old_length,
                config.max_position_embeddings)
