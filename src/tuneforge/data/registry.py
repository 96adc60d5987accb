"""`dataset_info.json` -> frozen :class:`DatasetSpec` objects, and where the files are.

LLaMA-Factory compatible, with one deliberate difference: a partial ``columns`` / ``tags`` object
keeps the defaults for the keys it does not list (LF resets them to ``None`` and then silently
drops every row).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence

from tuneforge.config.args import split_names
from tuneforge.config.lf_v1 import is_dataset_yaml
from tuneforge.config.validate_data import dataset_dir_candidates
from tuneforge.errors import DataError, NotSupportedError
from tuneforge.utils.env import env_enabled

DATASET_INFO = "dataset_info.json"
FORMATS = ("alpaca", "sharegpt", "openai")
UNSUPPORTED_COLUMNS = ("videos", "audios")  # refused; the `video_*` keys act on videos only (config/support.py)
# file extension -> reader kind (see loaders.py)
# UTF-8, with or without the byte order mark that Windows editors write at the start of a file
TEXT_ENCODING = "utf-8-sig"
FILE_TYPES = {"json": "json", "jsonl": "jsonl", "csv": "csv", "parquet": "parquet", "txt": "text", "arrow": "arrow"}
ENTRY_KEYS = (
    "file_name", "hf_hub_url", "ms_hub_url", "script_url", "formatting", "ranking", "subset", "split",
    "folder", "num_samples", "columns", "tags",
    "file_sha1", "revision",  # accepted LF keys: a checksum nobody verifies, a hub revision
    "om_hub_url",  # the Modelers (OpenMind) hub: with USE_OPENMIND_HUB=1 or without hf_hub_url (utils/other_hubs.py)
    "cloud_file_name",  # LF's s3/gcs files: not supported yet
)


@dataclass(frozen=True)
class Columns:
    """Which column of a row holds what. ``None`` = not read."""

    prompt: str | None = "instruction"
    query: str | None = "input"
    response: str | None = "output"
    history: str | None = None
    messages: str | None = "conversations"
    system: str | None = None
    tools: str | None = None
    images: str | None = None
    videos: str | None = None
    audios: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    kto_tag: str | None = None


@dataclass(frozen=True)
class Tags:
    """Keys and role names inside sharegpt/openai message objects."""

    role_tag: str = "from"
    content_tag: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    observation_tag: str = "observation"
    function_tag: str = "function_call"
    system_tag: str = "system"


# openai rows use OpenAI's own names; these are the defaults for `formatting: openai`.
OPENAI_COLUMNS = Columns(messages="messages")
OPENAI_TAGS = Tags("role", "content", "user", "assistant", "tool", "function_call", "system")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load_from: str = "file"  # file | hf_hub | ms_hub | om_hub | script
    file_name: str | None = None
    hf_hub_url: str | None = None
    ms_hub_url: str | None = None
    script_url: str | None = None
    om_hub_url: str | None = None
    formatting: str = "alpaca"
    ranking: bool = False
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    num_samples: int | None = None
    revision: str | None = None
    columns: Columns = field(default_factory=Columns)
    mapped_columns: tuple[str, ...] = ()  # `columns` keys the entry lists itself: their columns must exist
    tags: Tags = field(default_factory=Tags)
    dataset_dir: Path | None = None  # folder that `file_name` / `script_url` are relative to
    info_file: Path | None = None  # the dataset_info.json it came from (None for direct paths)

    @property
    def local_path(self) -> Path:
        """The file or folder a `file`/`script` dataset reads (absolute if dataset_dir is)."""
        target = self.file_name if self.load_from == "file" else self.script_url
        return Path(self.dataset_dir or ".") / str(target)

    @property
    def where(self) -> str:
        """Short description of where the entry is defined, for error messages."""
        if self.info_file:
            return f"dataset '{self.name}' in {self.info_file}"
        return f"dataset file '{self.name}'" if self.load_from == "file" else f"dataset '{self.name}'"


def resolve_dataset_dir(dataset_dir: str, config_dir: str | Path | None) -> Path:
    """`dataset_dir` relative to the working directory, then to the config file's folder."""
    candidates = dataset_dir_candidates(dataset_dir, config_dir)
    for path in candidates:
        if path.is_dir():
            return path
    files = [path for path in candidates if path.is_file()]
    if files:
        raise DataError(f"dataset_dir '{dataset_dir}' is a file ({files[0]}), not a folder. "
                        "Set `dataset_dir` to the folder that holds dataset_info.json.")
    raise DataError(
        f"dataset_dir '{dataset_dir}' not found. Tried: {', '.join(map(str, candidates))}. "
        "Set `dataset_dir` to the folder that holds dataset_info.json."
    )


