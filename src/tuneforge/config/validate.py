"""Consistency checks across keys, and the HF training keyword arguments.

Works on the flat, type-checked `{key: value}` dict before any dataclass is built, so each message
can name the file (or the command-line override) that set the key.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError, NotSupportedError
from . import support
from .stages import STAGES, check_stage_keys
from .args import ADAPTER_METHODS, split_names
from .batching_args import check_batching
from .validate_data import check_data, check_evaluation, check_facts, check_predict
from .validate_optimizers import check_optimizers
from .validate_parallel import check_ray, check_sharding


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def runs_on_cpu() -> bool:
    """No CUDA or MPS device: HF's `use_cpu` (imports torch)."""
    return not cuda_available() and not mps_available()


def bitsandbytes_version() -> tuple[int, int] | None:
    """(major, minor) of the installed bitsandbytes, None without it (read from its metadata: no import)."""
    try:
        text = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        return None
    major, minor = (re.findall(r"\d+", text) + ["0", "0"])[:2]
    return int(major), int(minor)


# bitsandbytes quantizes, dequantizes and backpropagates 4 / 8-bit weights on a CPU from this version on
BITSANDBYTES_CPU = (0, 49)


def deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


class _View:
    """Read a key from the user's values, falling back to the field default; name where it came from."""

    def __init__(self, values: dict[str, Any], origins: dict[str, str], config_dir: Path | None = None):
        from .catalogue import field_default, key_catalogue

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
    check_sharding(v, deepspeed_available, cuda_available)  # validate_parallel.py; the probes as tests patch them
    check_ray(v, os.environ, ray_available, cuda_available)
    check_optimizers(v, optimizer_package_available)  # validate_optimizers.py
    check_data(v)  # validate_data.py
    check_batching(v)  # batching_args.py
    check_facts(v)
    check_evaluation(v)
    check_stage_keys(v)
    stage = STAGES.get(v["stage"])
    if stage is not None and stage.check is not None:
        stage.check(v)  # the stage's own checks (config/stages.py)
    check_predict(v)
    _check_training(v, require_output_dir=require_output_dir)
    if v["do_train"]:
        _check_reporting(v)


def _check_reporting(v: _View) -> None:
    """The trackers a training run reports to have their packages (train/reporting.py)."""
    report_to = v["report_to"]
    trackers = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "tensorboard" in trackers and not any(importlib.util.find_spec(p) for p in ("tensorboard", "tensorboardX")):
        raise NotSupportedError(f"{v.where('report_to')}: `report_to: tensorboard` needs the tensorboard package, "
                                "which is not installed: pip install 'tuneforge[tensorboard]'")
    if not v["use_swanlab"]:
        return
    if importlib.util.find_spec("swanlab") is None:
        raise NotSupportedError(f"{v.where('use_swanlab')}: `use_swanlab: true` needs the swanlab package, which is "
                                "not installed: pip install 'tuneforge[swanlab]'")
    if v["swanlab_mode"] == "local" and importlib.util.find_spec("swanboard") is None:
        raise NotSupportedError(f"{v.where('swanlab_mode', 'use_swanlab')}: `swanlab_mode: local` needs SwanLab's "
                                "dashboard: pip install 'swanlab[dashboard]' (or `swanlab_mode: offline`: log files "
                                "only, `swanlab sync` uploads them later)")


