"""The output folder of a training run, and automatic resume from its latest checkpoint (LF's rule).

`prepare_output_dir(cfg)` runs before anything slow: the folder must be a writable folder that is not
the model or an adapter being trained from; a save a crash interrupted is finished or dropped;
`overwrite_output_dir: true` starts clean (the old `checkpoint-*` are removed, and the log says so);
then `detect_resume`: with `do_train`, an existing `output_dir`, no `overwrite_output_dir` and no
explicit `resume_from_checkpoint`, the latest *complete* `checkpoint-N` is resumed and the log says
so in one line. A checkpoint is complete when its `trainer_state.json` was written -- the Trainer
writes it last, so a crash mid-save leaves a folder without it, which is skipped. An `output_dir`
that holds a saved model but no checkpoint is refused (as LF does): training there would overwrite it.

Every checkpoint carries `tuneforge_run.json` (`run_fingerprint`: the settings that define the run
and a hash of its encoded training data); `check_resume_matches` refuses to auto-resume a checkpoint
of a different run and says what differs.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.errors import ConfigError
from tuneforge.utils.distributed import is_main_process
from tuneforge.utils.folders import finish_interrupted_save

if TYPE_CHECKING:
    from tuneforge.config.args import TrainingArguments
    from tuneforge.config.parser import RunConfig

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Files of a saved model or adapter (LF's CHECKPOINT_NAMES).
SAVED_MODEL_FILES = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


RUN_FILE = "tuneforge_run.json"
# Settings that define a run (LF key names): a checkpoint trained with other values belongs to another
# run. Keys left out (num_train_epochs, max_steps, logging/saving/evaluation, output) may change
# between a run and its resume; the data is compared through its fingerprint.
RUN_DEFINING_KEYS = {
    "model": ("model_name_or_path", "adapter_name_or_path", "quantization_bit", "rope_scaling", "add_tokens",
              "add_special_tokens", "new_special_tokens_config", "resize_vocab"),
    "data": ("packing", "neat_packing"),
    "finetuning": ("stage", "finetuning_type", "lora_rank", "lora_alpha", "lora_dropout", "lora_target",
                   "additional_target", "use_rslora", "use_dora", "pissa_init", "create_new_adapter",
                   "loraplus_lr_ratio", "freeze_trainable_layers", "freeze_trainable_modules",
                   "freeze_extra_modules", "oft_rank", "oft_block_size", "oft_target", "module_dropout",
                   "pref_beta", "pref_loss", "pref_ftx", "simpo_gamma", "pref_bco_weight",
                   "ld_alpha",
                   "kto_chosen_weight", "kto_rejected_weight"),
    "training": ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                 "lr_scheduler_type", "warmup_steps", "warmup_ratio", "weight_decay", "optim", "adam_beta1",
                 "adam_beta2", "adam_epsilon", "max_grad_norm", "seed", "data_seed", "bf16", "fp16"),
}


def prepare_output_dir(cfg: RunConfig) -> str | None:
    """Check and tidy `output_dir` for a training run; returns the checkpoint to resume, or None."""
    args = cfg.training
    if not args.do_train:
        return None
    output_dir = Path(args.output_dir)
    sources = check_output_dir(cfg)
    if is_main_process():  # one process tidies the folder; the others only read it
        finish_interrupted_save(output_dir)
        if args.overwrite_output_dir and not args.resume_from_checkpoint:
            _remove_old_checkpoints(output_dir, {**sources, "current directory": str(Path.cwd())})
    return detect_resume(args)


def check_output_dir(cfg: RunConfig) -> dict[str, str]:
    """Refuse an output_dir the run cannot use (a file, not writable, a folder it trains from), touching
    nothing; returns the local folders the run reads ({what: path})."""
    output_dir = Path(cfg.training.output_dir)
    _check_writable_folder(output_dir)
    sources = _training_sources(cfg)
    for what, path in sources.items():
        if Path(path).resolve() == output_dir.resolve():
            raise ConfigError(f"output_dir: {output_dir} is the {what} this run trains from; the final save would "
                              "overwrite it. Choose another output_dir.")
    return sources


def _training_sources(cfg: RunConfig) -> dict[str, str]:
    """Local model/adapter folders this run reads ({what: path})."""
    from tuneforge.config.args import split_names

    names = {"model": cfg.model.model_name_or_path}
    for index, adapter in enumerate(split_names(cfg.model.adapter_name_or_path)):
        names[f"adapter #{index + 1}" if index else "adapter"] = adapter
    return {what: str(Path(p).expanduser()) for what, p in names.items() if p and Path(p).expanduser().exists()}


def _check_writable_folder(output_dir: Path) -> None:
    """A folder (existing, or creatable under its nearest existing parent) this process can write into;
    checked without creating it, so a run stopped by a later error leaves no empty folder behind."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir: {output_dir} is a file; expected a folder (new or existing) for the run")
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ConfigError(f"output_dir: cannot write into {output_dir} ({err.strerror or err}); choose a folder "
                          "you can write to") from None


