"""A save that fails because the disk is full: one message instead of a writer's traceback, no half checkpoint.

torch.save and safetensors write through C++ streams, so a full disk reaches Python as a RuntimeError such as
`[enforce fail at inline_container.cc:672] . unexpected pos 672507072 vs 672506964` (the errno is lost). Such a
text counts as a full disk only when the disk holding output_dir is nearly full; an OSError with ENOSPC or EDQUOT
always does. The checkpoint folder of the step that failed, when incomplete (resume.py's rule: no readable
trainer_state.json, which a resume skips anyway), is removed to give its space back; complete checkpoints are never
touched.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from tuneforge.errors import TuneforgeError

WRITER_FAILURE_TEXTS = ("unexpected pos", "iostream error", "file write failed", "No space left on device",
                        "Disk quota exceeded")
NEARLY_FULL_BYTES = 512 * 2**20


class DiskFullError(TuneforgeError):
    pass


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the disk holding `path` (its nearest existing folder); None where that cannot be read."""
    folder = Path(path).resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def is_disk_full(err: BaseException, free: int | None) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return any(part in text for part in WRITER_FAILURE_TEXTS) and free is not None and free < NEARLY_FULL_BYTES


def disk_full_error(err: BaseException, output_dir: str | Path, step: int, what: str) -> DiskFullError | None:
    """The message for `err` if it is a full disk while saving `what` at `step` (None otherwise); removes that
    step's incomplete checkpoint folder."""
    free = free_bytes(output_dir)
    if not is_disk_full(err, free):
        return None
    from tuneforge.train.resume import read_checkpoint_state

    partial = Path(output_dir) / f"checkpoint-{step}"
    removed = ""
    if partial.is_dir() and read_checkpoint_state(partial) is None:  # complete checkpoints are kept
        shutil.rmtree(partial, ignore_errors=True)
        removed = f" The incomplete {partial.name} was removed; the checkpoints saved before it are intact."
    space = f"{free / 2**20:.0f} MiB free" if free is not None else "free space unknown"
    return DiskFullError(
        f"could not write {what} at step {step} in {output_dir}: the disk is full ({space}).{removed} Free disk "
        "space, or write less: `save_only_model: true` (no optimizer state, about a third of a full fine-tuning "
        "checkpoint), `save_total_limit: N` (keep the last N checkpoints), or another output_dir; then run the same "
        "command again to resume from the last checkpoint.")
