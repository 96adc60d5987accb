"""Consistency checks across keys, and the HF training keyword arguments.

Works on the flat, type-checked `{key: value}` dict before any dataclass is built, so each message
can name the file (or the command-line override) that set the key.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ..errors import ConfigError, NotSupportedError
from . import support
from .stages import STAGES
from .args import split_names


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def dataset_dir_candidates(dataset_dir: str, config_dir: str | Path | None) -> list[Path]:
    """Where a relative `dataset_dir` is looked for: the working directory, then the config file's folder."""
    if Path(dataset_dir).is_absolute():
        return [Path(dataset_dir)]
    return [Path.cwd() / dataset_dir] + ([Path(config_dir) / dataset_dir] if config_dir is not None else [])


class _View:
    """Read a key from the user's values, falling back to the field default; name where it came from."""

    def __init__(self, values: dict[str, Any], origins: dict[str, str], config_dir: Path | None = None):
        from .parser import field_default, key_catalogue

        self.values = values
        self.origins = origins
        self.config_dir = config_dir
        self.defaults = {key: field_default(entries[0][1]) for key, entries in key_catalogue().items()}
        file_origins = [o for o in origins.values() if o != "command-line override"]
        self.main = file_origins[0] if file_origins else next(iter(origins.values()), "<config>")

    def __getitem__(self, key: str) -> Any:
        return self.values.get(key, self.defaults.get(key))

    def given(self, key: str) -> bool:
        return key in self.values

    def where(self, *keys: str) -> str:
        for key in keys:
            if key in self.origins:
                return self.origins[key]
        return self.main


def check_consistency(
    values: dict[str, Any], origins: dict[str, str], *, require_output_dir: bool, config_dir: Path | None = None
) -> None:
    v = _View(values, origins, config_dir)
    _check_model(v)
    _check_method(v)
    _check_hardware(v)
    _check_data(v)
    _check_facts(v)
    stage = STAGES.get(v["stage"])
    if stage is not None and stage.check is not None:
        stage.check(v)  # the stage's own checks (config/stages.py)
    _check_predict(v)
    _check_training(v, require_output_dir=require_output_dir)


def _check_model(v: _View) -> None:
    if not v["model_name_or_path"]:
        raise ConfigError(
            f"{v.main}: `model_name_or_path` is required "
            "(a local folder, a hub id, a .gguf file or `builtin:smollm2`)"
        )


def _check_method(v: _View) -> None:
    stage = v["stage"]
    problem = support.stage_problem(stage)
    if problem is not None:
        error = ConfigError if stage not in support.STAGES else NotSupportedError
        raise error(f"{v.where('stage')}: {problem}")

    method = v["finetuning_type"]
    if method in support.UNSUPPORTED_FINETUNING_TYPES:
        raise NotSupportedError(
            f"{v.where('finetuning_type')}: `finetuning_type: {method}` is not supported yet by tuneforge "
            f"({support.UNSUPPORTED_FINETUNING_TYPES[method]}); use one of: {', '.join(support.FINETUNING_TYPES)}"
        )
    if method not in support.FINETUNING_TYPES:
        raise ConfigError(
            f"{v.where('finetuning_type')}: `finetuning_type` must be one of: "
            f"{', '.join(support.FINETUNING_TYPES)}; got {method!r}"
        )
    if method != "lora":
        for key in ("loraplus_lr_ratio", "use_rslora", "use_dora", "pissa_init", "adapter_name_or_path"):
            if v.given(key) and v[key] not in (None, False):
                raise ConfigError(
                    f"{v.where(key)}: `{key}` only applies to `finetuning_type: lora` (got `{method}`)"
                )
    if v["lora_rank"] < 1:
        raise ConfigError(f"{v.where('lora_rank')}: `lora_rank` must be at least 1, got {v['lora_rank']}")
    if v["lora_alpha"] is not None and v["lora_alpha"] <= 0:
        raise ConfigError(f"{v.where('lora_alpha')}: `lora_alpha` must be positive, got {v['lora_alpha']}")
    if not 0.0 <= v["lora_dropout"] < 1.0:
        raise ConfigError(f"{v.where('lora_dropout')}: `lora_dropout` must be in [0, 1), got {v['lora_dropout']}")


def _check_hardware(v: _View) -> None:
    for key in ("fp16", "fp16_full_eval"):
        if v[key] and not cuda_available():
            raise ConfigError(f"{v.where(key)}: fp16 training needs a CUDA GPU; use bf16: true or fp32 on CPU")
    if v["fp16"] and v["bf16"]:
        raise ConfigError(f"{v.where('fp16', 'bf16')}: `fp16` and `bf16` cannot both be true; pick one")

    bits = v["quantization_bit"]
    for key in ("quantization_bit", "ref_model_quantization_bit", "reward_model_quantization_bit"):
        if v[key] not in (None, 4, 8):
            raise ConfigError(f"{v.where(key)}: `{key}` must be 4 or 8, got {v[key]}")
    if bits is None:
        return
    where = v.where("quantization_bit")
    if v["finetuning_type"] != "lora":
        raise ConfigError(f"{where}: `quantization_bit` (QLoRA) only works with `finetuning_type: lora`")
    if not cuda_available():
        raise NotSupportedError(
            f"{where}: `quantization_bit: {bits}` (QLoRA) is not supported on this machine: it needs a CUDA GPU "
            "and bitsandbytes (`pip install tuneforge[qlora]`); on CPU remove `quantization_bit`"
        )
    if not bitsandbytes_available():
        raise NotSupportedError(
            f"{where}: `quantization_bit: {bits}` (QLoRA) needs bitsandbytes, which is not installed: "
            "pip install tuneforge[qlora]"
        )


