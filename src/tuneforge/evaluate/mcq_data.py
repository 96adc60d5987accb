"""Multiple-choice tasks (MMLU, C-Eval, CMMLU and their layout) from local folders, as LLaMA-Factory names them.

`task: <name>_<split>` (e.g. `mmlu_test`, `ceval_validation`, `cmmlu_test`) reads `<task_dir>/<name>/`:

    mapping.json            {"<subject>": {"name": "abstract algebra", "category": "STEM"}, ...}
    dev|val|test/...csv     one file per subject and split, unpacked (optionally under data/) or inside the
                            task's .zip (LLaMA-Factory's evaluation/<name>/<name>.zip): read directly

Splits: `train` (the few-shot examples) = dev, `validation` = val, `test` = test. File names `<subject>_<split>.csv`
(MMLU, C-Eval) or `<subject>.csv` (CMMLU). Columns: a header naming question, A, B, C, D, answer (any case;
id / explanation / index columns are ignored) or no header and exactly those six columns in that order.
Category names are LLaMA-Factory's: STEM, Social Sciences, Humanities, Other.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import ConfigError, DataError

CHOICES = ("A", "B", "C", "D")
CATEGORIES = ("STEM", "Social Sciences", "Humanities", "Other")
SPLIT_FOLDERS = {"train": "dev", "validation": "val", "test": "test"}
_COLUMNS = ("question", *CHOICES, "answer")


@dataclass(frozen=True)
class Subject:
    key: str
    name: str
    category: str


def parse_task(task: str | None) -> tuple[str, str]:
    """`mmlu_test` -> ("mmlu", "test")."""
    name, _, split = (task or "").partition("_")
    if not name or split not in SPLIT_FOLDERS:
        raise ConfigError(f"task: {task!r} is not `<name>_<split>` with a split of {', '.join(SPLIT_FOLDERS)} "
                          "(e.g. mmlu_test, ceval_validation, cmmlu_test)")
    return name, split


class TaskFolder:
    """The CSV files of one task: a folder, or the .zip LLaMA-Factory ships in it."""

    def __init__(self, task_dir: str | Path, name: str):
        self.root = Path(task_dir) / name
        if not self.root.is_dir():
            raise ConfigError(f"task folder {self.root} does not exist (task_dir: {task_dir}); expected "
                              f"{self.root}/mapping.json and its dev/val/test CSV files")
        mapping = self.root / "mapping.json"
        if not mapping.is_file():
            raise ConfigError(f"{mapping} is missing: it lists the subjects "
                              '({"<subject>": {"name": ..., "category": ...}})')
        try:
            raw = json.loads(mapping.read_text(encoding="utf-8-sig"))
            self.subjects = [Subject(key, str(v["name"]), str(v["category"])) for key, v in raw.items()]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise DataError(f"{mapping}: expected {{\"<subject>\": {{\"name\": ..., \"category\": ...}}}} ({err})") from None
        unknown = sorted({s.category for s in self.subjects} - set(CATEGORIES))
        if unknown:
            raise DataError(f"{mapping}: unknown categories {unknown}; expected some of {', '.join(CATEGORIES)}")
        self._files = {p.relative_to(self.root).as_posix(): p for p in self.root.rglob("*.csv")}
        self._zip = None
        if not self._files:
            archives = sorted(self.root.glob("*.zip"))
            if archives:
                self._zip = zipfile.ZipFile(archives[0])
                self._files = {n: n for n in self._zip.namelist() if n.endswith(".csv")}

    def _find(self, subject: str, split: str) -> str | None:
        folder = SPLIT_FOLDERS[split]
        for name in (f"{subject}_{folder}.csv", f"{subject}.csv"):
            for prefix in ("", "data/"):
                wanted = f"{prefix}{folder}/{name}"
                for key in self._files:  # a zip may hold everything under one top folder (`mmlu/data/dev/...`)
                    if key == wanted or key.endswith("/" + wanted):
                        return key
        return None

    def rows(self, subject: str, split: str) -> list[dict[str, str]]:
        key = self._find(subject, split)
        if key is None:
            raise DataError(f"{self.root}: no {SPLIT_FOLDERS[split]} file for subject {subject!r} (looked for "
                            f"{SPLIT_FOLDERS[split]}/{subject}_{SPLIT_FOLDERS[split]}.csv or .../{subject}.csv)")
        raw = self._zip.read(key) if self._zip is not None else self._files[key].read_bytes()
        return read_mcq_csv(raw.decode("utf-8-sig"), f"{self.root}/{key}")


def read_mcq_csv(text: str, where: str) -> list[dict[str, str]]:
    lines = list(csv.reader(io.StringIO(text)))
    lines = [line for line in lines if any(cell.strip() for cell in line)]
    if not lines:
        return []
    header = [cell.strip().lower() for cell in lines[0]]
    if {"question", "answer"} <= set(header):
        index = {column: header.index(column.lower()) for column in _COLUMNS if column.lower() in header}
        missing = [c for c in _COLUMNS if c not in index]
        if missing:
            raise DataError(f"{where}: the header lacks column(s) {', '.join(missing)}; expected question, A, B, C, D, answer")
        body, first_row = lines[1:], 2
    else:
        index, body, first_row = {column: i for i, column in enumerate(_COLUMNS)}, lines, 1
    rows = []
    for number, line in enumerate(body, start=first_row):
        if len(line) <= max(index.values()):
            raise DataError(f"{where}, row {number}: {len(line)} columns; expected question, A, B, C, D, answer")
        row = {column: line[i].strip() for column, i in index.items()}
        if row["answer"] not in CHOICES:
            raise DataError(f"{where}, row {number}: answer {row['answer']!r}; expected one of A, B, C, D")
        rows.append(row)
    return rows
