"""What `tuneforge data check` found: findings (kind, severity, message, rows, suggestion) and how they print.

The text form is for a terminal; `to_json()` is the same content as plain data (`--json`).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("error", "warning", "info")
ROWS_SHOWN = 5  # row references printed per finding (JSON keeps up to ROWS_KEPT)
ROWS_KEPT = 20
WIDTH = 110  # text report width


@dataclass
class Suggestion:
    text: str
    keys: dict[str, Any] = field(default_factory=dict)  # config keys to set, exactly as to write them in YAML
    command: str = ""  # a command to run instead

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "keys": dict(self.keys), "command": self.command}


@dataclass
class Finding:
    kind: str  # format_error, empty_answer, duplicate, conflict, near_duplicates, fact_data, truncation, ...
    severity: str  # error | warning | info
    message: str
    suggestion: Suggestion
    count: int = 0  # rows concerned
    rows: list[str] = field(default_factory=list)  # "data/x.json row 12", the first ROWS_KEPT
    details: dict[str, Any] = field(default_factory=dict)  # kind-specific data (clusters, groups, numbers)
    lines: list[str] = field(default_factory=list)  # the details as text lines (the terminal report)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": self.severity, "message": self.message, "count": self.count,
                "rows": self.rows[:ROWS_KEPT], "suggestion": self.suggestion.to_json(), "details": self.details}


@dataclass
class CheckReport:
    config: str  # the config file checked
    stage: str
    template: str
    cutoff_len: int
    rows: int  # rows checked: exactly those the config trains on (after sampling and mixing, before encoding)
    datasets: list[dict[str, Any]] = field(default_factory=list)  # per dataset: name, file, read, used, invalid
    tokens: dict[str, Any] = field(default_factory=dict)  # length summary
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the check, from reading the files to the last finding
    load_seconds: float = 0.0  # loading the tokenizer and template before it

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    def sort(self) -> None:
        self.findings.sort(key=lambda f: SEVERITIES.index(f.severity))

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config, "stage": self.stage, "template": self.template, "cutoff_len": self.cutoff_len,
            "rows": self.rows, "datasets": self.datasets, "tokens": self.tokens,
            "findings": [f.to_json() for f in self.findings], "notes": self.notes,
            "errors": self.count("error"), "warnings": self.count("warning"), "infos": self.count("info"),
            "seconds": round(self.seconds, 3), "load_seconds": round(self.load_seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
        }

    def format(self) -> str:
        lines = [f"data check: {self.config} (stage {self.stage}, template {self.template}, "
                 f"cutoff_len {self.cutoff_len}): {self.rows} row(s) the config trains on"]
        for d in self.datasets:
            used = f", {d['used']} used" if d["used"] != d["read"] else ""
            invalid = f", {d['invalid']} invalid" if d["invalid"] else ""
            lines.append(f"  {d['name']}: {d['origin']}: {d['read']} read{used}{invalid}")
        if self.tokens:
            lines.append("  " + format_tokens(self.tokens))
        lines.extend(f"  note: {note}" for note in self.notes)
        for finding in self.findings:
            lines.append("")
            lines.extend(format_finding(finding))
        lines.append("")
        verdict = ", ".join(f"{self.count(s)} {s}{'s' if self.count(s) != 1 and s != 'info' else ''}"
                            for s in SEVERITIES)
        load = f" (+{self.load_seconds:.1f} s loading the tokenizer)" if self.load_seconds else ""
        lines.append(f"{verdict}; checked {self.rows} rows in {self.seconds:.2f} s{load}, "
                     f"{self.rows_per_second:,.0f} rows/s")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def format_tokens(tokens: dict[str, Any]) -> str:
    if "prompt" not in tokens:
        return f"tokens: {tokens.get('total', 0)} in all, longest document {tokens.get('max_full', 0)}"
    p, a = tokens["prompt"], tokens["answer"]
    return (f"tokens per row: prompt median {p['median']} (p95 {p['p95']}, max {p['max']}), answer median "
            f"{a['median']} (p95 {a['p95']}, max {a['max']}); prompt/answer {tokens['prompt_answer_ratio']}; "
            f"longest sample {tokens['max_full']} of cutoff_len {tokens['cutoff_len']}")


def format_finding(finding: Finding) -> list[str]:
    label = {"error": "ERROR", "warning": "WARNING", "info": "INFO"}[finding.severity]
    lines = textwrap.wrap(f"{label} [{finding.kind}] {finding.message}", WIDTH, subsequent_indent="  ",
                          break_on_hyphens=False)
    lines.extend(f"    {line}" for line in finding.lines)
    if finding.rows:
        more = f" (+{finding.count - ROWS_SHOWN} more)" if finding.count > ROWS_SHOWN else ""
        lines.append(f"    rows: {'; '.join(finding.rows[:ROWS_SHOWN])}{more}")
    lines += textwrap.wrap(finding.suggestion.text, WIDTH, initial_indent="  fix: ", subsequent_indent="       ")
    if finding.suggestion.command:
        lines.append(f"      {finding.suggestion.command}")
    if finding.suggestion.keys:
        lines.append("    keys:" if not finding.suggestion.command else "    or add to your config:")
        lines.extend(f"      {line}" for line in yaml_lines(finding.suggestion.keys))
    return lines


def yaml_lines(keys: dict[str, Any]) -> list[str]:
    """`key: value` lines exactly as they go into a YAML config."""
    import json

    import yaml

    return [f"{key}: {json.dumps(value, ensure_ascii=False)}" if isinstance(value, (list, dict)) else
            yaml.safe_dump({key: value}, allow_unicode=True, default_flow_style=False, width=1000).strip()
            for key, value in keys.items()]
