"""A LLaMA-Factory v1 dataset YAML (`train_dataset: data/v1_sft_demo.yaml`) as dataset_info.json entries.

    identity:                       -> {"file_name": "data/identity.json", "formatting": "alpaca"}
      path: data/identity.json
      source: local
      converter: alpaca
    alpaca_en_demo:                 -> {..., "num_samples": 500}
      path: data/alpaca_en_demo.json
      source: local
      converter: alpaca
      size: 500

v1 reads `path` relative to the working folder (not the YAML's), `source: hf_hub` (the default) as a Hub dataset
id, `converter` alpaca or sharegpt with LF's default columns, and `size` as a number of rows drawn at random
(v1 draws with replacement; `num_samples` draws without, then tops up with replacement: the same rows when
`size` is at most the dataset's length only in distribution).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.config.lf_v1 import read_dataset_yaml
from tuneforge.errors import DataError, NotSupportedError

_ENTRY_KEYS = ("path", "source", "split", "converter", "size", "weight", "streaming")
_CONVERTERS = {"alpaca": "alpaca", "sharegpt": "sharegpt"}


def read_v1_dataset_yaml(path: Path) -> dict[str, dict[str, Any]]:
    """name -> a dataset_info.json entry, for every dataset of the YAML (file paths made absolute from the cwd)."""
    entries = read_dataset_yaml(path)
    return {str(name): _entry(str(name), entry, path) for name, entry in entries.items()}


def _entry(name: str, entry: Any, path: Path) -> dict[str, Any]:
    where = f"dataset '{name}' in {path}"
    if not isinstance(entry, dict) or "path" not in entry:
        raise DataError(f"{where}: expected a mapping with `path` (and `converter`, `source`, `split`, `size`)")
    unknown = sorted(set(entry) - set(_ENTRY_KEYS))
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(unknown)}; v1's keys: {', '.join(_ENTRY_KEYS)}")
    converter = entry.get("converter")
    if converter not in _CONVERTERS:
        raise NotSupportedError(f"{where}: `converter: {converter}` is not supported yet (rows in v1's own message "
                                f"format, or `pair`); supported: {', '.join(_CONVERTERS)}")
    if entry.get("streaming"):
        raise NotSupportedError(f"{where}: `streaming: true` (LLaMA-Factory v1 does not implement it either)")
    if float(entry.get("weight", 1.0)) != 1.0:
        raise NotSupportedError(f"{where}: `weight: {entry['weight']}` (resampling a dataset by a factor) is not "
                                f"supported yet; use `size`")
    source = entry.get("source", "hf_hub")
    out: dict[str, Any] = {"formatting": _CONVERTERS[converter], "split": entry.get("split", "train")}
    if source == "local":
        out["file_name"] = str((Path.cwd() / str(entry["path"])).resolve())
    elif source == "hf_hub":
        out["hf_hub_url"] = str(entry["path"])
    else:
        raise DataError(f"{where}: `source: {source}` is not one of local, hf_hub (v1 has no loader for others)")
    if entry.get("size") is not None:
        out["num_samples"] = int(entry["size"])
    return out
