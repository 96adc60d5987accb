"""Scores of `tuneforge eval recall`: pure functions on strings, no model (tests/test_recall.py).

Definitions (the README and the report use the same words):

* exact match: `answer.strip() == expected.strip()` (case and inner spacing count).
* character similarity: difflib's `SequenceMatcher(None, a, b, autojunk=False).ratio()` on the stripped
  texts, i.e. 2·M / (len(a) + len(b)) with M the characters of the matching blocks; 1.0 for two empty texts.
* per-field accuracy (answers that are `key:value` lists, `data/facts.py`): a field of the expected answer
  is right when the answer has the same key with the same value (stripped, case-insensitive). The answer is
  read with `parse_fact_answer`; when it does not parse as a whole (a cut-off tail, a repeated key), each
  separated piece is read on its own and the first value of a key counts, so fields before a broken tail
  still score.
* held-out correctness (`heldout_correct`): see there; the answer must be the value, `key:value`, or a short
  sentence around the value, never a whole record.
* change score (drift): 1 − character similarity of the answers before and after training.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tuneforge.data.facts import PAIR_SPLIT, parse_fact_answer, value_pattern

# the separators between `key:value` pairs that `parse_fact_answer` accepts
_EDGE_PUNCTUATION = " \t\r\n。.!！?？,，;；:：、\"'“”‘’「」『』()（）[]【】"
# "little else" in a held-out answer: at most this many extra units (a CJK character or a Latin/digit word)
HELDOUT_MAX_EXTRA_UNITS = 6
_CJK = "\u3400-\u9fff\uf900-\ufaff"
_UNIT = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


def exact_match(answer: str, expected: str) -> bool:
    return answer.strip() == expected.strip()


def char_similarity(a: str, b: str) -> float:
    """SequenceMatcher ratio of the stripped texts (0..1; 1.0 when both are empty)."""
    return difflib.SequenceMatcher(None, a.strip(), b.strip(), autojunk=False).ratio()


def change_score(before: str, after: str) -> float:
    """Drift of one general question: 0 = the same answer, 1 = nothing in common."""
    return 1.0 - char_similarity(before, after)


def same_value(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def answer_fields(answer: str) -> dict[str, str]:
    """The `key:value` pairs an answer states (first value per key); {} when it states none."""
    parsed = parse_fact_answer(answer, min_fields=1)
    if parsed is not None:
        return dict(parsed.fields)
    fields: dict[str, str] = {}
    for piece in PAIR_SPLIT.split(answer):
        one = parse_fact_answer(piece, min_fields=1)
        if one is not None:
            key, value = one.fields[0]
            fields.setdefault(key, value)
    return fields


@dataclass(frozen=True)
class FieldResult:
    key: str
    expected: str
    answer: str | None  # the answer's value for this key; None when the answer lacks the key
    correct: bool


def field_results(expected: str, answer: str) -> list[FieldResult] | None:
    """One result per field of a structured expected answer; None when `expected` is not a `key:value` list."""
    facts = parse_fact_answer(expected)
    if facts is None:
        return None
    stated = {key.strip().casefold(): value for key, value in answer_fields(answer).items()}
    results = []
    for key, value in facts.fields:
        got = stated.get(key.strip().casefold())
        results.append(FieldResult(key, value, got, got is not None and same_value(got, value)))
    return results


def field_accuracy(per_row: Iterable[Sequence[FieldResult] | None]) -> dict:
    """{"accuracy", "correct", "total", "by_field": {key: {"correct", "total", "accuracy"}}} over the
    structured rows (None rows are skipped); accuracy is None when no row is structured."""
    by_field: dict[str, dict] = {}
    for results in per_row:
        for result in results or ():
            entry = by_field.setdefault(result.key, {"correct": 0, "total": 0})
            entry["total"] += 1
            entry["correct"] += result.correct
    for entry in by_field.values():
        entry["accuracy"] = entry["correct"] / entry["total"]
    correct = sum(e["correct"] for e in by_field.values())
    total = sum(e["total"] for e in by_field.values())
    return {"accuracy": correct / total if total else None, "correct": correct, "total": total, "by_field": by_field}


def recites_record(answer: str) -> bool:
    """The answer states two `key:value` fields or more (a record, also when cut off mid-field): the
    layout, not one field."""
    return len(answer_fields(answer)) >= 2


def _trim(text: str) -> str:
    return text.strip().strip(_EDGE_PUNCTUATION).strip()


def heldout_correct(answer: str, field: str, value: str, subject: str = "") -> bool:
    """Is `answer` a correct reply to a single-field question asking `field` (expected `value`)?

    Case-insensitive, surrounding whitespace and punctuation ignored. Correct when the answer
      1. is the value ("66"), or
      2. is one `key:value` pair with this key and value ("数学:66", "Math: 66"), or
      3. contains the value as a whole token (the 1 of 学号:1 does not match "11") and little else: after
         removing the question's `subject`, the field name and that value, at most HELDOUT_MAX_EXTRA_UNITS
         units remain (a unit = one CJK character or one run of letters/digits), and the answer is not a
         whole record (two `key:value` fields or more: reciting the training answer is not answering).
    """
    text = _trim(answer).casefold()
    value_cf, field_cf = value.strip().casefold(), field.strip().casefold()
    if not text or not value_cf:
        return False
    if text == value_cf:
        return True
    pair = parse_fact_answer(text, min_fields=1)
    if pair is not None and len(pair.fields) == 1:
        key, said = pair.fields[0]
        if key.strip() == field_cf:
            return same_value(said, value_cf)
    if recites_record(text):
        return False
    pattern = value_pattern(value_cf)
    if pattern.search(text) is None:
        return False
    rest = text.replace(subject.strip().casefold(), " ", 1) if subject.strip() else text
    rest = rest.replace(field_cf, " ", 1) if field_cf else rest
    rest = pattern.sub(" ", rest, count=1)
    return len(_UNIT.findall(rest)) <= HELDOUT_MAX_EXTRA_UNITS


def keyword_found(answer: str, expect: Sequence[str]) -> bool | None:
    """Drift: does the answer contain one of the question's expected keywords (case-insensitive)?
    None when the question has none."""
    if not expect:
        return None
    text = answer.casefold()
    return any(word.casefold() in text for word in expect)


def drift_flags(before: str, after: str) -> list[str]:
    """Plain warnings about a fine-tuned answer to a general question: "empty" (nothing said) and
    "fact layout" (a `key:value` record where the base model gave none: the fine-tune leaks its format)."""
    flags = []
    if not after.strip():
        flags.append("empty")
    if recites_record(after) and not recites_record(before):
        flags.append("fact layout")
    return flags


def worst_examples(rows: Sequence[dict], count: int, key: str = "similarity") -> list[dict]:
    """The `count` rows with the lowest `row[key]` (ties keep their order)."""
    return sorted(rows, key=lambda row: row[key])[:count]


def mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None
