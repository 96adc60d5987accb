"""Writing folders without ever deleting what tuneforge did not write.

Two shapes of write:

* a folder of its own (`export_dir`): built complete in a staging folder next to it, then put in place
  with one rename (`replace_folder`). What it replaces must pass `check_replaceable`: it does not
  exist, is empty, or holds only a previous tuneforge write of the same kind (the marker file
  `MARKER` lists the files that write made), and it is not, and does not contain, a protected path
  (the current directory, the model, an adapter, the output folder).
* files into a folder that holds other things (the final save of a training run into `output_dir`):
  written complete into `<folder>/.tuneforge-saving`, committed by one rename to
  `<folder>/.tuneforge-saved`, then moved into place. A crash before the commit leaves the old files
  untouched (the staging folder is removed next time, with a log line); a crash after it is rolled
  forward by `finish_interrupted_save`, which every reader of such a folder calls first.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from tuneforge.errors import ConfigError

logger = logging.getLogger("tuneforge")

MARKER = ".tuneforge_export.json"
SAVING_DIRNAME = ".tuneforge-saving"
SAVED_DIRNAME = ".tuneforge-saved"
_STAGING_INFIX = ".tuneforge-staging-"
_OLD_INFIX = ".tuneforge-old-"
_LISTED = 5  # entries named in a refusal
# Files of a saved model/adapter that a new save must not leave stale next to its own.
_WEIGHT_FILE_PREFIXES = ("model", "pytorch_model", "adapter_model")
_WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".index.json")


def _files_below(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _describe_entries(folder: Path, names: Iterable[str] | None = None) -> str:
    names = sorted(names) if names is not None else sorted(
        p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    shown = ", ".join(names[:_LISTED])
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return f"{shown}{more} ({len(names)} entr{'y' if len(names) == 1 else 'ies'})"


def check_not_protected(target: Path, key: str, protected: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse when `target` is, or contains, one of the protected paths (`{what: path}`)."""
    target = Path(target).expanduser().resolve()
    for what, path in protected.items():
        if not path:
            continue
        candidate = Path(path).expanduser()
        if not candidate.exists():
            continue
        candidate = candidate.resolve()
        if candidate == target or target in candidate.parents:
            relation = "is" if candidate == target else "contains"
            raise ConfigError(f"{key}: {target} {relation} the {what} ({candidate}); writing there would replace it. "
                              f"Choose a new or empty folder for {key}.")


def check_replaceable(target: Path, kind: str, key: str,
                      protected: Mapping[str, str | os.PathLike | None] = {}) -> None:  # noqa: B006 (read only)
    """Raise ConfigError unless `target` may be replaced by a new `kind` write (see the module docstring)."""
    target = Path(target).expanduser().resolve()
    check_not_protected(target, key, protected)
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir():
        raise ConfigError(f"{key}: {target} is a file, not a folder; choose a new or empty folder for {key}")
    if not any(target.iterdir()):
        return
    marker = read_marker(target)
    if marker is None:
        raise ConfigError(f"{key}: {target} is not empty and is not a previous tuneforge {kind}: it holds "
                          f"{_describe_entries(target)}. Nothing was written; choose a new or empty folder.")
    if marker.get("kind") != kind:
        raise ConfigError(f"{key}: {target} holds a tuneforge {marker.get('kind', '?')}, not a {kind}; "
                          "choose a new or empty folder.")
    unknown = set(_files_below(target)) - set(marker.get("files", ())) - {MARKER}
    if unknown:
        raise ConfigError(f"{key}: {target} holds a previous tuneforge {kind} plus files it did not write: "
                          f"{_describe_entries(target, unknown)}. Move them away or choose another folder.")


def read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def write_marker(folder: Path, kind: str, **extra) -> None:
    """Record in `folder` that tuneforge wrote it, and which files (call last, when the folder is complete)."""
    folder = Path(folder)
    payload = {"kind": kind, "files": [f for f in _files_below(folder) if f != MARKER], **extra}
    (folder / MARKER).write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")


def make_staging(target: Path) -> Path:
    """A new, uniquely named staging folder next to `target` (leftovers of crashed writes cleaned first)."""
    target = Path(target).expanduser().resolve()
    clean_leftovers(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}{_STAGING_INFIX}", dir=target.parent))


def clean_leftovers(target: Path) -> None:
    """Staging folders of a crashed write are removed; a replaced folder left beside a missing target is put back."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for path in sorted(target.parent.glob(f".{target.name}{_STAGING_INFIX}*")):
        shutil.rmtree(path, ignore_errors=True)
        logger.warning("removed %s, the staging folder of an interrupted write of %s", path, target)
    for path in sorted(target.parent.glob(f".{target.name}{_OLD_INFIX}*")):
        if not target.exists():
            os.rename(path, target)
            logger.warning("restored %s from %s (a replacement was interrupted)", target, path)
        else:
            shutil.rmtree(path, ignore_errors=True)
            logger.warning("removed %s, the replaced copy of %s left by an interrupted write", path, target)


def replace_folder(staging: Path, target: Path) -> None:
    """Put the complete `staging` folder at `target` with one rename; the old target goes only afterwards.

    The caller has checked with `check_replaceable` that the old target may go.
    """
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}{_OLD_INFIX}{os.getpid()}")
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---- files into a shared folder (final save of a training run) ----------------------------------
def commit_files(folder: Path) -> None:
    """Commit the complete `<folder>/.tuneforge-saving` with one rename, then move its files into `folder`."""
    folder = Path(folder)
    os.rename(folder / SAVING_DIRNAME, folder / SAVED_DIRNAME)  # the commit point
    _roll_forward(folder)


def finish_interrupted_save(folder: Path) -> None:
    """Finish a committed save into `folder`, or drop an uncommitted one; one log line each."""
    folder = Path(folder)
    if (folder / SAVED_DIRNAME).is_dir():
        logger.warning("finishing an interrupted save into %s (its files were complete)", folder)
        _roll_forward(folder)
    if (folder / SAVING_DIRNAME).exists():
        shutil.rmtree(folder / SAVING_DIRNAME, ignore_errors=True)
        logger.warning("removed %s, the staging folder of a save that was interrupted before it was complete; "
                       "the files it would have replaced are intact", folder / SAVING_DIRNAME)


def _is_weight_file(name: str, prefix: str) -> bool:
    return name.startswith(prefix) and name.endswith(_WEIGHT_FILE_SUFFIXES)


def _roll_forward(folder: Path) -> None:
    """Move the committed files into `folder`; weight files of a kind the save wrote that it did not write
    (old shards `model-0000x-of-0000y.safetensors` next to a new `model.safetensors`) are stale: removed."""
    saved = folder / SAVED_DIRNAME
    new_names = {p.name for p in saved.iterdir()}
    for path in saved.iterdir():
        destination = folder / path.name
        if path.is_dir() and destination.is_dir():
            shutil.rmtree(destination)
        try:
            os.replace(path, destination)
        except FileNotFoundError:  # another reader finished this file first
            pass
    kinds = {p for p in _WEIGHT_FILE_PREFIXES for name in new_names if _is_weight_file(name, p)}
    for old in folder.iterdir():
        if old.is_file() and old.name not in new_names and any(_is_weight_file(old.name, p) for p in kinds):
            old.unlink(missing_ok=True)
    shutil.rmtree(saved, ignore_errors=True)
