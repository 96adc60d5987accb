"""Show the first encoded samples as text with the trained spans marked.

Marking: text whose labels are trained is wrapped in ``[[`` ... ``]]``; prompt (label -100) text is
plain. With ``color=True`` (default: when stdout is a terminal) trained text is shown in green
instead of brackets.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable

from tuneforge.data.encode import IGNORE_INDEX

GREEN, RESET = "\033[32m", "\033[0m"


def mark_sample(input_ids: list[int], labels: list[int], tokenizer, color: bool = False) -> str:
    """Decode one sample, grouping consecutive tokens by trained / not trained."""
    pieces, start = [], 0
    for i in range(1, len(input_ids) + 1):
        if i == len(input_ids) or (labels[i] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            text = tokenizer.decode(input_ids[start:i], skip_special_tokens=False)
            if labels[start] != IGNORE_INDEX:
                text = f"{GREEN}{text}{RESET}" if color else f"[[{text}]]"
            pieces.append(text)
            start = i
    return "".join(pieces)


def format_preview(bundle_or_samples: Any, tokenizer, n: int = 3, *, color: bool | None = None) -> str:
    """The first `n` training samples decoded with trained text marked, then the data report."""
    if color is None:
        color = sys.stdout.isatty()
    report = getattr(bundle_or_samples, "report", None)
    samples: Iterable = getattr(bundle_or_samples, "train", bundle_or_samples)
    legend = "trained text in green" if color else "trained text inside [[...]]"
    lines = [f"first training samples ({legend}):"]
    for i, sample in enumerate(samples):
        if i >= n:
            break
        trained = sum(1 for label in sample["labels"] if label != IGNORE_INDEX)
        lines.append(f"--- sample {i}: {len(sample['input_ids'])} tokens, {trained} trained")
        lines.append(mark_sample(list(sample["input_ids"]), list(sample["labels"]), tokenizer, color))
    if report is not None:
        lines.append("---")
        lines.append(report.format())
    return "\n".join(lines)
