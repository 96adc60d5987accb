"""Read dataset rows from local files / folders or the hubs; every row keeps where it came from."""

from __future__ import annotations

import codecs
import csv
import json
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

from tuneforge.data.registry import FILE_TYPES, TEXT_ENCODING, DatasetSpec
from tuneforge.errors import DataError, NotSupportedError


@dataclass(frozen=True)
class RawRow:
    values: Any  # normally a dict of column -> value
    source: str  # "data/foo.json row 3", "data/foo.jsonl line 7"


def display_path(path: Path) -> str:
    """Path relative to the working directory when it is inside it (shorter messages)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _file_type(path: Path) -> str:
    ext = path.suffix.lstrip(".").lower()
    if ext not in FILE_TYPES:
        raise DataError(f"{path}: unsupported file type '.{ext}'; expected one of "
                        + ", ".join("." + e for e in FILE_TYPES))
    return FILE_TYPES[ext]


def _json_error(path: Path, err: json.JSONDecodeError, line_offset: int = 0,
                first_line_column_offset: int = 0) -> DataError:
    column = err.colno + (first_line_column_offset if err.lineno == 1 else 0)
    return DataError(f"{display_path(path)} line {err.lineno + line_offset} col {column}: invalid JSON ({err.msg})")


def _iter_json(path: Path) -> Iterator[RawRow]:
    """A `.json` file holds a list of rows (read a piece at a time: `_iter_json_list`), or (like HF's json loader
    accepts) JSON lines, or one object whose only value is the list."""
    if _first_character(path) == "[":
        yield from _iter_json_list(path)
        return
    text = path.read_text(encoding=TEXT_ENCODING)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several top-level values: JSON lines in a .json file
            yield from _iter_jsonl(path, text)
            return
        raise _json_error(path, err) from err
    if isinstance(data, dict):
        # a single object of rows is not LF's layout; one common variant is {"data": [...]}
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) == 1 and len(data) == 1:
            data = data[lists[0]]
        else:
            raise DataError(f"{display_path(path)}: expected a JSON list of rows (or JSON lines), found an object "
                            f"with keys {list(data)[:8]}")
    if not isinstance(data, list):
        raise DataError(f"{display_path(path)}: expected a JSON list of rows, found {type(data).__name__}")
    shown = display_path(path)
    for i, row in enumerate(data, start=1):
        yield RawRow(row, f"{shown} row {i}")


JSON_READ_BYTES = 1 << 20  # a JSON list is decoded from pieces of this many bytes
NUMBER_LOOKAHEAD = 64  # characters after a decoded value that prove it complete (no number is that long)


def _first_character(path: Path) -> str:
    """The first non-blank character of a UTF-8 file ("" when there is none in its first piece)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    return head.decode("utf-8-sig", errors="ignore").lstrip()[:1]


class _JsonListReader:
    """The rows of a file holding one JSON list, decoded row by row from a text buffer refilled a piece at a
    time: a large file is never one string (a 1 GB file with Chinese text is a 2 GB `str`). What was dropped from
    the buffer's start is counted, so errors name the file's own line and column, as `json.loads` would."""

    def __init__(self, path: Path, f):
        self.path, self.file = path, f
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.json = json.JSONDecoder()
        self.buffer, self.pos, self.bytes_read, self.eof = "", 0, 0, False
        self.lines_before = self.columns_before = 0  # dropped: whole lines, characters of the buffer's first line

    def fill(self) -> bool:
        """Append the next piece of the file; False at its end."""
        if self.eof:
            return False
        raw = self.file.read(JSON_READ_BYTES)
        try:
            self.buffer += self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as err:  # err.object: the bytes the decoder still held, then this piece
            at = self.bytes_read - (len(err.object) - len(raw)) + err.start
            raise DataError(f"{display_path(self.path)}: not UTF-8 text ({err.reason} at byte {at})") from None
        self.bytes_read += len(raw)
        self.eof = not raw
        return True

    def next_character(self) -> str:
        """The next non-blank character ("" at the end of the file), without consuming it."""
        while True:
            while self.pos < len(self.buffer) and self.buffer[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buffer) or not self.fill():
                return self.buffer[self.pos:self.pos + 1]

    def error(self, message: str) -> DataError:
        return self.failure(json.JSONDecodeError(message, self.buffer, self.pos))

    def failure(self, err: json.JSONDecodeError) -> DataError:
        return _json_error(self.path, err, self.lines_before, self.columns_before)

    def value(self):
        """Decode the value at the current position; one that ends near the end of the buffer is decoded again
        once more text is in (a number cut by the piece's end, "-7." of "-7.5e3", would decode as -7). A value
        that does not decode is tried again with more text until the file's end (it may be cut by a piece's end),
        so a malformed row is reported with the rest of the file in the buffer."""
        while True:
            try:
                value, end = self.json.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as err:
                if self.fill():
                    continue
                raise self.failure(err) from None
            if end + NUMBER_LOOKAHEAD <= len(self.buffer) or not self.fill():
                self.pos = end
                return value

    def drop_read(self) -> None:
        """Forget the text before the current position once it is long (keeps the buffer about one piece)."""
        if self.pos < JSON_READ_BYTES:
            return
        newlines = self.buffer.count("\n", 0, self.pos)
        if newlines:
            self.lines_before += newlines
            self.columns_before = self.pos - self.buffer.rfind("\n", 0, self.pos) - 1
        else:
            self.columns_before += self.pos
        self.buffer, self.pos = self.buffer[self.pos:], 0


