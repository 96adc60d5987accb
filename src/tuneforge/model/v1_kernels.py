"""`use_v1_kernels` (LLaMA-Factory 0.9.5): apply the kernel plugins LF's v1 engine registers for this device.

LF registers a kernel only on its device: CUDA has one, `cuda_fused_moe` (a triton grouped GEMM for the expert
layers of Mixtral, Qwen3-MoE and Qwen3.5-MoE; other models are left as they are); Ascend NPUs have fused MoE,
SwiGLU, RMSNorm and RoPE kernels; a CPU has none. So on a CPU, and for a dense model on CUDA, LF applies nothing
and neither does tuneforge (said in the log); the one case where LF would change the model -- an MoE model of
those families on CUDA -- is refused, because tuneforge has no such kernel.
"""

from __future__ import annotations

import logging

from tuneforge.errors import ConfigError, NotSupportedError

logger = logging.getLogger(__name__)

CUDA_FUSED_MOE_MODELS = ("MixtralForCausalLM", "Qwen3MoeForCausalLM", "Qwen3_5MoeForCausalLM",
                         "Qwen3_5MoeForConditionalGeneration")


def registered_kernels(device_type: str) -> tuple[str, ...]:
    """The kernel ids LF v1 registers on a device of this type (its registry skips the others)."""
    return {"cuda": ("cuda_fused_moe",), "npu": ("npu_fused_moe", "npu_fused_swiglu", "npu_fused_rmsnorm",
                                                 "npu_fused_rope")}.get(device_type, ())


def apply_v1_kernels(model, use_v1_kernels, device_type: str) -> None:
    """LF's `apply_default_kernels(model, include_kernels=use_v1_kernels)` for this device."""
    if not use_v1_kernels:
        return
    available = registered_kernels(device_type)
    if use_v1_kernels is True or use_v1_kernels == "auto":
        wanted = available
    else:
        wanted = tuple(k.strip() for k in str(use_v1_kernels).split(",") if k.strip())
        missing = [k for k in wanted if k not in available]
        if missing:  # LF: "Kernel {id} not found"
            raise ConfigError(f"use_v1_kernels: kernel {missing[0]} is not registered on a {device_type} device "
                              f"(LF v1 registers {', '.join(available) or 'none'} there)")
    architectures = {type(model).__name__, *(getattr(model.config, "architectures", None) or ())}
    if "cuda_fused_moe" in wanted and architectures & set(CUDA_FUSED_MOE_MODELS):
        raise NotSupportedError("use_v1_kernels: LF v1's fused MoE kernel (cuda_fused_moe, triton) for "
                                f"{type(model).__name__} is not supported yet by tuneforge; remove use_v1_kernels")
    logger.info("use_v1_kernels: LF v1 has %s for a %s device and %s; nothing to apply, as in LLaMA-Factory",
                ", ".join(wanted) or "no kernels", device_type, type(model).__name__)
