"""LLaMA-Factory v1-engine configs (`USE_V1=1 llamafactory-cli train x.yaml`) read as the v0 keys they mean.

A v1 file names the model with `model`, the method with `peft_config: {name: lora | freeze, ...}` (none: full),
the data with `train_dataset: data/v1_sft_demo.yaml` (a v1 dataset YAML, read by data/v1_datasets.py) and the
batch with `micro_batch_size` / `global_batch_size`. `translate` turns it into v0 keys with v1's own defaults
where the file says nothing (LF v0.9.5, src/llamafactory/v1/config/*_args.py and trainers/base_trainer.py):
learning rate 1e-4, 3 epochs, micro batch 1, AdamW (torch) with weight decay 0.01, a constant learning rate with
no warmup, gradient clipping at 1.0, a log line every step, no checkpoints unless `save_steps` / `save_epochs`,
template `qwen3_nothink`. What v1 does differently and tuneforge does not copy is listed in `V1_DIFFERENCES`
and logged; what tuneforge cannot do is refused by name. As in v1, `dist_config: fsdp2` and `bf16` (its
mixed-precision policy) apply only when several processes run (torchrun, FORCE_TORCHRUN=1); one process trains
unsharded in float32. Sub-keys of the `*_config` blocks are checked (v1 ignores
a misspelt one silently).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from tuneforge.errors import ConfigError, NotSupportedError

from .batching_args import TOKEN_BUDGET_STRATEGIES

logger = logging.getLogger(__name__)

# keys only a v1 file has (`model` without `model_name_or_path` is v1 too)
V1_KEYS = frozenset({
    "model", "model_class", "kernel_config", "quant_config", "dist_config", "peft_config", "init_config",
    "train_dataset", "micro_batch_size", "global_batch_size", "batching_strategy", "batching_workers",
    "sample_backend", "enable_activation_checkpointing", "save_epochs", "save_ckpt_as_hf", "optim_config",
    "lr_scheduler_config"})
V0_ONLY_KEYS = ("model_name_or_path", "dataset", "stage", "finetuning_type")
# v1 keys with the same name and meaning as a v0 key
SHARED_KEYS = ("template", "trust_remote_code", "output_dir", "cutoff_len", "learning_rate", "num_train_epochs",
               "max_steps", "max_grad_norm", "seed", "full_determinism", "resume_from_checkpoint", "save_steps",
               "save_total_limit", "logging_steps", "max_new_tokens")
V1_DEFAULTS = {"template": "qwen3_nothink", "learning_rate": 1.0e-4, "num_train_epochs": 3.0, "cutoff_len": 2048,
               "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "optim": "adamw_torch",
               "weight_decay": 0.01, "lr_scheduler_type": "constant", "warmup_steps": 0, "max_grad_norm": 1.0,
               "logging_steps": 1, "save_strategy": "no", "seed": 42}
V1_DIFFERENCES = (
    "v1 also trains on the assistant header (`<|im_start|>assistant\\n`); tuneforge masks it as v0 does",
    "v1's alpaca converter joins instruction and input without a newline and drops `history`; tuneforge reads "
    "alpaca rows as v0 does",
    "v1 cuts an over-long sample at cutoff_len from the right; tuneforge splits the budget between prompt and "
    "answer as v0 does",
    "v1 draws a dataset's `size` rows with replacement; tuneforge draws them as v0's num_samples does",
)
_PLUGIN_KEYS = {  # plugin block -> name -> accepted sub-keys
    "peft_config": {
        "lora": {"r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "use_dora", "modules_to_save",
                 "adapter_name_or_path", "export_dir", "export_size", "infer_dtype", "export_legacy_format",
                 "export_hub_model_id"},
        "freeze": {"freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules",
                   "cast_trainable_params_to_fp32"}},
    "dist_config": {"fsdp2": {"dcp_path", "cp_mode", "cp_size", "reshard_after_forward", "offload_params",
                              "pin_memory", "timeout", "mp_replicate_size", "mp_shard_size", "dp_size"},
                    "deepspeed": {"config_file", "cp_size", "timeout"}},
    "kernel_config": {"auto": {"include_kernels"}, "liger_kernel": {"include_kernels"}},
    "quant_config": {"bnb": {"quantization_bit", "compute_dtype", "double_quantization", "quantization_type"},
                     "auto": {"quantization_bit", "compute_dtype", "double_quantization", "quantization_type"}},
    "init_config": {"init_on_default": set(), "init_on_rank0": set(), "init_on_meta": set()},
}
_FLASH_ATTN = {"eager": "disabled", "sdpa": "sdpa", "flash_attention_2": "fa2"}


def is_v1_config(values: dict[str, Any]) -> bool:
    return any(key in V1_KEYS for key in values) and "model_name_or_path" not in values


def translate(values: dict[str, Any], origins: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """v1 keys -> v0 keys (`origins` say `file (v1 key)`); raises ConfigError / NotSupportedError naming the key."""
    values = _apply_dotted(values)
    mixed = [k for k in V0_ONLY_KEYS if k in values]
    if mixed:
        raise ConfigError(f"{_where(origins, mixed[0])}: `{mixed[0]}` is a v0 key in a LLaMA-Factory v1 config "
                          f"(it has {', '.join(sorted(k for k in values if k in V1_KEYS))}); write the file in one "
                          f"format")
    unknown = sorted(set(values) - V1_KEYS - set(SHARED_KEYS) - {"flash_attn", "bf16", "eval_dataset"})
    if unknown:
        raise ConfigError(f"{_where(origins, unknown[0])}: unknown key(s) {', '.join(f'`{k}`' for k in unknown)} in a "
                          f"LLaMA-Factory v1 config (LF v1 refuses them too, unless ALLOW_EXTRA_KEYS=1)")
    out: dict[str, Any] = {"stage": "sft", "do_train": "train_dataset" in values, **V1_DEFAULTS}
    if "train_dataset" not in values and "template" not in values:
        del out["template"]  # merge / chat: v1 renders nothing; the model's own chat template is kept
    where: dict[str, str] = {}

    def put(key: str, value: Any, v1_key: str) -> None:
        out[key] = value
        where[key] = f"{_where(origins, v1_key.split('.')[0])} ({v1_key})"

    put("model_name_or_path", values.get("model", "Qwen/Qwen3-4B-Instruct-2507"), "model")
    for key in SHARED_KEYS:
        if key in values:
            put(key, values[key], key)
    plugins = {name: _plugin(values, name, origins) for name in _PLUGIN_KEYS}
    _model(values, plugins, put, origins)
    _batch(values, put, origins)
    _distributed(plugins["dist_config"], values, put, origins)
    _saving_and_running(values, put, origins)
    if "train_dataset" in values:
        dataset_dir, names = _dataset(values["train_dataset"], origins)
        put("dataset_dir", dataset_dir, "train_dataset")
        put("dataset", names, "train_dataset")
    if values.get("eval_dataset") is not None:
        raise NotSupportedError(f"{_where(origins, 'eval_dataset')}: `eval_dataset` in a v1 config is not "
                                f"supported yet (LLaMA-Factory v1 reads it but never evaluates)")
    logger.warning("a LLaMA-Factory v1 config, read as the v0 keys it means. Not copied from v1: %s",
                   "; ".join(V1_DIFFERENCES))
    file = next(iter(origins.values()), "<config>")
    return out, {key: where.get(key, f"{file} (v1 default)") for key in out}


def _where(origins: dict[str, str], key: str) -> str:
    return origins.get(key) or next(iter(origins.values()), "<config>")


def _apply_dotted(values: dict[str, Any]) -> dict[str, Any]:
    """OmegaConf-style overrides `peft_config.r=16` into their block (v1's command-line syntax)."""
    out = {k: v for k, v in values.items() if "." not in k}
    for key, value in values.items():
        if "." in key:
            block, _, sub = key.partition(".")
            out[block] = {**(out.get(block) or {}), sub: value}
    return out


def _plugin(values: dict[str, Any], block: str, origins: dict[str, str]) -> dict[str, Any] | None:
    config = values.get(block)
    if config is None:
        return None
    if isinstance(config, str):
        import json

        try:
            config = json.loads(config)
        except json.JSONDecodeError:
            config = None
    if not isinstance(config, dict) or "name" not in config:
        raise ConfigError(f"{_where(origins, block)}: `{block}` must be a mapping with a `name`, got {values[block]!r}")
    accepted = _PLUGIN_KEYS[block].get(config["name"])
    if accepted is None:
        raise ConfigError(f"{_where(origins, block)}: `{block}.name: {config['name']}` is not one of LLaMA-Factory "
                          f"v1's: {', '.join(_PLUGIN_KEYS[block])}")
    unknown = sorted(set(config) - accepted - {"name"})
    if unknown:
        raise ConfigError(f"{_where(origins, block)}: `{block}` ({config['name']}) has no key "
                          f"{', '.join(f'`{k}`' for k in unknown)}; its keys: {', '.join(sorted(accepted))}")
    return config


def _comma_list(value: Any) -> Any:
    """v1 takes a YAML list where v0 takes `a,b`."""
    return ",".join(value) if isinstance(value, list) else value


def _model(values, plugins, put, origins) -> None:
    if values.get("model_class", "llm") != "llm":
        raise NotSupportedError(f"{_where(origins, 'model_class')}: `model_class: {values['model_class']}` is not "
                                f"supported yet (only `llm`, a causal language model)")
    flash = values.get("flash_attn", "sdpa")
    if flash not in _FLASH_ATTN:
        raise ConfigError(f"{_where(origins, 'flash_attn')}: `flash_attn: {flash}` is not a v1 value; expected one of "
                          f"{', '.join(_FLASH_ATTN)} (LLaMA-Factory v1 rejects it too)")
    put("flash_attn", _FLASH_ATTN[flash], "flash_attn")
    peft = plugins["peft_config"]
    if peft is None:
        put("finetuning_type", "full", "peft_config")
    elif peft["name"] == "lora":
        put("finetuning_type", "lora", "peft_config.name")
        for v1_key, v0_key, default in (("r", "lora_rank", 8), ("lora_alpha", "lora_alpha", 16),
                                        ("lora_dropout", "lora_dropout", 0.05), ("target_modules", "lora_target", "all"),
                                        ("use_rslora", "use_rslora", False), ("use_dora", "use_dora", False),
                                        ("modules_to_save", "additional_target", None),
                                        ("adapter_name_or_path", "adapter_name_or_path", None),
                                        ("export_dir", "export_dir", None), ("export_size", "export_size", 5),
                                        ("infer_dtype", "infer_dtype", "auto"),
                                        ("export_legacy_format", "export_legacy_format", False),
                                        ("export_hub_model_id", "export_hub_model_id", None)):
            value = peft.get(v1_key, default)
            if value is not None:
                put(v0_key, _comma_list(value), f"peft_config.{v1_key}")
    else:
        put("finetuning_type", "freeze", "peft_config.name")
        for key, default in (("freeze_trainable_layers", 2), ("freeze_trainable_modules", "all"),
                             ("freeze_extra_modules", None)):
            value = peft.get(key, default)
            if value is not None:
                put(key, _comma_list(value), f"peft_config.{key}")
        if peft.get("cast_trainable_params_to_fp32", True) is not True:
            put("pure_bf16", True, "peft_config.cast_trainable_params_to_fp32")
    kernels = plugins["kernel_config"]
    if kernels and kernels["name"] == "liger_kernel":
        put("enable_liger_kernel", True, "kernel_config.name")  # refused with its reason by the v0 checks
    elif kernels and kernels.get("include_kernels") in (True, "auto"):
        put("use_v1_kernels", True, "kernel_config.include_kernels")  # the same plugins (model/v1_kernels.py)
    elif kernels and kernels.get("include_kernels"):
        raise NotSupportedError(f"{_where(origins, 'kernel_config')}: `kernel_config.include_kernels: "
                                f"{kernels['include_kernels']}` (kernel ids) is not supported yet; use auto")
    quant = plugins["quant_config"]
    if quant is not None and "compute_dtype" in quant:
        raise NotSupportedError(f"{_where(origins, 'quant_config')}: `quant_config.compute_dtype` is not supported "
                                f"yet (tuneforge computes in the dtype of bf16 / fp16)")
    if quant is not None:
        put("quantization_bit", int(quant.get("quantization_bit", 4)), "quant_config.quantization_bit")
        for key in ("quantization_type", "double_quantization"):
            if key in quant:
                put(key, quant[key], f"quant_config.{key}")
    init = plugins["init_config"]
    if init is not None and init["name"] == "init_on_meta":
        raise NotSupportedError(f"{_where(origins, 'init_config')}: `init_config: init_on_meta` (build on the meta "
                                f"device, FSDP2 loads the shards) is not supported yet")


def _batch(values, put, origins) -> None:
    micro = int(values.get("micro_batch_size", 1))
    put("per_device_train_batch_size", micro, "micro_batch_size")
    if values.get("global_batch_size") is not None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        total = int(values["global_batch_size"])
        if total % (micro * world):
            raise ConfigError(f"{_where(origins, 'global_batch_size')}: `global_batch_size: {total}` is not a multiple "
                              f"of micro_batch_size ({micro}) x processes ({world})")
        put("gradient_accumulation_steps", total // (micro * world), "global_batch_size")
    strategy = values.get("batching_strategy", "normal")
    if strategy == "normal":
        put("packing", False, "batching_strategy")  # each micro-batch padded to its longest sample
    elif strategy in TOKEN_BUDGET_STRATEGIES:  # micro-batches of cutoff_len x micro_batch_size tokens
        put("batching_strategy", strategy, "batching_strategy")
        logger.warning("batching_strategy: %s -- v1 carries the samples left over at the end of a step into the next "
                       "step and replays the same order every epoch; tuneforge ends each epoch with a smaller "
                       "micro-batch and reshuffles every epoch (data/token_batches.py)", strategy)
    elif strategy != "padding_free":  # padding_free: tuneforge's default (one row per batch, no cross-attention)
        raise ConfigError(f"{_where(origins, 'batching_strategy')}: `batching_strategy: {strategy}` is not one of "
                          f"normal, padding_free, dynamic_batching, dynamic_padding_free")
    if "batching_workers" in values:
        put("dataloader_num_workers", int(values["batching_workers"]), "batching_workers")
    if values.get("enable_activation_checkpointing") is False:
        put("disable_gradient_checkpointing", True, "enable_activation_checkpointing")
    for block in ("optim_config", "lr_scheduler_config"):
        if values.get(block) is not None:
            raise ConfigError(f"{_where(origins, block)}: `{block}` has no plugin in LLaMA-Factory v1 (0.9.5), which "
                              f"refuses it too; leave it out (AdamW, constant learning rate)")


def _distributed(dist, values, put, origins) -> None:
    if dist is None:
        return
    if int(dist.get("cp_size", 1)) > 1:
        raise NotSupportedError(f"{_where(origins, 'dist_config')}: context parallelism (`cp_size: {dist['cp_size']}`, "
                                "Ulysses) is not supported yet: LLaMA-Factory v1 splits each sequence over the GPUs "
                                "and exchanges attention heads inside FlashAttention-2's forward (CUDA and the "
                                "flash_attn package); without `cp_size` every process holds whole sequences")
    meshes = [key for key in ("mp_replicate_size", "mp_shard_size", "dp_size") if key in dist]
    if meshes:
        raise NotSupportedError(f"{_where(origins, 'dist_config')}: `dist_config.{meshes[0]}` (a hand-made device "
                                f"mesh) is not supported yet; leave the sizes to the process count")
    if "timeout" in dist:
        put("ddp_timeout", int(dist["timeout"]), "dist_config.timeout")
    if dist["name"] == "deepspeed":
        if not dist.get("config_file"):
            raise ConfigError(f"{_where(origins, 'dist_config')}: `dist_config: deepspeed` needs `config_file`")
        put("deepspeed", dist["config_file"], "dist_config.config_file")
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:  # v1 applies FSDP2 only when several processes run
        put("fsdp", "full_shard auto_wrap", "dist_config.name")
        put("bf16", bool(values.get("bf16", True)), "bf16")  # v1's bf16 is FSDP2's mixed-precision policy
        put("fsdp_config", {"fsdp_version": 2, "reshard_after_forward": dist.get("reshard_after_forward", True),
                            **({"cpu_offload": True} if dist.get("offload_params") else {})}, "dist_config")


def _saving_and_running(values, put, origins) -> None:
    if values.get("save_steps"):
        put("save_strategy", "steps", "save_steps")
    if values.get("save_epochs") is not None:
        if float(values["save_epochs"]) != 1.0:
            raise NotSupportedError(f"{_where(origins, 'save_epochs')}: `save_epochs: {values['save_epochs']}` is not "
                                    f"supported yet (1 = a checkpoint every epoch, or save_steps)")
        put("save_strategy", "epoch", "save_epochs")
    if values.get("resume_from_checkpoint") == "auto":
        raise NotSupportedError(f"{_where(origins, 'resume_from_checkpoint')}: `resume_from_checkpoint: auto` is not "
                                f"supported yet; name the checkpoint folder")
    if values.get("sample_backend", "hf") != "hf":
        put("infer_backend", values["sample_backend"], "sample_backend")  # refused with its reason (vllm)
    # save_ckpt_as_hf: tuneforge's checkpoint-N folders are Hugging Face model folders already


def _dataset(train_dataset: str, origins) -> tuple[str, str]:
    from pathlib import Path

    path = Path(train_dataset)
    if not is_dataset_yaml(train_dataset):
        raise NotSupportedError(f"{_where(origins, 'train_dataset')}: `train_dataset: {train_dataset}` (rows already in "
                                f"v1's own message format, or a hub dataset id) is not supported yet; use a v1 "
                                f"dataset YAML with a `converter` (alpaca or sharegpt)")
    if not path.is_file():
        raise ConfigError(f"{_where(origins, 'train_dataset')}: `train_dataset: {train_dataset}`: no such file (v1 "
                          f"reads it relative to the working folder, {Path.cwd()})")
    return str(path), ",".join(read_dataset_yaml(path))


def is_dataset_yaml(dataset_dir: str) -> bool:
    """A `dataset_dir` that is a v1 dataset YAML (what `train_dataset` becomes), not a folder."""
    return dataset_dir.lower().endswith((".yaml", ".yml"))


def read_dataset_yaml(path) -> dict[str, Any]:
    """A v1 dataset YAML as written (name -> {path, converter, ...}); data/v1_datasets.py reads the entries."""
    import yaml

    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read this v1 dataset YAML: {err}") from None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{path}: a v1 dataset YAML maps dataset names to {{path, converter, ...}}; got {entries!r}")
    return entries
