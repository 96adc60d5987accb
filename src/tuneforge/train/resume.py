"""Automatic resume from the latest checkpoint in `output_dir` (LLaMA-Factory's rule).

With `do_train`, an existing `output_dir`, no `overwrite_output_dir` and no explicit
`resume_from_checkpoint`, the latest *complete* `checkpoint-N` is resumed and the log says so in
one line. A checkpoint is complete when its `trainer_state.json` was written -- the Trainer writes
it last, so a crash mid-save leaves a folder without it, which is skipped.
An `output_dir` that holds a saved model but no checkpoint is refused (as LF does): training
there would overwrite that model.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError

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


def read_checkpoint_state(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's trainer_state.json, or None when it is missing or unreadable (incomplete save)."""
    try:
        return json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def find_latest_checkpoint(output_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """Latest complete `checkpoint-N` folder and its trainer state, or None."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    candidates = []
    for path in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            candidates.append((int(match.group(1)), path))
    for step, path in sorted(candidates, reverse=True):
        state = read_checkpoint_state(path)
        if state is not None:
            return path, state
        logger.warning("Skipping incomplete checkpoint %s (no readable trainer_state.json).", path)
    return None


def detect_resume(training_args: Any, *, overwrite_output_dir: bool | None = None) -> str | None:
    """The checkpoint to pass to `trainer.train(resume_from_checkpoint=...)`, or None to start fresh.

    `overwrite_output_dir` defaults to `training_args.overwrite_output_dir` (tuneforge's
    TrainingArguments keep LF's key; transformers 5 dropped it).
    """
    if overwrite_output_dir is None:
        overwrite_output_dir = bool(getattr(training_args, "overwrite_output_dir", False))
    explicit = getattr(training_args, "resume_from_checkpoint", None)
    if explicit:
        return str(explicit)
    if not getattr(training_args, "do_train", True) or overwrite_output_dir:
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