def _remove_old_checkpoints(output_dir: Path, protected: dict[str, str]) -> None:
    """`overwrite_output_dir: true`: the previous run's checkpoints go (one log line), so that nothing
    resumes from them later -- except a checkpoint this run reads from, which is kept and named."""
    removed, kept = [], []
    for path in _checkpoint_folders(output_dir):
        reader = next((what for what, p in protected.items()
                       if Path(p).resolve() == path.resolve() or path.resolve() in Path(p).resolve().parents), None)
        if reader:
            kept.append(f"{path.name} (the {reader})")
            continue
        shutil.rmtree(path)
        removed.append(path.name)
    if removed:
        logger.warning("overwrite_output_dir: removed %d checkpoint(s) of the previous run in %s: %s",
                       len(removed), output_dir, ", ".join(removed))
    if kept:
        logger.warning("overwrite_output_dir: kept %s in %s: this run reads from it", ", ".join(kept), output_dir)


def _checkpoint_folders(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found)]


def read_checkpoint_state(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's trainer_state.json, or None when it is missing or unreadable (incomplete save)."""
    try:
        return json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def find_latest_checkpoint(output_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """Latest complete `checkpoint-N` folder and its trainer state, or None."""
    for path in reversed(_checkpoint_folders(Path(output_dir))):
        state = read_checkpoint_state(path)
        if state is not None:
            return path, state
        logger.warning("Skipping incomplete checkpoint %s (no readable trainer_state.json).", path)
    return None


def detect_resume(training_args: TrainingArguments, *, overwrite_output_dir: bool | None = None) -> str | None:
    """The checkpoint to pass to `trainer.train(resume_from_checkpoint=...)`, or None to start fresh.

    `overwrite_output_dir` defaults to `training_args.overwrite_output_dir` (tuneforge's
    TrainingArguments keep LF's key; transformers 5 dropped it).
    """
    if overwrite_output_dir is None:
        overwrite_output_dir = training_args.overwrite_output_dir
    explicit = training_args.resume_from_checkpoint
    if explicit:
        return str(explicit)
    if not training_args.do_train or overwrite_output_dir:
        return None
    output_dir = Path(training_args.output_dir)
    if not output_dir.is_dir():
        return None

    latest = find_latest_checkpoint(output_dir)
    if latest is not None:
        checkpoint, state = latest
        step, total = state.get("global_step", "?"), state.get("max_steps", "?")
        logger.warning(
            "Resuming from checkpoint %s (step %s of %s) — set overwrite_output_dir: true to start over.",
            checkpoint, step, total,
        )  # fmt: skip
        return str(checkpoint)

    saved = [name for name in SAVED_MODEL_FILES if (output_dir / name).is_file()]
    if saved:
        raise ConfigError(
            f"Output directory already exists and is not empty: output_dir {output_dir} holds a trained "
            f"model ({', '.join(saved)}) and no checkpoint-* folder to resume from. Set "
            "`overwrite_output_dir: true` to train again into it, or choose another output_dir."
        )
    return None


# ---- is the checkpoint this run's? ---------------------------------------------------------------
def run_fingerprint(cfg, train_dataset) -> dict[str, Any]:
    """What `tuneforge_run.json` records: the run-defining settings and the training data's fingerprint."""
    from tuneforge.data.fingerprint import dataset_fingerprint

    settings = {}
    for section, keys in RUN_DEFINING_KEYS.items():
        values = getattr(cfg, section)
        for key in keys:
            if hasattr(values, key):
                value = getattr(values, key)
                settings[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
    if not hasattr(train_dataset, "__len__"):  # streaming: the data's identity (data/streaming.py), not its samples
        return {"settings": settings, "train_samples": None, "data": getattr(train_dataset, "tuneforge_fingerprint", None)}
    return {"settings": settings, "train_samples": len(train_dataset), "data": dataset_fingerprint(train_dataset)}


def write_run_file(checkpoint: Path, fingerprint: dict[str, Any]) -> None:
    (checkpoint / RUN_FILE).write_text(json.dumps(fingerprint, indent=2, ensure_ascii=False), encoding="utf-8")


def check_resume_matches(checkpoint: str | Path, fingerprint: dict[str, Any], *, explicit: bool) -> None:
    """Refuse (auto-resume) or warn (an explicit `resume_from_checkpoint`) when the checkpoint is another run's."""
    try:
        saved = json.loads((Path(checkpoint) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning("cannot check that %s belongs to this run (no readable %s: written by another tool or "
                       "an older tuneforge); resuming it as asked", checkpoint, RUN_FILE)
        return
    differences = []
    old, new = saved.get("settings", {}), fingerprint["settings"]
    for key in new:
        if key in old and old[key] != new[key]:
            differences.append(f"{key}: {old[key]!r} in the checkpoint, {new[key]!r} now")
    if saved.get("data") != fingerprint["data"]:
        differences.append(f"training data: {saved.get('train_samples', '?')} encoded samples (fingerprint "
                           f"{saved.get('data')}) in the checkpoint, {fingerprint['train_samples']} (fingerprint "
                           f"{fingerprint['data']}) now")
    if not differences:
        return
    message = (f"checkpoint {checkpoint} was trained by a different run: " + "; ".join(differences) + ". ")
    if explicit:
        logger.warning(message + "Resuming it anyway, as resume_from_checkpoint asks.")
        return
    raise ConfigError(message + "Set `overwrite_output_dir: true` to start over (its checkpoints are removed), "
                      "choose another output_dir, or undo the change to resume.")