def _check_model(v: _View) -> None:
    if not v["model_name_or_path"]:
        raise ConfigError(
            f"{v.main}: `model_name_or_path` is required "
            "(a local folder, a hub id, a .gguf file or `builtin:smollm2`)"
        )
    for kind in ("image", "video"):  # LF's ProcessorArguments check
        low, high = v[f"{kind}_min_pixels"], v[f"{kind}_max_pixels"]
        if high < low:
            raise ConfigError(f"{v.where(f'{kind}_max_pixels', f'{kind}_min_pixels')}: `{kind}_max_pixels` "
                              f"({high}) must be at least `{kind}_min_pixels` ({low})")
    if v["mixture_of_depths"] == "load" and (v["train_from_scratch"] or
                                             str(v["model_name_or_path"]).lower().endswith(".gguf")):
        raise ConfigError(f"{v.where('mixture_of_depths', 'model_name_or_path')}: `mixture_of_depths: load` reads "
                          "the routers from a saved mixture-of-depths folder; with `train_from_scratch` or a .gguf "
                          "file there is none (use `mixture_of_depths: convert`)")


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
        for key in ("loraplus_lr_ratio", "use_rslora", "use_dora", "pissa_init", "pissa_convert"):
            if v.given(key) and v[key] not in (None, False):
                raise ConfigError(
                    f"{v.where(key)}: `{key}` only applies to `finetuning_type: lora` (got `{method}`)"
                )
    if method not in ADAPTER_METHODS and v.given("adapter_name_or_path") and v["adapter_name_or_path"]:
        raise ConfigError(f"{v.where('adapter_name_or_path')}: `adapter_name_or_path` only applies to "
                          f"`finetuning_type: {' or '.join(ADAPTER_METHODS)}` (got `{method}`)")
    _check_oft_and_pissa(v)
    if v["use_llama_pro"]:
        if method not in ("freeze", "lora"):
            raise ConfigError(f"{v.where('use_llama_pro', 'finetuning_type')}: `use_llama_pro` trains the expanded "
                              f"blocks with `finetuning_type: freeze` or `lora` (got `{method}`)")
        if v["freeze_trainable_layers"] <= 0:
            raise ConfigError(f"{v.where('freeze_trainable_layers')}: with `use_llama_pro`, `freeze_trainable_layers` "
                              f"is the number of expanded blocks (> 0), got {v['freeze_trainable_layers']}")
    if v["lora_rank"] < 1:
        raise ConfigError(f"{v.where('lora_rank')}: `lora_rank` must be at least 1, got {v['lora_rank']}")
    if v["lora_alpha"] is not None and v["lora_alpha"] <= 0:
        raise ConfigError(f"{v.where('lora_alpha')}: `lora_alpha` must be positive, got {v['lora_alpha']}")
    if not 0.0 <= v["lora_dropout"] < 1.0:
        raise ConfigError(f"{v.where('lora_dropout')}: `lora_dropout` must be in [0, 1), got {v['lora_dropout']}")


def _check_oft_and_pissa(v: _View) -> None:
    """OFT's size keys (peft takes either a block count or a block size) and LF's PiSSA limits."""
    if v["finetuning_type"] == "oft":
        rank, block = v["oft_rank"], v["oft_block_size"]
        if rank < 0 or block < 0:
            key = "oft_rank" if rank < 0 else "oft_block_size"
            raise ConfigError(f"{v.where(key)}: `{key}` must be >= 0, got {v[key]}")
        if (rank == 0) == (block == 0):
            raise ConfigError(
                f"{v.where('oft_rank', 'oft_block_size')}: set exactly one of `oft_rank` (blocks per layer) and "
                f"`oft_block_size` (their size), the other 0: got oft_rank {rank}, oft_block_size {block}"
                + ("; with oft_rank set, add `oft_block_size: 0`" if rank else ""))
        if not 0.0 <= v["module_dropout"] < 1.0:
            raise ConfigError(f"{v.where('module_dropout')}: `module_dropout` must be in [0, 1), got {v['module_dropout']}")
    if v["pissa_convert"] and not v["pissa_init"]:
        raise ConfigError(f"{v.where('pissa_convert')}: `pissa_convert` converts a PiSSA adapter to a plain LoRA "
                          "adapter at the end of training; it needs `pissa_init: true`")
    if v["pissa_init"]:
        # LF: the reference model of these stages is the policy with its adapter off, which PiSSA changed
        reference = (v["stage"] in ("ppo", "kto") or (v["stage"] == "dpo" and v["pref_loss"] not in ("orpo", "simpo"))
                     or (v["stage"] == "grpo" and v["beta"] > 0))
        if reference:
            raise ConfigError(f"{v.where('pissa_init', 'stage')}: `pissa_init` cannot be used with stage "
                              f"`{v['stage']}`{'' if v['stage'] != 'dpo' else ' (pref_loss ' + str(v['pref_loss']) + ')'}: "
                              "PiSSA moves the principal part of the weights into the adapter, so the base model "
                              "is no longer the reference (as in LLaMA-Factory)")
        if v["quantization_bit"] is not None:
            raise ConfigError(f"{v.where('pissa_init', 'quantization_bit')}: `pissa_init` cannot initialise an "
                              "adapter on a quantized model (QLoRA); LLaMA-Factory's scripts/pissa_init.py does "
                              "that ahead of training")


