"""UI values -> a LLaMA-Factory config dict -> the YAML `tuneforge train` runs, and back.

Everything the web UI starts goes through `build_train_config` + `validate` (the CLI's own config
loader), so the YAML shown by "Preview command" is exactly what the job runs and what a user can
run by hand. Pure functions over plain dicts: no gradio in here, so it is unit-testable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tuneforge.config import support
from tuneforge.config.catalogue import key_choices
from tuneforge.config.stages import stage_record
from tuneforge.errors import ConfigError
from tuneforge.webui import safety

DEMO_MODEL = "builtin:smollm2"
CUSTOM_MODEL = "Custom"
# Display name -> model_name_or_path. The demo model ships with tuneforge; the others are hub ids.
MODEL_CHOICES: dict[str, str] = {
    "SmolLM2-135M-Instruct (built-in demo)": DEMO_MODEL,
    "SmolLM2-360M-Instruct": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "Qwen2.5-0.5B-Instruct": "Qwen/Qwen2.5-0.5B-Instruct",
    "Qwen2.5-1.5B-Instruct": "Qwen/Qwen2.5-1.5B-Instruct",
    "Qwen2.5-7B-Instruct": "Qwen/Qwen2.5-7B-Instruct",
    "Qwen3-0.6B": "Qwen/Qwen3-0.6B",
    "Llama-3.2-1B-Instruct": "meta-llama/Llama-3.2-1B-Instruct",
    "Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "Mistral-7B-Instruct-v0.3": "mistralai/Mistral-7B-Instruct-v0.3",
    "Gemma-2-2B-it": "google/gemma-2-2b-it",
    "Phi-3.5-mini-instruct": "microsoft/Phi-3.5-mini-instruct",
    CUSTOM_MODEL: "",
}
# Choice lists come from the tables validation uses (config/support.py, the `Literal` fields), so the page
# never offers what the job would then refuse.
FINETUNING_TYPES = support.FINETUNING_TYPES
STAGES = support.supported_stages()
QUANT_BITS = ("none", "8", "4")
QUANT_METHODS = key_choices("quantization_method")
ROPE_SCALINGS = ("none", *key_choices("rope_scaling"))
# booster -> the config key it sets; offered only when that key is implemented
BOOSTER_KEYS = {"flashattn2": "flash_attn", "unsloth": "use_unsloth", "liger_kernel": "enable_liger_kernel"}
BOOSTERS = ("auto", *(b for b, key in BOOSTER_KEYS.items() if key not in support.UNSUPPORTED_KEYS))
COMPUTE_TYPES = ("fp32", "bf16", "fp16")
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
PREF_LOSSES = key_choices("pref_loss")
GRPO_LOSSES = key_choices("loss_type")
CHOICE_KEYS = ("pref_loss", "loss_type", "reward_funcs")  # stage keys that are a choice or a text, not a number
INT_KEYS = ("num_generations",)
SOURCE = "web UI"

# The values a fresh UI starts with (LLaMA-Factory's web UI defaults where it has one).
DEFAULTS: dict[str, Any] = {
    "model_path": DEMO_MODEL, "finetuning_type": "lora", "checkpoints": [], "quantization_bit": "none",
    "quantization_method": "bnb", "template": "auto", "rope_scaling": "none", "booster": "auto",
    "stage": "sft", "dataset_dir": "data", "dataset": [], "learning_rate": "5e-5", "num_train_epochs": 3.0,
    "max_steps": 0, "max_grad_norm": 1.0, "max_samples": 100000, "compute_type": "fp32", "cutoff_len": 2048,
    "per_device_train_batch_size": 2, "gradient_accumulation_steps": 8, "val_size": 0.0,
    "lr_scheduler_type": "cosine", "logging_steps": 5, "save_steps": 100, "warmup_steps": 0,
    "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lora_target": "all", "use_rslora": False,
    "use_dora": False, "freeze_trainable_layers": 2, "freeze_trainable_modules": "all", "pref_beta": 0.1,
    "pref_ftx": 0.0, "pref_loss": "sigmoid", "num_generations": 8, "reward_funcs": "accuracy", "beta": 0.0,
    "loss_type": "dapo", "output_dir": "", "extra_args": "{}",
}
INT_KEYS = ("max_steps", "max_samples", "cutoff_len", "per_device_train_batch_size", "gradient_accumulation_steps",
            "logging_steps", "save_steps", "warmup_steps", "lora_rank", "lora_alpha", "freeze_trainable_layers")


# ---------------------------------------------------------------------------------------- paths
def model_slug(model_path: str) -> str:
    """A folder name for a model: `builtin:smollm2` -> `smollm2`, `Qwen/Qwen2.5-0.5B` -> `Qwen2.5-0.5B`."""
    name = str(model_path or "").strip().rstrip("/\\").split(":")[-1]
    name = re.split(r"[/\\]", name)[-1] or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def output_root(save_root: str | Path, model_path: str, finetuning_type: str) -> Path:
    """Where runs of this model and method live: `<save_root>/<model>/<method>/`."""
    return Path(save_root) / model_slug(model_path) / finetuning_type


def resolve_output_dir(save_root: str | Path, model_path: str, finetuning_type: str, name: str) -> str:
    """A run name -> its folder under the output root; an absolute or ./-relative path is kept as given."""
    name = (name or "").strip()
    if not name:
        raise ConfigError(f"{SOURCE}: the output folder is empty; give the run a name")
    if Path(name).is_absolute() or name.startswith((".", "~")) or "/" in name:
        return name
    return str(output_root(save_root, model_path, finetuning_type) / name)


def _has_weights(folder: Path) -> bool:
    from tuneforge.train.resume import SAVED_MODEL_FILES

    return any((folder / name).is_file() for name in SAVED_MODEL_FILES)


def list_checkpoints(save_root: str | Path, model_path: str, finetuning_type: str) -> list[str]:
    """Saved runs (and their `checkpoint-N` folders) under the output root, as paths relative to it."""
    root = output_root(save_root, model_path, finetuning_type)
    if not root.is_dir():
        return []
    found = []
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        if _has_weights(run):
            found.append(run.name)
        steps = [c for c in run.glob("checkpoint-*") if c.is_dir() and _has_weights(c)]
        for checkpoint in sorted(steps, key=lambda c: int(c.name.split("-")[-1]) if c.name.split("-")[-1].isdigit() else 0):
            found.append(f"{run.name}/{checkpoint.name}")
    return found


def list_runs(save_root: str | Path, model_path: str, finetuning_type: str) -> list[str]:
    root = output_root(save_root, model_path, finetuning_type)
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def describe_output_dir(output_dir: str | Path, lang: str = "en") -> tuple[str, str]:
    """(`new` | `resume` | `conflict`, one line for the user in `lang`) for training into `output_dir`."""
    from tuneforge.train.resume import find_latest_checkpoint
    from tuneforge.webui.i18n import message

    folder = Path(output_dir)
    if not folder.is_dir():
        return "new", message("run_new", lang, folder=folder)
    latest = find_latest_checkpoint(folder)
    if latest is not None:
        path, state = latest
        return "resume", message("run_resume", lang, folder=folder, checkpoint=path.name,
                                 step=state.get("global_step", "?"), total=state.get("max_steps", "?"))
    if _has_weights(folder):
        return "conflict", message("run_conflict", lang, folder=folder)
    return "new", message("run_new_existing", lang, folder=folder)


# ---------------------------------------------------------------------------------------- datasets
def list_datasets(dataset_dir: str, stage: str) -> list[str]:
    """Names in `<dataset_dir>/dataset_info.json` whose kind fits the stage (the data pipeline's own rule)."""
    from tuneforge.data.pipeline import check_stage
    from tuneforge.data.registry import DATASET_INFO, parse_entry, read_dataset_info
    from tuneforge.errors import DataError

    info_file = Path(dataset_dir or "data") / DATASET_INFO
    if not info_file.is_file():
        return []
    names = []
    for name, entry in read_dataset_info(info_file).items():
        try:
            spec = parse_entry(name, entry, info_file.parent, info_file)
        except Exception:  # an entry tuneforge cannot read is not offered (preview/start name the problem)
            continue
        try:
            check_stage([spec], stage)
        except DataError:
            continue
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------- values -> config
def _number(values: Mapping[str, Any], key: str, cast=float) -> Any:
    raw = values.get(key, DEFAULTS.get(key))
    try:
        number = cast(float(raw)) if cast is int else cast(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{SOURCE}: `{key}` expects a number, got {raw!r}") from None
    return number


def parse_extra_args(text: str | None) -> dict[str, Any]:
    """The "extra arguments" box: a JSON object of further config keys."""
    text = (text or "").strip()
    if not text:
        return {}
    try:
        extra = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{SOURCE}: extra arguments are not valid JSON (line {err.lineno}, column {err.colno}: "
                          f"{err.msg}); expected an object such as {{\"seed\": 1}}") from None
    if not isinstance(extra, dict):
        raise ConfigError(f"{SOURCE}: extra arguments must be a JSON object such as {{\"seed\": 1}}, "
                          f"got a {type(extra).__name__}")
    return extra


def model_config(values: Mapping[str, Any], save_root: str | Path) -> dict[str, Any]:
    """The model-bar keys: model, method, adapters, quantization, template, RoPE, booster."""
    v = {**DEFAULTS, **values}
    model_path = str(v["model_path"] or "").strip()
    if not model_path:
        raise ConfigError(f"{SOURCE}: no model chosen; pick one or enter a local folder / hub id")
    config: dict[str, Any] = {"model_name_or_path": model_path}
    checkpoints = [c for c in (v["checkpoints"] or []) if c]
    root = output_root(save_root, model_path, v["finetuning_type"])
    if checkpoints:
        if v["finetuning_type"] in ("lora", "oft"):  # adapter folders
            config["adapter_name_or_path"] = ",".join(str(root / c) for c in checkpoints)
        elif len(checkpoints) == 1:  # a full/freeze run is a whole model: load it instead of the base
            config["model_name_or_path"] = str(root / checkpoints[0])
        else:
            raise ConfigError(f"{SOURCE}: {v['finetuning_type']} checkpoints are whole models; choose only one")
    if v["quantization_bit"] not in (None, "", "none"):
        config["quantization_bit"] = int(v["quantization_bit"])
        config["quantization_method"] = v["quantization_method"]
    if v["template"] not in (None, "", "auto"):
        config["template"] = v["template"]
    if v["rope_scaling"] not in (None, "", "none"):
        config["rope_scaling"] = v["rope_scaling"]
    booster = v["booster"]
    if booster == "flashattn2":
        config["flash_attn"] = "fa2"
    elif booster == "unsloth":
        config["use_unsloth"] = True
    elif booster == "liger_kernel":
        config["enable_liger_kernel"] = True
    return config


def build_train_config(values: Mapping[str, Any], save_root: str | Path = "saves", *, allow_outside: bool = False,
                       allow_remote_code: bool = False) -> dict[str, Any]:
    """All UI values -> the config dict `tuneforge train` gets (key order = YAML order).

    Refused (`safety.Refusal`) unless confirmed: an output folder outside `save_root` (`allow_outside`),
    extra arguments that run a model repository's code (`allow_remote_code`).
    """
    v = {**DEFAULTS, **values}
    method, stage = v["finetuning_type"], v["stage"]
    datasets = [d for d in (v["dataset"] or []) if d]
    if not datasets:
        raise ConfigError(f"{SOURCE}: no dataset chosen; pick at least one dataset for stage `{stage}`")
    model = model_config(v, save_root)
    config: dict[str, Any] = {**model, "stage": stage, "do_train": True, "finetuning_type": method}
    if method == "lora":
        config.update(lora_rank=_number(v, "lora_rank", int), lora_alpha=_number(v, "lora_alpha", int),
                      lora_dropout=_number(v, "lora_dropout"), lora_target=str(v["lora_target"] or "all").strip())
        for key in ("use_rslora", "use_dora"):
            if v[key]:
                config[key] = True
    elif method == "freeze":
        config.update(freeze_trainable_layers=_number(v, "freeze_trainable_layers", int),
                      freeze_trainable_modules=str(v["freeze_trainable_modules"] or "all").strip())
    for key in stage_record(stage).ui_keys:  # the stage's own keys (config/stages.py)
        config[key] = v[key] if key in CHOICE_KEYS else _number(v, key, int if key in INT_KEYS else float)
    config.update(dataset=",".join(datasets), dataset_dir=str(v["dataset_dir"] or "data"),
                  cutoff_len=_number(v, "cutoff_len", int))
    if _number(v, "max_samples", int) > 0:
        config["max_samples"] = _number(v, "max_samples", int)
    if _number(v, "val_size") > 0:
        config["val_size"] = _number(v, "val_size")
    config.update(output_dir=resolve_output_dir(save_root, str(v["model_path"]).strip(), method, v["output_dir"]),
                  logging_steps=_number(v, "logging_steps", int), save_steps=_number(v, "save_steps", int),
                  plot_loss=True, report_to="none")
    config.update(per_device_train_batch_size=_number(v, "per_device_train_batch_size", int),
                  gradient_accumulation_steps=_number(v, "gradient_accumulation_steps", int),
                  learning_rate=_number(v, "learning_rate"), num_train_epochs=_number(v, "num_train_epochs"),
                  lr_scheduler_type=v["lr_scheduler_type"], max_grad_norm=_number(v, "max_grad_norm"))
    if _number(v, "max_steps", int) > 0:
        config["max_steps"] = _number(v, "max_steps", int)
    if _number(v, "warmup_steps", int) > 0:
        config["warmup_steps"] = _number(v, "warmup_steps", int)
    if v["compute_type"] in ("bf16", "fp16"):
        config[v["compute_type"]] = True
    extra = parse_extra_args(v["extra_args"])
    safety.check_remote_code(extra, allow_remote_code)
    config.update(extra)
    safety.check_inside_root(config["output_dir"], save_root, allow_outside)  # extra args may set it too
    return config


# The Evaluate tab's own values (LLaMA-Factory's Evaluate & Predict tab defaults).
EVAL_DEFAULTS: dict[str, Any] = {
    "eval_dataset_dir": "data", "eval_dataset": [], "eval_cutoff_len": 1024, "eval_max_samples": 100000,
    "max_new_tokens": 512, "top_p": 0.7, "temperature": 0.95, "eval_output_dir": "",
}


def build_predict_config(model_values: Mapping[str, Any], eval_values: Mapping[str, Any],
                         save_root: str | Path = "saves", *, allow_outside: bool = False) -> dict[str, Any]:
    """Model bar + Evaluate tab values -> the `do_predict` config `tuneforge train` runs (LF's predict YAML);
    an output folder outside `save_root` is refused unless `allow_outside`."""
    m = {**DEFAULTS, **model_values}
    v = {**EVAL_DEFAULTS, **eval_values}
    datasets = [d for d in (v["eval_dataset"] or []) if d]
    if not datasets:
        raise ConfigError(f"{SOURCE}: no dataset chosen; pick at least one dataset to predict on")
    config: dict[str, Any] = {**model_config(m, save_root), "stage": "sft", "do_predict": True,
                              "finetuning_type": m["finetuning_type"],
                              "eval_dataset": ",".join(datasets), "dataset_dir": str(v["eval_dataset_dir"] or "data"),
                              "cutoff_len": _number(v, "eval_cutoff_len", int)}
    if _number(v, "eval_max_samples", int) > 0:
        config["max_samples"] = _number(v, "eval_max_samples", int)
    config.update(predict_with_generate=True, max_new_tokens=_number(v, "max_new_tokens", int),
                  top_p=_number(v, "top_p"), temperature=_number(v, "temperature"),
                  output_dir=resolve_output_dir(save_root, str(m["model_path"]).strip(), m["finetuning_type"],
                                                v["eval_output_dir"]),
                  report_to="none")
    safety.check_inside_root(config["output_dir"], save_root, allow_outside)
    return config


def validate(config: Mapping[str, Any], *, require_output_dir: bool = True):
    """The CLI's config loader on the dict: a `RunConfig`, or the `TuneforgeError` it raises."""
    from tuneforge.config.parser import load_config_dict

    return load_config_dict(config, source=SOURCE, require_output_dir=require_output_dir)


def to_yaml(config: Mapping[str, Any], yaml_path: str | Path | None = None, *, command: str | None = None) -> str:
    """The YAML file a job runs; the first line says how to run it by hand (`command`, else `tuneforge train`)."""
    header = f"# {command}\n" if command else f"# tuneforge train {yaml_path}\n" if yaml_path else ""
    body = yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True, default_flow_style=False)
    return f"{header}# written by the tuneforge web UI\n{body}"


def train_command(yaml_path: str | Path) -> str:
    return f"tuneforge train {yaml_path}"


# ---------------------------------------------------------------------------------------- config -> values
def values_from_config(config: Mapping[str, Any], save_root: str | Path = "saves") -> dict[str, Any]:
    """A saved config -> UI values; keys the UI has no field for go into `extra_args` (as JSON)."""
    config = dict(config)
    values: dict[str, Any] = {}
    consumed = {"do_train", "plot_loss", "report_to"}
    simple = [k for k in DEFAULTS if k not in ("model_path", "checkpoints", "dataset", "output_dir", "extra_args",
                                               "quantization_bit", "compute_type", "booster", "template", "rope_scaling")]
    for key in simple:
        if key in config:
            values[key] = config[key]
            consumed.add(key)
    if "model_name_or_path" in config:
        values["model_path"] = config["model_name_or_path"]
        consumed.add("model_name_or_path")
    if "dataset" in config:
        raw = config["dataset"]
        values["dataset"] = [d.strip() for d in (raw.split(",") if isinstance(raw, str) else raw) if str(d).strip()]
        consumed.add("dataset")
    for key, default in (("template", "auto"), ("rope_scaling", "none")):
        values[key] = config.get(key) or default
        consumed.add(key)
    values["quantization_bit"] = str(config["quantization_bit"]) if config.get("quantization_bit") else "none"
    consumed.add("quantization_bit")
    values["compute_type"] = "bf16" if config.get("bf16") else "fp16" if config.get("fp16") else "fp32"
    consumed.update({"bf16", "fp16"})
    values["booster"] = ("flashattn2" if config.get("flash_attn") == "fa2" else "unsloth" if config.get("use_unsloth")
                         else "liger_kernel" if config.get("enable_liger_kernel") else "auto")
    consumed.update({"flash_attn", "use_unsloth", "enable_liger_kernel"})
    if "output_dir" in config:
        out = Path(str(config["output_dir"]))
        root = output_root(save_root, values.get("model_path", DEMO_MODEL), values.get("finetuning_type", "lora"))
        values["output_dir"] = out.name if out.parent == root else str(out)
        consumed.add("output_dir")
    if "learning_rate" in config:
        values["learning_rate"] = f"{float(config['learning_rate']):g}"
    extras = {k: v for k, v in config.items() if k not in consumed}
    values["extra_args"] = json.dumps(extras, ensure_ascii=False) if extras else "{}"
    return values