def read_dataset_info(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding=TEXT_ENCODING)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    try:
        info = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} line {err.lineno} col {err.colno}: invalid JSON ({err.msg})") from err
    if not isinstance(info, dict):
        raise DataError(f"{path}: expected a JSON object mapping dataset names to entries, found {type(info).__name__}")
    return info


def _partial(defaults, overrides: Any, what: str, where: str, allowed: Sequence[str]):
    if not isinstance(overrides, dict):
        raise DataError(f"{where}: `{what}` must be an object, found {type(overrides).__name__}")
    unknown = [key for key in overrides if key not in allowed]
    if unknown:
        raise DataError(f"{where}: unknown key '{unknown[0]}' in `{what}`; expected one of {', '.join(allowed)}")
    for key, value in overrides.items():
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: `{what}.{key}` must be a string, found {value!r}")
    return replace(defaults, **overrides)


def parse_entry(name: str, entry: Any, dataset_dir: Path | None, info_file: Path | None) -> DatasetSpec:
    """One dataset_info.json entry -> DatasetSpec (all checks that need no file access)."""
    where = f"dataset '{name}' in {info_file}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, found {type(entry).__name__}")
    unknown = [key for key in entry if key not in ENTRY_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], ENTRY_KEYS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise DataError(f"{where}: unknown key '{unknown[0]}'{hint}; expected one of {', '.join(ENTRY_KEYS)}")

    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATS:
        raise DataError(f"{where}: formatting '{formatting}' is not one of {', '.join(FORMATS)}")
    num_samples = entry.get("num_samples")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise DataError(f"{where}: num_samples must be a positive integer, found {num_samples!r}")
    ranking = entry.get("ranking", False)
    if not isinstance(ranking, bool):
        raise DataError(f"{where}: ranking must be true or false, found {ranking!r}")

    if "cloud_file_name" in entry:
        raise NotSupportedError(f"{where}: `cloud_file_name` is not supported yet; use file_name or hf_hub_url")
    # LF's precedence: a hub url wins over script_url, which wins over file_name; ModelScope, then OpenMind, when
    # switched on (USE_MODELSCOPE_HUB / USE_OPENMIND_HUB) or the entry has no hf_hub_url.
    use_ms, use_om = env_enabled("USE_MODELSCOPE_HUB"), env_enabled("USE_OPENMIND_HUB")
    if "hf_hub_url" in entry or "ms_hub_url" in entry or "om_hub_url" in entry:
        if "ms_hub_url" in entry and (use_ms or "hf_hub_url" not in entry):
            load_from = "ms_hub"
        elif "om_hub_url" in entry and (use_om or "hf_hub_url" not in entry):
            load_from = "om_hub"
        else:
            load_from = "hf_hub"
    elif "script_url" in entry:
        load_from = "script"
    elif "file_name" in entry:
        load_from = "file"
    else:
        raise DataError(f"{where}: needs one of file_name, hf_hub_url, ms_hub_url or script_url")

    columns_default = OPENAI_COLUMNS if formatting == "openai" else Columns()
    tags_default = OPENAI_TAGS if formatting == "openai" else Tags()
    columns = _partial(columns_default, entry.get("columns", {}), "columns", where, [f.name for f in fields(Columns)])
    mapped_columns = tuple(key for key, column in entry.get("columns", {}).items() if column)
    tags = _partial(tags_default, entry.get("tags", {}), "tags", where, [f.name for f in fields(Tags)])
    refused = [name for name in UNSUPPORTED_COLUMNS if getattr(columns, name)]
    if refused:
        raise NotSupportedError(f"{where}: {'/'.join(refused)} columns are not supported yet (images are, for the "
                                "Qwen-VL family: an `images` column)")

    return DatasetSpec(
        name=name,
        load_from=load_from,
        file_name=entry.get("file_name"),
        hf_hub_url=entry.get("hf_hub_url"),
        ms_hub_url=entry.get("ms_hub_url"),
        script_url=entry.get("script_url"),
        om_hub_url=entry.get("om_hub_url"),
        formatting=formatting,
        ranking=ranking,
        subset=entry.get("subset"),
        split=entry.get("split", "train"),
        folder=entry.get("folder"),
        num_samples=num_samples,
        revision=entry.get("revision"),
        columns=columns,
        mapped_columns=mapped_columns,
        tags=tags,
        dataset_dir=dataset_dir,
        info_file=info_file,
    )


def _find_direct_file(name: str, search_dirs: Sequence[Path]) -> Path | None:
    if Path(name).suffix.lstrip(".").lower() not in FILE_TYPES:
        return None
    for base in search_dirs:
        path = Path(name) if Path(name).is_absolute() else base / name
        if path.is_file():
            return path
    return None