def optimizer_package_available(module: str) -> bool:
    """Whether an optimizer's package (galore_torch, apollo_torch, badam, adam_mini) is installed."""
    return importlib.util.find_spec(module) is not None


def _check_hardware(v: _View) -> None:
    if v["auto_bf16"] and (set_keys := [k for k in ("bf16", "fp16", "pure_bf16") if v[k]]):
        raise ConfigError(f"{v.where('auto_bf16')}: `auto_bf16` chooses the precision itself (bf16 where the device "
                          f"computes it natively, else float32); remove it or `{set_keys[0]}`")
    for key in ("fp16", "fp16_full_eval"):
        if v[key] and not cuda_available():
            raise ConfigError(f"{v.where(key)}: fp16 training needs a CUDA GPU; use bf16: true or fp32 on CPU")
    if v["fp16"] and v["bf16"]:
        raise ConfigError(f"{v.where('fp16', 'bf16')}: `fp16` and `bf16` cannot both be true; pick one")

    _check_quantization(v)


def _check_quantization(v: _View) -> None:
    """QLoRA: the rules LLaMA-Factory's parser applies, and bitsandbytes able to run on this machine."""
    keys = {"quantization_bit": "adapter_name_or_path", "ref_model_quantization_bit": "ref_model_adapters",
            "reward_model_quantization_bit": "reward_model_adapters"}  # each model's bits and its adapters
    for key, adapters_key in keys.items():
        if v[key] not in (None, 4, 8):
            raise ConfigError(f"{v.where(key)}: `{key}` must be 4 or 8, got {v[key]}")
        adapters = split_names(v[adapters_key])
        if v[key] is not None and len(adapters) > 1:  # merged into 4/8-bit weights they would be rounded away
            raise ConfigError(f"{v.where(key, adapters_key)}: a quantized model takes one adapter, got "
                              f"{len(adapters)}; merge them into the unquantized model first (`tuneforge export`)")
    _check_quantized_others(v)
    if v["quantization_bit"] is not None:
        _check_qlora(v)
    quantized = [key for key in keys if v[key] is not None]
    if quantized:
        _check_bitsandbytes(v, quantized[0])


def _check_quantized_others(v: _View) -> None:
    """The keys that quantize or place another model than the policy: refused where there is no such model (LF
    ignores them there)."""
    if v["ref_model_quantization_bit"] is not None and not v["ref_model"]:
        raise ConfigError(f"{v.where('ref_model_quantization_bit')}: `ref_model_quantization_bit` quantizes the model "
                          "`ref_model` names; without `ref_model` the reference is the policy's starting point, "
                          "loaded as the policy is: set `ref_model` or remove the key")
    if v["reward_model_quantization_bit"] is not None and v["reward_model_type"] != "full":
        raise ConfigError(f"{v.where('reward_model_quantization_bit', 'reward_model_type')}: "
                          "`reward_model_quantization_bit` quantizes a full reward model (`reward_model_type: full`); "
                          f"with `{v['reward_model_type']}` there is no separate model to quantize: remove the key")
    if v["offload_folder"] != "offload" and v["quantization_device_map"] != "auto":
        raise ConfigError(f"{v.where('offload_folder')}: `offload_folder` is where `quantization_device_map: auto` "
                          "puts the weights that do not fit; without that device map nothing is offloaded: remove "
                          "the key or set `quantization_device_map: auto`")


