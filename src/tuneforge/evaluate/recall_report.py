"""The readable report of `tuneforge eval recall` (the JSON has every number and every answer)."""

from __future__ import annotations

import unicodedata

TEXT_WIDTH = 70  # display columns for a question / answer in the report
DRIFT_ROWS_SHOWN = 8


def display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def clip(text: str, width: int = TEXT_WIDTH) -> str:
    """One line of at most `width` display columns (newlines shown as ⏎, "…" when cut)."""
    text = text.replace("\r", "").replace("\n", "⏎").rstrip("\ufffd")  # a character cut by the token budget
    if display_width(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        used += display_width(ch)
        if used > width - 1:
            break
        out.append(ch)
    return "".join(out) + "…"


def pad(text: str, width: int) -> str:
    return text + " " * max(0, width - display_width(text))


def percent(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100.0 * part / whole:.1f}%)" if whole else "-"


def _field_table(by_field: dict, indent: str = "    ") -> list[str]:
    width = max([display_width(k) for k in by_field] + [5])
    lines = [f"{indent}{pad('field', width)}  right/total  accuracy"]
    for key, entry in by_field.items():
        lines.append(f"{indent}{pad(key, width)}  {entry['correct']:>5}/{entry['total']:<5}  "
                     f"{100.0 * entry['accuracy']:6.1f}%")
    return lines


def format_recall_report(results: dict) -> str:
    lines = [""]
    model, settings, recall = results["model"], results["settings"], results["recall"]
    evaluated = model["model_name_or_path"] + (f" + adapter {model['adapter_name_or_path']}"
                                               if model["adapter_name_or_path"] else "")
    lines.append(f"== did it learn? {evaluated}")
    sample = (f"a sample of {settings['asked']} of {settings['training_questions']} (seed {settings['seed']})"
              if settings["asked"] < settings["training_questions"] else f"all {settings['asked']}")
    lines.append(f"training questions: {sample}, greedy"
                 + (f"; {settings['rows_skipped']} rows without an answer skipped" if settings["rows_skipped"] else ""))
    lines.append(f"  exact match           {percent(recall['exact'], recall['questions'])}")
    lines.append(f"  character similarity  {recall['char_similarity']:.3f}  (1.0 = identical to the trained answer)")
    if recall["field_accuracy"] is not None:
        lines.append(f"  field accuracy        {percent(recall['fields_correct'], recall['fields_total'])} over "
                     f"{recall['structured_answers']} key:value answers")
        lines += _field_table(recall["by_field"])
    lines.append("  worst answers (lowest similarity):")
    for row in recall["worst"]:
        lines.append(f"    [{row['similarity']:.2f}] question: {clip(row['question'])}")
        lines.append(f"           expected: {clip(row['expected'])}")
        lines.append(f"           answer:   {clip(row['answer']) or '(empty)'}")
    lines += _heldout_lines(results["heldout"])
    lines += _drift_lines(results["drift"])
    lines.append("")
    lines.append(f"verdict: {verdict(results)}")
    return "\n".join(lines)


def _heldout_lines(heldout: dict) -> list[str]:
    if "skipped" in heldout:
        return [f"held-out questions: skipped ({heldout['skipped']})"]
    lines = ["held-out questions (one field each, in phrasings never trained):",
             f"  correct               {percent(heldout['correct'], heldout['questions'])}"]
    control = heldout.get("trained_phrasing")
    if control:
        lines.append(f"  the same fields asked in a trained phrasing: {percent(control['correct'], heldout['questions'])}")
    if heldout["recited_record"]:
        lines.append(f"  recited a whole record instead of the field: {heldout['recited_record']}")
    lines += _field_table(heldout["by_field"]) if not control else _two_phrasings_table(heldout["by_field"],
                                                                                      control["by_field"])
    wrong = [r for r in heldout["rows"] if not r["correct"]][:3]
    for row in wrong:
        lines.append(f"    question: {clip(row['question'])}")
        lines.append(f"      expected {row['expected']!r}, answer: {clip(row['answer'], TEXT_WIDTH - 20) or '(empty)'}")
    return lines


def _two_phrasings_table(held: dict, trained: dict, indent: str = "    ") -> list[str]:
    width = max([display_width(k) for k in held] + [5])
    lines = [f"{indent}{pad('field', width)}  held-out phrasing  trained phrasing"]
    for key, entry in held.items():
        other = trained.get(key, {"correct": 0, "accuracy": 0.0})
        lines.append(f"{indent}{pad(key, width)}  {entry['correct']:>4}/{entry['total']:<4} {100 * entry['accuracy']:5.1f}%"
                     f"  {other['correct']:>4}/{entry['total']:<4} {100 * other['accuracy']:5.1f}%")
    return lines


def unknown_alone(heldout: dict, below: float = 0.5) -> list[str]:
    """Fields answered wrong in held-out *and* trained phrasings (under `below`): not known on their own."""
    trained = (heldout.get("trained_phrasing") or {}).get("by_field")
    if not trained:
        return []
    return [key for key, entry in heldout["by_field"].items()
            if entry["accuracy"] < below and trained.get(key, {}).get("accuracy", 0.0) < below]


def _drift_lines(drift: dict) -> list[str]:
    if "skipped" in drift:
        return [f"drift on general questions: skipped ({drift['skipped']})"]
    lines = ["drift on general questions (base model before, fine-tune after):",
             f"  mean change           {drift['mean_change']:.3f}  (0 = same answers, 1 = nothing in common)"]
    if drift["with_keywords"]:
        lines.append(f"  expected keyword      before {drift['keyword_before']}/{drift['with_keywords']}, "
                     f"after {drift['keyword_after']}/{drift['with_keywords']}")
    lines.append(f"  empty answers after {drift['empty_after']}, answers in the fact layout after "
                 f"{drift['fact_layout_after']}")
    shown = sorted(drift["rows"], key=lambda r: -r["change"])[:DRIFT_ROWS_SHOWN]
    for row in shown:
        flags = f"  [{', '.join(row['flags'])}]" if row["flags"] else ""
        lines.append(f"    [{row['change']:.2f}] {clip(row['question'])}{flags}")
        lines.append(f"           before: {clip(row['before']) or '(empty)'}")
        lines.append(f"           after:  {clip(row['after']) or '(empty)'}")
    return lines


def verdict(results: dict) -> str:
    """One plain sentence from the numbers (no thresholds beyond the obvious)."""
    recall, heldout = results["recall"], results["heldout"]
    exact = recall["exact_match"]
    if exact >= 0.95:
        said = f"the training answers are recalled ({100 * exact:.0f}% exact)"
    elif exact == 0:
        said = "no training answer is recalled exactly"
    else:
        said = f"the training answers are partly recalled ({100 * exact:.0f}% exact)"
    if "skipped" not in heldout:
        said += (f"; held-out phrasings {100 * heldout['accuracy']:.0f}% correct"
                 + (" (knows the strings more than the facts)" if heldout["accuracy"] < exact - 0.2 else ""))
        alone = unknown_alone(heldout)
        if alone:
            said += (f"; {', '.join(alone)} wrong when asked alone in trained phrasings too: known only inside the "
                     "whole answer (learned as a chain, each value after the one before)")
    return said + "."
