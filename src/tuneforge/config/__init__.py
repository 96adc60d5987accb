"""Typed, validated, immutable run configuration (LLaMA-Factory key names and defaults).

    from tuneforge.config import load_config
    cfg = load_config("examples/demo_lora_sft.yaml", ["learning_rate=2e-4"])
    cfg.finetuning.lora_rank, cfg.data.dataset, cfg.training.output_dir
"""

from .args import (
    DataArguments,
    FinetuningArguments,
    GeneratingArguments,
    ModelArguments,
    effective_lora_alpha,
    split_names,
)
from .help import format_key_help
from .catalogue import all_known_keys
from .parser import RunConfig, load_config, load_config_dict, parse_overrides, read_config_file



def __getattr__(name: str):
    if name == "TrainingArguments":  # imports transformers: only when asked for (config/training_fields.py)
        from .training_args import TrainingArguments

        return TrainingArguments
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DataArguments",
    "FinetuningArguments",
    "GeneratingArguments",
    "ModelArguments",
    "RunConfig",
    "TrainingArguments",
    "all_known_keys",
    "effective_lora_alpha",
    "format_key_help",
    "load_config",
    "load_config_dict",
    "parse_overrides",
    "read_config_file",
    "split_names",
]
