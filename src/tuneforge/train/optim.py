"""Optimizer parameter groups and learning-rate schedule from the training arguments.

The HF Trainer builds its own optimizer (`TuneforgeTrainer.create_optimizer` only swaps in the LoRA+
groups below); loops of our own (PPO) call `create_optimizer` / `create_scheduler`, which follow
LLaMA-Factory's `CustomPPOTrainer`: LoRA+ groups when `loraplus_lr_ratio` is set, else weight decay on
every trainable parameter except biases and norms; the optimizer class and its settings come from
`optim` / `optim_args` / `adam_*` exactly as the HF Trainer reads them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tuneforge.errors import ConfigError

# Trainer.get_decay_parameter_names: no weight decay on biases and norms
_NO_DECAY_NAME_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def decay_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that get weight decay (the HF Trainer's rule)."""
    from transformers.trainer_pt_utils import get_parameter_names

    return set(get_parameter_names(model, [nn.LayerNorm], _NO_DECAY_NAME_PATTERNS))


def loraplus_param_groups(
    model: nn.Module,
    *,
    decay_names: set[str],
    lr: float,
    weight_decay: float,
    ratio: float,
    embedding_lr: float,
) -> list[dict[str, Any]]:
    """LoRA+ (Hayou et al. 2024) parameter groups, as LLaMA-Factory's `_create_loraplus_optimizer`.

    LoRA embedding B matrices: `embedding_lr`; LoRA B matrices and 1-D parameters (biases, norms, DoRA
    magnitudes): lr * ratio, with weight decay only if in `decay_names`; everything else (LoRA A,
    modules_to_save, a value head's weight): lr. Empty groups are left out.
    """
    if ratio is None or ratio <= 0:
        raise ConfigError(f"loraplus_lr_ratio: expected a positive number, got {ratio}")
    groups: dict[str, list[nn.Parameter]] = {"lora_a": [], "lora_b": [], "lora_b_nodecay": [], "embedding": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_embedding_B" in name:
            groups["embedding"].append(param)
        elif "lora_B" in name or param.ndim == 1:
            groups["lora_b" if name in decay_names else "lora_b_nodecay"].append(param)
        else:
            groups["lora_a"].append(param)
    spec = [("lora_a", lr, weight_decay), ("lora_b", lr * ratio, weight_decay),
            ("lora_b_nodecay", lr * ratio, 0.0), ("embedding", embedding_lr, weight_decay)]
    return [{"params": groups[key], "lr": g_lr, "weight_decay": g_wd} for key, g_lr, g_wd in spec if groups[key]]


def create_optimizer(model: nn.Module, args, finetuning_args):
    """The optimizer of a loop without an HF Trainer (PPO): LoRA+ or decay / no-decay groups."""
    from transformers import Trainer

    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    decay = decay_parameter_names(model)
    if finetuning_args.loraplus_lr_ratio is not None:
        groups = loraplus_param_groups(model, decay_names=decay, lr=args.learning_rate, weight_decay=args.weight_decay,
                                       ratio=finetuning_args.loraplus_lr_ratio,
                                       embedding_lr=finetuning_args.loraplus_lr_embedding)
    else:
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for name, p in trainable if name in decay], "weight_decay": args.weight_decay},
                  {"params": [p for name, p in trainable if name not in decay], "weight_decay": 0.0}]
        groups = [group for group in groups if group["params"]]
    return optimizer_cls(groups, **optimizer_kwargs)


def create_scheduler(args, optimizer, num_training_steps: int):
    """`lr_scheduler_type` with its warmup (`warmup_steps` / `warmup_ratio`) over `num_training_steps`."""
    from transformers import get_scheduler

    return get_scheduler(args.lr_scheduler_type, optimizer=optimizer,
                         num_warmup_steps=args.get_warmup_steps(num_training_steps),
                         num_training_steps=num_training_steps,
                         scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})
