"""Gradient checkpointing decided from the memory estimate, not always on.

LLaMA-Factory turns activation checkpointing on unless `disable_gradient_checkpointing: true`.
It trades ~30% more compute for memory, which a small model on a big machine does not need.
tuneforge keeps the explicit choices and decides the default:

- `disable_gradient_checkpointing: true` -> off;
- `gradient_checkpointing: true` (transformers 5: `activation_checkpointing`) -> on;
- otherwise -> on only when `tuneforge estimate` puts the run's peak without checkpointing above
  what this device has free (worst case: every sample `cutoff_len` tokens long).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tuneforge.errors import TuneforgeError

logger = logging.getLogger("tuneforge")

# Leave room for what the estimate does not see (other processes, fragmentation).
USABLE_FRACTION = 0.9


@dataclass(frozen=True)
class CheckpointingChoice:
    enabled: bool
    reason: str


def free_device_memory(device: str) -> int:
    """Bytes this run can still use: free GPU memory, or available RAM."""
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available)


def decide_gradient_checkpointing(cfg, *, free_bytes: int | None = None, device: str | None = None) -> CheckpointingChoice:
    from tuneforge.estimate import GIB, estimate_memory, spec_from_config

    if cfg.model.disable_gradient_checkpointing:
        return CheckpointingChoice(False, "disable_gradient_checkpointing: true")
    if cfg.training.activation_checkpointing:  # transformers 5 name; `gradient_checkpointing` is its alias
        return CheckpointingChoice(True, "gradient_checkpointing: true")
    try:
        spec = spec_from_config(cfg, device=device)
    except TuneforgeError as err:  # a model whose shape the estimator cannot read
        return CheckpointingChoice(False, f"no memory estimate ({str(err).splitlines()[0]}); set "
                                          f"`gradient_checkpointing: true` if the run runs out of memory")
    needed = estimate_memory(spec).total
    free = free_device_memory(spec.device) if free_bytes is None else free_bytes
    budget = USABLE_FRACTION * free
    verdict = "above" if needed > budget else "within"
    reason = (f"estimated peak without it {needed / GIB:.2f} GiB is {verdict} {USABLE_FRACTION:.0%} of the "
              f"{free / GIB:.1f} GiB free ({spec.device})")
    return CheckpointingChoice(needed > budget, reason)


def training_args_with_checkpointing(cfg):
    """A copy of the run's training arguments with the decision applied (logged with its reason);
    the run config itself stays as validated."""
    import copy

    choice = decide_gradient_checkpointing(cfg)
    args = copy.copy(cfg.training)
    args.activation_checkpointing = args.gradient_checkpointing = choice.enabled
    if choice.enabled and not args.activation_checkpointing_kwargs:
        # LF's `use_reentrant_gc` (default true); with a frozen embedding (LoRA, freeze) the reentrant kind
        # needs input gradients, which transformers switches on whenever it enables checkpointing.
        args.activation_checkpointing_kwargs = args.gradient_checkpointing_kwargs = {
            "use_reentrant": bool(cfg.model.use_reentrant_gc)}
    logger.info("gradient checkpointing: %s (%s)", "on" if choice.enabled else "off", choice.reason)
    return args