def _iter_json_list(path: Path) -> Iterator[RawRow]:
    shown = display_path(path)
    with open(path, "rb") as f:
        reader = _JsonListReader(path, f)
        reader.next_character()
        reader.pos += 1  # the "["
        number, after_comma = 0, False
        while True:
            character = reader.next_character()
            if character == "]" and number == 0 or character == "":
                break
            number += 1
            yield RawRow(reader.value(), f"{shown} row {number}")
            reader.drop_read()
            after_comma = reader.next_character() == ","
            if not after_comma:
                break
            reader.pos += 1
        if reader.next_character() != "]":
            raise reader.error("Expecting ',' delimiter" if number and not after_comma else "Expecting value")
        reader.pos += 1
        if reader.next_character():
            raise reader.error("Extra data after the list of rows")


def _iter_jsonl(path: Path, text: str | None = None) -> Iterator[RawRow]:
    """One row per line ("\n"; a raw U+2028 inside a JSON string is text, not a line end); a file is read a line
    at a time, so a large one is never one string in memory."""
    shown = display_path(path)
    lines = enumerate(text.split("\n"), start=1) if text is not None else _file_lines(path)
    for number, line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise _json_error(path, err, line_offset=number - 1) from err
        yield RawRow(row, f"{shown} line {number}")


def _file_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a UTF-8 file (a BOM at its start dropped, as `utf-8-sig` does)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{display_path(path)} line {number}: not UTF-8 text ({err.reason} at byte "
                                f"{err.start} of the line)") from None


def _iter_csv(path: Path) -> Iterator[RawRow]:
    shown = display_path(path)
    with open(path, newline="", encoding=TEXT_ENCODING) as f:
        for i, row in enumerate(csv.DictReader(f), start=1):
            yield RawRow(dict(row), f"{shown} row {i}")


def _iter_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    shown = display_path(path)
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a broken file
        raise DataError(f"{shown}: cannot read parquet file ({err})") from err
    for i, row in enumerate(table.to_pylist(), start=1):
        yield RawRow(row, f"{shown} row {i}")


def _iter_arrow(path: Path) -> Iterator[RawRow]:
    from datasets import Dataset

    shown = display_path(path)
    for i, row in enumerate(Dataset.from_file(str(path)), start=1):
        yield RawRow(row, f"{shown} row {i}")


def _iter_text(path: Path) -> Iterator[RawRow]:
    """One sample per line in column `text`; blank lines separate nothing and are skipped."""
    shown = display_path(path)
    with open(path, encoding=TEXT_ENCODING) as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if line.strip():
                yield RawRow({"text": line}, f"{shown} line {number}")


_READERS = {"json": _iter_json, "jsonl": _iter_jsonl, "csv": _iter_csv, "parquet": _iter_parquet,
            "text": _iter_text, "arrow": _iter_arrow}


