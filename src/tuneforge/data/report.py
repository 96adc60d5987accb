"""What happened to the data: rows read, used, kept, dropped (with reasons) and truncated."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import DataError

MAX_REFS = 5  # source references kept per kind


@dataclass
class DatasetStats:
    name: str
    split: str = "train"  # "train" or "eval": which side of the run this dataset feeds
    rows_read: int = 0  # rows in the file(s)
    rows_used: int = 0  # after num_samples / max_samples / mixing (may exceed rows_read when oversampling)
    kept: int = 0  # encoded samples
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    refs: dict[str, list[str]] = field(default_factory=dict)  # "truncated" / reason -> first sources
    tokens: int = 0  # tokens of kept samples
    trained_tokens: int = 0  # tokens with a label

    def _ref(self, kind: str, source: str) -> None:
        refs = self.refs.setdefault(kind, [])
        if len(refs) < MAX_REFS and source:
            refs.append(source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "split": self.split, "rows_read": self.rows_read, "rows_used": self.rows_used,
            "kept": self.kept, "truncated": self.truncated, "dropped": dict(self.dropped),
            "refs": self.refs, "tokens": self.tokens, "trained_tokens": self.trained_tokens,
        }

    def add(self, other: DatasetStats) -> None:
        """Add the counts of a later run of rows (a worker's shard): the result is what one pass over
        both runs, this one first, would have recorded."""
        for name in ("rows_read", "rows_used", "kept", "truncated", "tokens", "trained_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.dropped.update(other.dropped)
        for kind, sources in other.refs.items():
            self.refs.setdefault(kind, [])
            for source in sources:
                self._ref(kind, source)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetStats:
        data = dict(data)
        data["dropped"] = Counter(data.get("dropped", {}))
        return cls(**data)


class DataReport:
    """Per dataset counts with references to the first rows of each kind."""

    def __init__(self) -> None:
        self.datasets: dict[str, DatasetStats] = {}
        self.train_samples = 0
        self.eval_samples = 0
        self.notes: list[str] = []  # run-level remarks, e.g. "loaded from cache ..."

    def stats(self, name: str, split: str = "train") -> DatasetStats:
        key = f"{split}:{name}"
        if key not in self.datasets:
            self.datasets[key] = DatasetStats(name=name, split=split)
        return self.datasets[key]

    # ------------------------------------------------------------------ recording
    def read(self, name: str, count: int, split: str = "train") -> None:
        self.stats(name, split).rows_read += count

    def kept(self, name: str, input_ids: list[int], labels: list[int], split: str = "train",
             trained_tokens: int | None = None) -> None:
        """A sample kept; `trained_tokens`: its labels that are not -100, when the encoder has counted them."""
        stats = self.stats(name, split)
        stats.kept += 1
        stats.tokens += len(input_ids)
        stats.trained_tokens += len(labels) - labels.count(-100) if trained_tokens is None else trained_tokens

    def dropped(self, name: str, reason: str, source: str, split: str = "train") -> None:
        stats = self.stats(name, split)
        stats.dropped[reason] += 1
        stats._ref(reason, source)

    def truncated(self, name: str, source: str, split: str = "train") -> None:
        stats = self.stats(name, split)
        stats.truncated += 1
        stats._ref("truncated", source)

    def absorb(self, later: DataReport) -> None:
        """Merge the report of a later run of rows (workers' shards are merged in order)."""
        for key, stats in later.datasets.items():
            self.stats(stats.name, stats.split).add(stats)
        self.notes.extend(later.notes)

    # ------------------------------------------------------------------ checks / output
    def check_not_empty(self, split: str, count: int) -> None:
        """Raise a DataError explaining why a split ended up with no samples."""
        if count > 0:
            return
        reasons: Counter = Counter()
        names, read = [], 0
        for stats in self.datasets.values():
            if stats.split == split:
                names.append(stats.name)
                read += stats.rows_read
                reasons.update(stats.dropped)
        if not reasons:
            raise DataError(f"no {split} samples: dataset(s) {', '.join(names) or '(none)'} have {read} rows")
        top = "; ".join(
            f"{reason}: {n} row(s), e.g. {', '.join(self._refs(split, reason)[:3])}" for reason, n in reasons.most_common(3)
        )
        raise DataError(f"no {split} samples left: all {sum(reasons.values())} row(s) of {', '.join(names)} "
                        f"were dropped. Top reasons: {top}")

    def _refs(self, split: str, kind: str) -> list[str]:
        return [ref for s in self.datasets.values() if s.split == split for ref in s.refs.get(kind, [])]

    def to_json(self) -> dict[str, Any]:
        return {
            "train_samples": self.train_samples,
            "eval_samples": self.eval_samples,
            "datasets": [stats.to_dict() for stats in self.datasets.values()],
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DataReport:
        report = cls()
        report.train_samples = data.get("train_samples", 0)
        report.eval_samples = data.get("eval_samples", 0)
        report.notes = list(data.get("notes", []))
        for item in data.get("datasets", []):
            stats = DatasetStats.from_dict(item)
            report.datasets[f"{stats.split}:{stats.name}"] = stats
        return report

    def save(self, output_dir: str | Path) -> Path:
        path = Path(output_dir) / "data_report.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    def format(self) -> str:
        lines = [f"data: {self.train_samples} train sample(s), {self.eval_samples} eval sample(s)"]
        for stats in self.datasets.values():
            used = f", used {stats.rows_used}" if stats.rows_used != stats.rows_read else ""
            lines.append(
                f"  [{stats.split}] {stats.name}: read {stats.rows_read}{used}, kept {stats.kept}, "
                f"dropped {sum(stats.dropped.values())}, truncated {stats.truncated}; "
                f"{stats.tokens} tokens, {stats.trained_tokens} trained"
            )
            for reason, count in stats.dropped.most_common():
                lines.append(f"      dropped {count}: {reason} (e.g. {', '.join(stats.refs.get(reason, []))})")
            if stats.truncated:
                lines.append(f"      truncated to cutoff_len: e.g. {', '.join(stats.refs.get('truncated', []))}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()