def _check_data(v: _View) -> None:
    if v["cutoff_len"] < 1:
        raise ConfigError(f"{v.where('cutoff_len')}: `cutoff_len` must be at least 1, got {v['cutoff_len']}")
    if v["mask_history"] and v["train_on_prompt"]:
        raise ConfigError(
            f"{v.where('mask_history', 'train_on_prompt')}: `mask_history` and `train_on_prompt` "
            "cannot both be true"
        )
    datasets, eval_datasets = split_names(v["dataset"]), split_names(v["eval_dataset"])
    val_size = v["val_size"]
    if val_size < 0:
        raise ConfigError(f"{v.where('val_size')}: `val_size` must be >= 0, got {val_size}")
    if val_size > 1e-6 and not datasets:
        raise ConfigError(f"{v.where('val_size')}: `val_size` needs `dataset` to split from")
    if val_size > 1e-6 and eval_datasets:
        raise ConfigError(
            f"{v.where('val_size', 'eval_dataset')}: set either `val_size` or `eval_dataset`, not both"
        )
    probs = v["interleave_probs"]
    if probs is not None:
        where = v.where("interleave_probs")
        if v["mix_strategy"] == "concat":
            raise ConfigError(f"{where}: `interleave_probs` needs `mix_strategy: interleave_under` or `interleave_over`")
        try:
            numbers = [float(p) for p in (probs.split(",") if isinstance(probs, str) else probs)]
        except ValueError:
            raise ConfigError(f"{where}: `interleave_probs` must be numbers, got {probs!r}") from None
        for names, key in ((datasets, "dataset"), (eval_datasets, "eval_dataset")):
            if names and len(names) != len(numbers):
                raise ConfigError(
                    f"{where}: `interleave_probs` has {len(numbers)} values but `{key}` names {len(names)} datasets"
                )
    if v["neat_packing"] and v["packing"] is False:
        raise ConfigError(f"{v.where('neat_packing')}: `neat_packing: true` needs packing; remove `packing: false`")
    if v["neat_packing"] and v["stage"] not in ("sft", "pt"):  # LF refuses it too (pt: config/stages.py)
        raise ConfigError(f"{v.where('neat_packing')}: `neat_packing` packs sft samples; stage is `{v['stage']}`")
    workers = v["preprocessing_num_workers"]
    if workers is not None and workers < 0:
        raise ConfigError(f"{v.where('preprocessing_num_workers')}: `preprocessing_num_workers` must be >= 0 "
                          f"(0 or 1: encode in this process), got {workers}")
    if v["preprocessing_batch_size"] < 1:
        raise ConfigError(f"{v.where('preprocessing_batch_size')}: `preprocessing_batch_size` must be at least 1, "
                          f"got {v['preprocessing_batch_size']}")
    if v["max_samples"] is not None and v["max_samples"] < 1:
        raise ConfigError(
            f"{v.where('max_samples')}: `max_samples` must be at least 1 (leave it unset to use every row), "
            f"got {v['max_samples']}"
        )
    _check_dataset_dir(v)


def _check_predict(v: _View) -> None:
    """What prediction needs (LF's `*_predict.yaml` shape)."""
    if not v["do_predict"]:
        return
    if v["do_train"]:
        raise NotSupportedError(f"{v.where('do_predict')}: `do_predict` in a training run is not supported yet: train "
                                "first, then predict with a config of its own (do_predict: true, predict_with_generate: "
                                "true, eval_dataset: ..., adapter_name_or_path: <the trained output_dir>)")
    if not v["predict_with_generate"]:
        raise NotSupportedError(f"{v.where('do_predict')}: `do_predict` without `predict_with_generate` (loss-only "
                                "prediction) is not supported yet; set `predict_with_generate: true` to generate answers "
                                "and score them, or use `do_eval` for the loss")
    if not v["eval_dataset"]:
        raise ConfigError(f"{v.where('do_predict')}: `do_predict` reads the rows to answer from `eval_dataset` (as "
                          "LLaMA-Factory does): set `eval_dataset: <names from dataset_info.json>`")


