"""`float32_from_recall`: a bf16 / fp16 mixed-precision run that goes on in float32 once its recall check first
reaches a fraction -- in the same process, the same optimizer state, no checkpoint in between.

Mixed precision here is autocast around float32 trainable weights (accelerate's `native_amp`): turning autocast off
is all it takes to compute in float32 from the next step on. accelerate puts autocast in two places: around
`model.forward` (a wrapper made when the model was prepared) and in `accelerator.autocast()` (tuneforge's loss
paths, train/trainer.py). Both are switched off; an fp16 run keeps its gradient scaler (it scales float32
gradients as well, and unscales them before clipping). Why a run would: bench/RESULTS.md section 20b -- on the
fact recipe, a bf16 step takes ~60% of a float32 one on a CPU with AVX512-BF16, and the last half epoch in float32 is
what keeps single fields known in unseen phrasings.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger("tuneforge")


def computes_in_mixed_precision(trainer) -> bool:
    """Whether the trainer's steps run under bf16 / fp16 autocast now."""
    accelerator = trainer.accelerator
    handler = accelerator.autocast_handler
    return bool(accelerator.native_amp) and (handler is None or handler.enabled)


def continue_in_float32(trainer) -> bool:
    """Turn the trainer's autocast off for the rest of the run: every later forward and loss in float32. False when
    it computes in float32 already (nothing to do)."""
    from accelerate.utils import AutocastKwargs

    if not computes_in_mixed_precision(trainer):
        return False
    accelerator = trainer.accelerator
    accelerator.autocast_handler = AutocastKwargs(enabled=False)  # accelerator.autocast() -> disabled autocast
    # strips the autocast wrapper accelerate put around model.forward when the model was prepared (in place)
    model = accelerator.unwrap_model(trainer.model_wrapped, keep_fp32_wrapper=False)
    cast = _frozen_tensors_to_float32(model)
    if cast:
        logger.info("float32_from_recall: %.1f MB of frozen 16-bit weights and buffers cast to float32", cast / 1e6)
    return True


def _frozen_tensors_to_float32(model: torch.nn.Module) -> int:
    """A LoRA / freeze run loads its frozen weights in the 16-bit type; computing in float32 needs them in float32
    too (trainable weights are float32 already under autocast). Returns the bytes added."""
    added = 0
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for tensor in store.values():
                if tensor is not None and tensor.dtype in (torch.bfloat16, torch.float16):
                    added += tensor.numel() * 2
                    tensor.data = tensor.data.to(torch.float32)
    return added