def spec_for_file(path: Path, first_row: dict[str, Any] | None, name: str | None = None) -> DatasetSpec:
    """A DatasetSpec for a data file named directly in `dataset:`; format from its first row."""
    spec = DatasetSpec(name=name or str(path), file_name=path.name, dataset_dir=path.parent)
    if path.suffix.lower() == ".txt":
        return replace(spec, columns=Columns(prompt="text"))
    keys = set(first_row or {})
    if "messages" in keys:
        return replace(spec, formatting="openai", columns=replace(OPENAI_COLUMNS, **_optional(keys)), tags=OPENAI_TAGS)
    if "conversations" in keys:
        return replace(spec, formatting="sharegpt", columns=Columns(**_optional(keys)))
    if "instruction" in keys or "output" in keys:
        ranking = {"chosen", "rejected"} <= keys
        return replace(spec, ranking=ranking, columns=Columns(history="history" if "history" in keys else None, **_optional(keys)))
    if "text" in keys:
        return replace(spec, columns=Columns(prompt="text"))
    raise DataError(
        f"{path}: cannot tell the data format from the first row (keys: {sorted(keys)}). Expected alpaca "
        "('instruction'/'output'), sharegpt ('conversations'), openai ('messages') or pretraining ('text') "
        "rows, or register the file in dataset_info.json with its `columns`."
    )


def _optional(keys: set[str]) -> dict[str, str]:
    """Optional columns that a directly named file uses under their usual names."""
    names = ("system", "tools", "chosen", "rejected", "kto_tag")
    return {name: name for name in names if name in keys}


def load_dataset_specs(
    names: Sequence[str] | str | None, dataset_dir: str, config_dir: str | Path | None
) -> list[DatasetSpec]:
    """Resolve every name in `dataset:` to a DatasetSpec.

    A name is looked up in `<dataset_dir>/dataset_info.json` first (LF behaviour); a name that is not
    registered but is a path to a json/jsonl/csv/parquet/txt file (relative to the working directory,
    the config file's folder or dataset_dir) is used directly, its format read from its first row.
    `dataset_dir: ONLINE` makes every name a Hugging Face Hub dataset id (LF); a `.yaml` dataset_dir is a LF v1
    dataset YAML (what a v1 config's `train_dataset` becomes, data/v1_datasets.py).
    """
    from tuneforge.data.loaders import first_row  # local import: loaders imports this module

    names = split_names(names)
    if not names:
        return []
    if dataset_dir == "ONLINE":  # LF: every name is a hub dataset id
        return [DatasetSpec(name=n, load_from="hf_hub", hf_hub_url=n) for n in names]
    remote = dataset_dir.startswith("REMOTE:")  # LF: dataset_info.json of a Hub dataset repository

    search_dirs = [Path.cwd()] + ([Path(config_dir)] if config_dir is not None else [])
    direct = {n: _find_direct_file(n, search_dirs) for n in names}
    registered = [n for n in names if direct[n] is None]
    base, info, info_file = None, {}, None
    if registered and remote:
        from tuneforge.data.remote_info import fetch_remote_info

        info_file, info = fetch_remote_info(dataset_dir, registered, read_dataset_info)
        base = info_file.parent
        search_dirs.append(base)
    elif registered and is_dataset_yaml(dataset_dir):  # a LF v1 config's train_dataset
        from tuneforge.data.v1_datasets import read_v1_dataset_yaml

        info_file = Path(dataset_dir).resolve()
        info, base = read_v1_dataset_yaml(info_file), Path.cwd()
    elif registered:
        try:
            base = resolve_dataset_dir(dataset_dir, config_dir)
        except DataError:
            missing_files = [n for n in registered if Path(n).suffix.lstrip(".").lower() in FILE_TYPES]
            if missing_files:  # the user meant a file path: say that file is missing
                _raise_missing_file(missing_files[0], search_dirs)
            raise
        info_file = base / DATASET_INFO
        if not info_file.is_file():
            raise DataError(f"{info_file} not found; it is needed for dataset(s) {', '.join(registered)}")
        info = read_dataset_info(info_file)
        search_dirs.append(base)

    specs = []
    for name in names:
        if name in info:
            specs.append(parse_entry(name, info[name], base, info_file))
            continue
        path = direct[name] or _find_direct_file(name, search_dirs)
        if path is not None:
            specs.append(spec_for_file(path, first_row(path), name))
            continue
        if Path(name).suffix.lstrip(".").lower() in FILE_TYPES:
            _raise_missing_file(name, search_dirs)
        close = difflib.get_close_matches(name, list(info), n=5, cutoff=0.5)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise DataError(
            f"dataset '{name}' is not defined in {info_file}.{hint} A dataset is either a name in that file "
            "or a path to a .json/.jsonl/.csv/.parquet/.txt file."
        )
    return specs


def _raise_missing_file(name: str, search_dirs: Sequence[Path]) -> None:
    tried = [str(Path(name) if Path(name).is_absolute() else d / name) for d in search_dirs]
    raise DataError(f"dataset file '{name}' not found. Tried: {', '.join(dict.fromkeys(tried))}")