def _files_of(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        kinds = {p.suffix.lower() for p in files}
        if not files:
            raise DataError(f"dataset folder {display_path(path)} has no files")
        if len(kinds) > 1:
            raise DataError(f"dataset folder {display_path(path)} mixes file types {sorted(kinds)}; "
                            "all files of a folder dataset must have the same type")
        return files
    raise DataError(f"dataset file {display_path(path)} not found")


def iter_local_rows(path: Path) -> Iterator[RawRow]:
    for file in _files_of(Path(path)):
        try:
            yield from _READERS[_file_type(file)](file)
        except UnicodeDecodeError as err:
            raise DataError(f"{display_path(file)}: not UTF-8 text ({err.reason} at byte {err.start})") from err


def first_row(path: Path) -> Any:
    """The first row of a local file or folder (for detecting its format)."""
    row = next(islice(iter_local_rows(path), 1), None)
    return None if row is None else row.values


# --------------------------------------------------------------------------------------- hubs

def _hub_error(spec: DatasetSpec, hub: str, url: str, err: Exception) -> DataError:
    from tuneforge.data.remote_info import is_network_error

    text = f"{type(err).__name__}: {err}"
    # datasets raises ConnectionError both when offline mode is on and when the host is unreachable
    if is_network_error(err):
        return DataError(
            f"could not download dataset {spec.name} from the {hub} ({url}): no network access. "
            "Download it elsewhere and point `file_name` to the local copy."
        )
    return DataError(f"could not load dataset {spec.name} from the {hub} ({url}): {text}")


def _rows_of(dataset, label: str) -> Iterator[RawRow]:
    for i, row in enumerate(dataset, start=1):
        yield RawRow(row, f"{label} row {i}")


def iter_hub_rows(spec: DatasetSpec) -> Iterator[RawRow]:
    if spec.load_from in ("ms_hub", "om_hub"):  # the optional clients (utils/other_hubs.py)
        from tuneforge.utils.other_hubs import HUBS, load_hub_dataset

        url = spec.ms_hub_url if spec.load_from == "ms_hub" else spec.om_hub_url
        hub = HUBS["modelscope" if spec.load_from == "ms_hub" else "openmind"][3]
        try:
            dataset = load_hub_dataset(spec)
        except DataError:  # the client is not installed
            raise
        except Exception as err:
            raise _hub_error(spec, hub, url, err) from err
        yield from _rows_of(dataset, f"{url} ({spec.split})")
        return

    import datasets

    if spec.load_from == "script":
        path = spec.local_path
        if path.is_dir() and any(p.suffix == ".py" for p in path.iterdir()):
            raise NotSupportedError(f"{spec.where}: script_url '{spec.script_url}' is a dataset loading script; "
                                    "datasets>=4 no longer runs scripts. Convert it to json/parquet files.")
        target, hub = (str(path), "local folder") if path.exists() else (spec.script_url, "Hugging Face Hub")
    else:
        target, hub = spec.hf_hub_url, "Hugging Face Hub"
    try:
        dataset = datasets.load_dataset(path=target, name=spec.subset, data_dir=spec.folder, split=spec.split,
                                        revision=spec.revision)
    except Exception as err:
        raise _hub_error(spec, hub, target, err) from err
    yield from _rows_of(dataset, f"{target} ({spec.split})")


def origin_of(spec: DatasetSpec) -> str:
    """Where a dataset's rows come from, for messages: its file or folder, or its hub id."""
    if spec.load_from == "file":
        return display_path(spec.local_path)
    return str({"hf_hub": spec.hf_hub_url, "ms_hub": spec.ms_hub_url, "om_hub": spec.om_hub_url}.get(spec.load_from)
               or spec.script_url)


def iter_rows(spec: DatasetSpec) -> Iterator[RawRow]:
    """The rows of one dataset, in file order, read as they are asked for."""
    return iter_local_rows(spec.local_path) if spec.load_from == "file" else iter_hub_rows(spec)


def load_rows(spec: DatasetSpec) -> list[RawRow]:
    """All rows of one dataset, in file order."""
    return list(iter_rows(spec))


def sample_rows(rows: list[RawRow], num_samples: int | None, max_samples: int | None, seed: int) -> list[RawRow]:
    """LF semantics: `num_samples` draws a random permutation truncated to N, topped up with random
    picks (with replacement) when N exceeds the rows; then `max_samples` keeps the first N."""
    if num_samples is not None:
        import numpy as np

        rng = np.random.default_rng(seed)
        indexes = list(rng.permutation(len(rows))[:num_samples])
        if num_samples > len(indexes) and rows:
            indexes += list(rng.choice(len(rows), num_samples - len(indexes)))
        rows = [rows[int(i)] for i in indexes]
    if max_samples is not None:
        rows = rows[:max_samples]
    return rows
