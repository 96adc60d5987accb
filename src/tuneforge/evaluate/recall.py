"""`tuneforge eval recall`: did the fine-tune learn its training facts, and what else did it change?

    training questions (recall_data) -> greedy answers of the fine-tuned model
        -> exact match, character similarity, per-field accuracy, the worst answers
    structured answers -> single-field questions in held-out phrasings (data/facts.py), and the same fields in
        a trained phrasing -> "knows the fact" versus "knows one string" (or the field only inside the record)
    general questions (src/tuneforge/evaluate/drift_questions.json) -> answers of the base model, then of the fine-tune
        -> change score per question, expected keywords before / after, warnings

Decoding is greedy (`do_sample=False`; the config's other generation keys apply) with a short budget
per question: the expected answer's tokens + RECALL_EXTRA_TOKENS (HELDOUT_EXTRA_TOKENS for held-out
questions), DRIFT_MAX_NEW_TOKENS for drift questions, both models cut the same way. The base model
answers first and is released before the fine-tuned one loads: one model in memory at a time.
Training's `recall_target` (train/recall_stop.py) measures the same exact match teacher-forced.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tuneforge.data.facts import heldout_questions, question_subject, trained_phrasing_question
from tuneforge.errors import DataError
from tuneforge.evaluate import recall_metrics as metrics
from tuneforge.evaluate.recall_data import (
    adapters_text, choose_sample, load_drift_questions, resolve_targets, results_path, run_seed, takes_images,
    training_questions,
)

RECALL_EXTRA_TOKENS = 8     # room to see what follows the expected answer (an exact answer must stop)
HELDOUT_EXTRA_TOKENS = 24   # room for "key:value" or a short sentence, and to catch a recited record
DRIFT_MAX_NEW_TOKENS = 32   # the first 32 tokens of each answer are compared
WORST_EXAMPLES = 5
ASK_BATCH = 8               # questions decoded together (infer/batching.py)
HELDOUT_PER_ROW = 2         # held-out questions per training row, fields rotating across rows


@dataclass(frozen=True)
class RecallOptions:
    samples: int | None = None          # None: every training question
    seed: int | None = None             # None: the config's seed
    heldout: bool = True
    heldout_per_row: int | None = HELDOUT_PER_ROW  # None: every field the question does not name
    drift: bool = True
    output: str | None = None           # a .json file or a folder; None: output_dir/recall_results.json
    base_model: str | None = None       # the model before training, for drift (defaults from the config)
    drift_questions: str | None = None  # None: src/tuneforge/evaluate/drift_questions.json


def answer_budget(engine, expected: str, extra: int) -> int:
    return len(engine.tokenizer.encode(expected, add_special_tokens=False)) + extra


def question(text: str, *, max_new_tokens: int, history: Sequence[dict] = (), system: str | None = None,
             tools: str | None = None, images: Sequence[str] = ()) -> dict:
    """One conversation for `ask_all` (`images`: its files, for a vision-language model; answered one by one)."""
    return {"messages": [*history, {"role": "user", "content": text}], "system": system or None,
            "tools": tools or None, "images": list(images), "max_new_tokens": max_new_tokens}


def ask_all(engine, questions: Sequence[dict], progress: "_Progress", on_answer=None) -> list[str]:
    """Greedy answers, decoded several at a time (the batch decoder); `on_answer(index, answer)` as each ends."""
    done = 0

    def finished(index: int, answer: str) -> None:
        nonlocal done
        done += 1
        extra = on_answer(index, answer) if on_answer is not None else ""
        progress.step(done, extra or "")

    return engine.chat_batch(questions, max_batch=ASK_BATCH, on_done=finished, do_sample=False)


class _Progress:
    """`[tuneforge] recall 10/50 ...` about ten times per phase."""

    def __init__(self, emit: Callable[[str], None], phase: str, total: int):
        self.emit, self.phase, self.total = emit, phase, total
        self.every = max(1, total // 10)
        self.start = time.perf_counter()

    def step(self, done: int, extra: str = "") -> None:
        if done % self.every == 0 or done == self.total:
            seconds = time.perf_counter() - self.start
            self.emit(f"[tuneforge] {self.phase} {done}/{self.total} ({seconds:.0f}s){'  ' + extra if extra else ''}")


def run_recall(cfg, options: RecallOptions = RecallOptions(), emit: Callable[[str], None] = print) -> dict:
    """Ask, score, write the JSON (results_path); returns the results (format with recall_report)."""
    from tuneforge.infer.engine import ChatEngine

    started = time.perf_counter()
    seed = run_seed(cfg) if options.seed is None else int(options.seed)
    questions, skipped = training_questions(cfg)  # data problems surface before any model loads
    asked = choose_sample(questions, options.samples, seed)
    targets = resolve_targets(cfg, options.base_model)
    with_images = next((item for item in asked if item.images), None)
    if with_images is not None and not takes_images(targets.model_args):
        raise DataError(f"{with_images.source} has images but the model ({_describe_args(targets.model_args)}) does "
                        "not take images: eval recall on image rows needs the vision-language model trained on them")
    for note in targets.notes:
        emit(f"[tuneforge] {note}")
    drift_items = load_drift_questions(options.drift_questions) if options.drift and targets.base_args else None

    before = None
    if drift_items:
        engine = ChatEngine.from_config(dataclasses.replace(cfg, model=targets.base_args))
        emit(f"[tuneforge] before training: {engine.description}")
        before = _answer_drift(engine, drift_items, _Progress(emit, "drift (base model)", len(drift_items)))
        del engine
        gc.collect()

    engine = ChatEngine.from_config(dataclasses.replace(cfg, model=targets.model_args))
    emit(f"[tuneforge] evaluating {engine.description}")
    results = {
        "model": {
            "model_name_or_path": str(targets.model_args.model_name_or_path),
            "adapter_name_or_path": adapters_text(targets.model_args),
            "base_for_drift": _describe_args(targets.base_args),
            "finetuning_type": cfg.finetuning.finetuning_type,
            "template": getattr(engine.template, "name", None),
            "notes": list(targets.notes),
        },
        "settings": {
            "decoding": "greedy", "seed": seed, "samples": options.samples,
            "training_questions": len(questions), "rows_skipped": skipped, "asked": len(asked),
            "recall_extra_tokens": RECALL_EXTRA_TOKENS, "heldout_extra_tokens": HELDOUT_EXTRA_TOKENS,
            "heldout_per_row": options.heldout_per_row,
            "drift_max_new_tokens": DRIFT_MAX_NEW_TOKENS,
        },
    }
    results["recall"] = _recall_section(engine, asked, emit)
    if options.heldout:
        results["heldout"] = _heldout_section(engine, asked, options.heldout_per_row, emit)
    else:
        results["heldout"] = {"skipped": "--no-heldout"}
    if before is not None:
        after = _answer_drift(engine, drift_items, _Progress(emit, "drift (fine-tuned)", len(drift_items)))
        results["drift"] = _drift_section(drift_items, before, after)
    else:
        skip_notes = [n.removeprefix("drift skipped: ") for n in targets.notes if n.startswith("drift skipped")]
        reason = "--no-drift" if not options.drift else (skip_notes or ["no base model"])[0]
        results["drift"] = {"skipped": reason}
    results["runtime_seconds"] = round(time.perf_counter() - started, 1)

    path = results_path(cfg, options.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    results["results_file"] = str(path)
    return results


def _describe_args(model_args) -> str | None:
    if model_args is None:
        return None
    adapter = adapters_text(model_args)
    return str(model_args.model_name_or_path) + (f" + adapter {adapter}" if adapter else "")


def _recall_section(engine, asked, emit) -> dict:
    exact = [False] * len(asked)

    def check(index: int, answer: str) -> str:
        exact[index] = metrics.exact_match(answer, asked[index].expected)
        return f"exact so far {sum(exact)}"

    answers = ask_all(engine, [question(item.question, history=item.history, system=item.system, tools=item.tools,
                                        images=item.images,
                                        max_new_tokens=answer_budget(engine, item.expected, RECALL_EXTRA_TOKENS))
                               for item in asked], _Progress(emit, "recall", len(asked)), check)
    rows, field_lists = [], []
    for item, answer in zip(asked, answers):
        fields = metrics.field_results(item.expected, answer)
        field_lists.append(fields)
        rows.append({
            "source": item.source, "question": item.question, "expected": item.expected, "answer": answer,
            "exact": metrics.exact_match(answer, item.expected),
            "similarity": round(metrics.char_similarity(answer, item.expected), 4),
            "fields": None if fields is None else [dataclasses.asdict(f) for f in fields],
        })
    accuracy = metrics.field_accuracy(field_lists)
    exact = sum(r["exact"] for r in rows)
    return {
        "questions": len(rows), "exact": exact, "exact_match": exact / len(rows),
        "char_similarity": metrics.mean(r["similarity"] for r in rows),
        "structured_answers": sum(r["fields"] is not None for r in rows),
        "field_accuracy": accuracy["accuracy"], "fields_correct": accuracy["correct"],
        "fields_total": accuracy["total"], "by_field": accuracy["by_field"],
        "worst": [{k: r[k] for k in ("question", "expected", "answer", "similarity")}
                  for r in metrics.worst_examples(rows, WORST_EXAMPLES)],
        "rows": rows,
    }


def pick_heldout(questions: list, row_index: int, per_row: int | None) -> list:
    """`per_row` of a row's held-out questions, rotating with the row so every field gets asked across
    rows (all of them when per_row is None)."""
    if per_row is None or per_row >= len(questions):
        return questions
    start = (row_index * per_row) % len(questions)
    return [questions[(start + k) % len(questions)] for k in range(per_row)]


def _heldout_section(engine, asked, per_row, emit) -> dict:
    """Single-field questions in held-out phrasings and, as their control, the same fields asked in a trained
    phrasing: "knows the fact" (both right), "knows one wording" (only the control), or "knows the field only
    inside the whole answer" (neither)."""
    items = [(item, held) for index, item in enumerate(asked)
             for held in pick_heldout(heldout_questions(item.question, item.expected, index), index, per_row)]
    if not items:
        return {"skipped": "no training answer is a `key:value` list with a field the question does not name"}
    controls = [trained_phrasing_question(item.question, field, number) for number, (item, (_, field, _)) in
                enumerate(items)]
    texts = [text for _, (text, _, _) in items] + controls  # every held-out question, then every control
    asks = [question(text, history=item.history, system=item.system, tools=item.tools, images=item.images,
                     max_new_tokens=answer_budget(engine, value, HELDOUT_EXTRA_TOKENS))
            for (item, (_, _, value)), text in zip(items + items, texts)]
    answers = ask_all(engine, asks, _Progress(emit, "held-out", len(asks)))
    held_answers, control_answers = answers[:len(items)], answers[len(items):]
    rows = []
    for (item, (text, field, value)), answer, control, control_answer in zip(items, held_answers, controls,
                                                                             control_answers):
        subject = question_subject(item.question)
        rows.append({
            "question": text, "field": field, "expected": value, "answer": answer,
            "correct": metrics.heldout_correct(answer, field, value, subject),
            "recited_record": metrics.recites_record(answer), "training_question": item.question,
            "trained_phrasing_question": control, "trained_phrasing_answer": control_answer,
            "trained_phrasing_correct": metrics.heldout_correct(control_answer, field, value, subject),
        })
    accuracy = _by_field(rows, "correct")
    control = _by_field(rows, "trained_phrasing_correct")
    return {
        "questions": len(rows), "correct": accuracy["correct"], "accuracy": accuracy["accuracy"],
        "recited_record": sum(r["recited_record"] for r in rows), "by_field": accuracy["by_field"],
        "trained_phrasing": {key: control[key] for key in ("correct", "accuracy", "by_field")}, "rows": rows,
    }