def _check_facts(v: _View) -> None:
    """tuneforge's fact-data keys (config/facts_args.py)."""
    if v["augment_facts"]:
        if v["stage"] != "sft":
            raise ConfigError(f"{v.where('augment_facts')}: `augment_facts` adds questions for sft data; "
                              f"stage is `{v['stage']}`")
        if v["val_size"] > 1e-6:
            raise ConfigError(f"{v.where('augment_facts', 'val_size')}: `augment_facts` with `val_size` would put "
                              "paraphrases of training rows into the validation split; use `eval_dataset` instead")
    target = v["recall_target"]
    if target is not None:
        if not 0 < target <= 1:
            raise ConfigError(f"{v.where('recall_target')}: `recall_target` is a fraction in (0, 1], got {target}")
        if v["stage"] != "sft" or not v["do_train"]:
            raise ConfigError(f"{v.where('recall_target')}: `recall_target` stops an sft training run; "
                              f"this config has stage `{v['stage']}`, do_train {v['do_train']}")
        if v["recall_check_epochs"] <= 0 or v["recall_check_samples"] < 1:
            raise ConfigError(f"{v.where('recall_check_epochs', 'recall_check_samples')}: `recall_check_epochs` must "
                              "be positive and `recall_check_samples` at least 1")


def _check_dataset_dir(v: _View) -> None:
    """A `dataset_dir` naming a file (often dataset_info.json itself) where a folder is expected."""
    dataset_dir = v["dataset_dir"]
    if not dataset_dir or dataset_dir == "ONLINE" or dataset_dir.startswith("REMOTE:"):
        return
    candidates = dataset_dir_candidates(dataset_dir, v.config_dir)
    files = [path for path in candidates if path.is_file()]
    if files and not any(path.is_dir() for path in candidates):
        raise ConfigError(
            f"{v.where('dataset_dir')}: `dataset_dir` must be a folder (the one that holds dataset_info.json), "
            f"got the file '{dataset_dir}'; set `dataset_dir: {Path(dataset_dir).parent.as_posix()}`"
        )


def _check_optimisation(v: _View) -> None:
    """Values that can only be mistakes: no step would change the weights, or no batch could be built."""
    learning_rate = v["learning_rate"]
    if learning_rate < 0:
        raise ConfigError(f"{v.where('learning_rate')}: `learning_rate` must be positive, got {learning_rate}")
    if learning_rate == 0 and v["do_train"]:
        raise ConfigError(
            f"{v.where('learning_rate')}: `learning_rate: 0` with `do_train: true`: nothing will change, the "
            "weights stay as they are; set a positive value such as 1.0e-4"
        )
    if v["per_device_train_batch_size"] < 1:
        raise ConfigError(
            f"{v.where('per_device_train_batch_size')}: `per_device_train_batch_size` must be at least 1, "
            f"got {v['per_device_train_batch_size']}"
        )
    if v["max_steps"] == 0 and v["do_train"]:
        raise ConfigError(
            f"{v.where('max_steps')}: `max_steps: 0` with `do_train: true` is ambiguous (no step at all, or no "
            "limit?); set a positive number of steps, or remove `max_steps` (default -1) to train for "
            "`num_train_epochs`"
        )


def _check_training(v: _View, *, require_output_dir: bool) -> None:
    _check_optimisation(v)
    if v["predict_with_generate"]:
        if v["do_train"]:
            raise ConfigError(f"{v.where('predict_with_generate')}: `predict_with_generate` cannot be true while training")
        if v["stage"] != "sft":
            raise ConfigError(f"{v.where('predict_with_generate')}: `predict_with_generate` needs `stage: sft`")
    if not v["do_train"]:
        return
    if not split_names(v["dataset"]):
        raise ConfigError(
            f"{v.where('do_train')}: `dataset` is required when `do_train` is true "
            "(dataset names from dataset_info.json, comma-separated)"
        )
    if require_output_dir and not v["output_dir"]:
        raise ConfigError(f"{v.where('do_train')}: `output_dir` is required when `do_train` is true")
    if v["disable_shuffling"] and v["train_sampling_strategy"] not in ("random", "sequential"):
        raise ConfigError(
            f"{v.where('disable_shuffling')}: `disable_shuffling: true` conflicts with "
            f"`train_sampling_strategy: {v['train_sampling_strategy']}`"
        )


def training_kwargs(section: dict[str, Any], disable_shuffling: bool, finetuning_type: str) -> dict[str, Any]:
    """Keyword arguments for `TrainingArguments`, with tuneforge's defaults where the user gave none."""
    kwargs = dict(section)
    if finetuning_type == "lora":
        # as LF: every LoRA parameter gets a gradient, so DDP need not search the graph for unused ones
        kwargs.setdefault("ddp_find_unused_parameters", False)
    kwargs.setdefault("report_to", "none")  # LF users expect no tracker unless they ask for one
    if "use_cpu" not in kwargs and not cuda_available() and not mps_available():
        # HF refuses bf16 without a GPU unless use_cpu is set; on a CPU-only machine that is what runs anyway.
        kwargs["use_cpu"] = True
    if disable_shuffling:
        kwargs["train_sampling_strategy"] = "sequential"
    return kwargs
