"""QLoRA's base model: bitsandbytes 4 / 8-bit weights on a CUDA GPU or, with bitsandbytes >= 0.49, on a CPU.

What the config layer checks (bitsandbytes installed, its CPU backend when there is no GPU, LoRA/OFT only,
one adapter) is in config/validate.py; this module builds the `from_pretrained` arguments and makes the
loaded model safe to train.
"""

from __future__ import annotations

import logging
import os

from tuneforge.config.args import ModelArguments
from tuneforge.errors import NotSupportedError

logger = logging.getLogger(__name__)


def is_quantized(model) -> bool:
    """A model whose weights are not plain tensors: bitsandbytes, or a pre-quantized GPTQ / AWQ checkpoint."""
    return bool(getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False)
                or getattr(model, "quantization_method", None))


def quantization_kwargs(model_args: ModelArguments, dtype) -> dict:
    """`quantization_config` and `device_map` for `quantization_bit` 4 or 8 ({} without it)."""
    bits = model_args.quantization_bit
    if bits is None:
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    if bits == 8:
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_type=model_args.quantization_type,
            bnb_4bit_use_double_quant=bool(model_args.double_quantization),
            bnb_4bit_quant_storage=_storage_dtype(dtype),
        )
    if _sharded_loading():  # LF: ZeRO-3 / FSDP place the weights themselves, and only 4-bit weights shard
        if bits != 4:
            raise NotSupportedError("quantization_bit: 8-bit weights cannot be sharded by DeepSpeed ZeRO-3 or FSDP "
                                    "(LLaMA-Factory: only 4-bit); use `quantization_bit: 4`, or ZeRO-2")
        return {"quantization_config": config}
    if model_args.quantization_device_map == "auto":  # LF: spread over the visible devices (inference only),
        return {"quantization_config": config, "device_map": "auto",  # what does not fit goes to offload_folder
                "offload_folder": model_args.offload_folder}
    if torch.cuda.is_available():  # each process of a multi-process run on its own GPU, not all on GPU 0
        device_map = {"": int(os.environ.get("LOCAL_RANK", "0") or 0)}
    else:
        device_map = {"": "cpu"}
    return {"quantization_config": config, "device_map": device_map}


def _sharded_loading() -> bool:
    """DeepSpeed ZeRO-3, or accelerate's FSDP loading the weights on one process (transformers' own tests)."""
    from transformers.integrations import is_deepspeed_zero3_enabled
    from transformers.modeling_utils import is_fsdp_enabled

    return is_deepspeed_zero3_enabled() or is_fsdp_enabled()


def _storage_dtype(dtype):
    """The tensor type that holds the packed 4-bit weights: the compute dtype, or the one an accelerate launch's
    `mixed_precision` makes FSDP cast every parameter to (FSDP-QLoRA: a cast of packed weights held in another
    type would reinterpret their bytes)."""
    import torch

    mixed = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(os.environ.get("ACCELERATE_MIXED_PRECISION", ""))
    return mixed or dtype


def prepare_quantized(model, bits: int, *, is_trainable: bool):
    """After loading: keep bitsandbytes' 4-bit weights in their portable layout (below); for training, peft's
    k-bit preparation (frozen base, float32 norms and embeddings, input gradients)."""
    _keep_4bit_weights_unpacked(model)
    if is_trainable:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    logger.info("QLoRA: base weights quantized to %s bits", bits)
    return model


def _keep_4bit_weights_unpacked(model) -> None:
    """bitsandbytes (0.49-0.50), on a CPU with AVX512-BF16, repacks a 4-bit weight for a bfloat16 inference
    kernel the first time the layer runs in eval mode without gradients. That kernel has no backward: after a
    run's first evaluation, later training steps would get no gradient through the base layers (the LoRA
    weights below them stop learning, silently). It also fails on layers narrower than its blocks and computes
    in bfloat16, so answers would differ from other CPUs'. Every layer keeps the dequantize-then-matmul path."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