def _check_qlora(v: _View) -> None:
    where = v.where("quantization_bit")
    if v["finetuning_type"] not in ADAPTER_METHODS:  # LF: lora or oft on a quantized model
        raise ConfigError(f"{where}: `quantization_bit` (QLoRA) only works with `finetuning_type: lora` (or oft)")
    adapters = split_names(v["adapter_name_or_path"])
    if adapters and v["create_new_adapter"] and v["do_train"]:
        raise ConfigError(f"{v.where('quantization_bit', 'create_new_adapter')}: `create_new_adapter` would merge "
                          "the adapter into the quantized model; merge it into the unquantized model first")
    if v["train_from_scratch"]:
        raise ConfigError(f"{v.where('quantization_bit', 'train_from_scratch')}: `train_from_scratch` builds the model "
                          "with random weights instead of loading any, so there is nothing to quantize; remove "
                          "`quantization_bit`")
    if v["quantization_device_map"] == "auto" and v["do_train"]:
        raise ConfigError(f"{v.where('quantization_device_map')}: `quantization_device_map: auto` is for "
                          "inference; a training run keeps each process's model on its own device")


def _check_bitsandbytes(v: _View, key: str) -> None:
    """bitsandbytes installed, with its CPU backend where there is no CUDA."""
    what = f"`{key}: {v[key]}`" + (" (QLoRA)" if key == "quantization_bit" else "")
    version = bitsandbytes_version()
    if version is None:
        raise NotSupportedError(f"{v.where(key)}: {what} needs bitsandbytes, which is not installed: "
                                "pip install tuneforge[qlora]")
    if version < BITSANDBYTES_CPU and not cuda_available():
        raise NotSupportedError(
            f"{v.where(key)}: {what} without a CUDA GPU needs bitsandbytes >= "
            f"{'.'.join(map(str, BITSANDBYTES_CPU))} (its CPU backend); {'.'.join(map(str, version))} is installed: "
            "pip install -U tuneforge[qlora]"
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
    if v["predict_with_generate"] and v["stage"] != "sft":
        raise ConfigError(f"{v.where('predict_with_generate')}: `predict_with_generate` needs `stage: sft` "
                          "(LLaMA-Factory: \"cannot be set as True except SFT\")")
    if v["do_train"] and v["predict_with_generate"] and (v["do_eval"] or v["eval_strategy"] != "no"):
        raise NotSupportedError(f"{v.where('predict_with_generate', 'do_eval', 'eval_strategy')}: "
                                "`predict_with_generate` in a training run with evaluation makes LLaMA-Factory "
                                "evaluate by generating (BLEU / ROUGE instead of the loss), which is not implemented "
                                "yet; evaluate the loss without `predict_with_generate`, or predict after training "
                                "(do_predict) without do_eval / eval_strategy")
    losses = [key for key in ("use_dft_loss", "use_eaft_loss", "use_asft_loss") if v[key]]
    for key in losses:
        if v["stage"] != "sft":  # LF reads them in its sft trainer only
            raise ConfigError(f"{v.where(key)}: `{key}` is a loss of `stage: sft`; stage is `{v['stage']}`")
    if len(losses) > 1:  # LF would silently take the first of DFT, EAFT, ASFT
        raise ConfigError(f"{v.where(*losses)}: {' and '.join(f'`{k}`' for k in losses)} are different losses; "
                          "set one of them")
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


def training_kwargs(section: dict[str, Any], disable_shuffling: bool, finetuning_type: str, *,
                    probe_devices: bool = True) -> dict[str, Any]:
    """Keyword arguments for `TrainingArguments`, with tuneforge's defaults where the user gave none.
    `probe_devices=False` leaves `use_cpu` unset when the config does not set it (asking for CUDA imports
    torch: the data commands do without, and `TrainingValues` decides it when read)."""
    kwargs = dict(section)
    if finetuning_type == "lora":
        # as LF: every LoRA parameter gets a gradient, so DDP need not search the graph for unused ones
        kwargs.setdefault("ddp_find_unused_parameters", False)
    kwargs.setdefault("report_to", "none")  # LF users expect no tracker unless they ask for one
    if "use_cpu" not in kwargs and probe_devices and runs_on_cpu():
        # HF refuses bf16 without a GPU unless use_cpu is set; on a CPU-only machine that is what runs anyway.
        kwargs["use_cpu"] = True
    if kwargs.get("auto_bf16") and probe_devices:
        from ..utils.hardware import native_bf16

        kwargs["bf16"] = native_bf16(on_cpu=bool(kwargs.get("use_cpu")) or runs_on_cpu())
    if disable_shuffling:
        kwargs["train_sampling_strategy"] = "sequential"
    return kwargs