def _by_field(rows: list[dict], verdict_key: str) -> dict:
    return metrics.field_accuracy(
        [metrics.FieldResult(r["field"], r["expected"], r["answer"], r[verdict_key])] for r in rows)


def _answer_drift(engine, items, progress: _Progress) -> list[str]:
    return ask_all(engine, [question(item["question"], max_new_tokens=DRIFT_MAX_NEW_TOKENS) for item in items], progress)


def _drift_section(items, before: list[str], after: list[str]) -> dict:
    rows = []
    for item, old, new in zip(items, before, after):
        rows.append({
            "question": item["question"], "lang": item["lang"], "before": old, "after": new,
            "change": round(metrics.change_score(old, new), 4),
            "expected_before": metrics.keyword_found(old, item["expect"]),
            "expected_after": metrics.keyword_found(new, item["expect"]),
            "flags": metrics.drift_flags(old, new),
        })
    with_keywords = [r for r in rows if r["expected_before"] is not None]
    return {
        "questions": len(rows), "mean_change": metrics.mean(r["change"] for r in rows),
        "with_keywords": len(with_keywords),
        "keyword_before": sum(bool(r["expected_before"]) for r in with_keywords),
        "keyword_after": sum(bool(r["expected_after"]) for r in with_keywords),
        "empty_after": sum("empty" in r["flags"] for r in rows),
        "fact_layout_after": sum("fact layout" in r["flags"] for r in rows),
        "rows": rows,
    }
