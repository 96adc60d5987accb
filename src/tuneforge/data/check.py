"""`tuneforge data check`: a report on exactly the rows a config trains on, before any training.

    specs -> rows.read_conversations (the pipeline's own reading, num_samples / max_samples, conversion, mixing)
          -> per row: the prompt (context) and the answer
          -> findings: format errors, empty answers, exact duplicates, conflicting answers, near-duplicate
             prompts (near_duplicates.py), fact data (facts.parse_fact_answer), token lengths against cutoff_len
             (check_lengths.py), a template that disagrees with the model's own chat template
Every finding says what to do: the keys to set, or a command to run.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, fields
from pathlib import Path

from tuneforge.data.check_lengths import Lengths, measure
from tuneforge.data.check_report import CheckReport, Finding, Suggestion
from tuneforge.data.facts import contains_value, hidden_fields, parse_fact_answer
from tuneforge.data.formats import Conversation
from tuneforge.data.loaders import origin_of
from tuneforge.data.media import run_vision_inputs
from tuneforge.data.near_duplicates import describe_varies, find_clusters, skeleton
from tuneforge.data.registry import load_dataset_specs
from tuneforge.config.args import DataArguments, split_names
from tuneforge.config.facts_args import FactArguments
from tuneforge.config.parser import RunConfig
from tuneforge.config.stages import stage_record
from tuneforge.data.report import DataReport
from tuneforge.data.rows import read_conversations
from tuneforge.errors import ConfigError

RECIPE_FILE = "examples/memorize_facts.yaml"
RECIPE_MODEL = "builtin:smollm2"  # the model RECIPE_FILE trains
FACT_SHARE = 0.2  # fact answers in at least this share of the rows make it fact data
CLUSTERS_SHOWN, CLUSTERS_KEPT = 3, 20
_VALUE = re.compile(r"[A-Za-z_]*\d[\w.:/-]*")  # numbers and ids
FACT_SAMPLE = 500  # rows whose hidden values are counted
FACT_KEYS = frozenset(f.name for f in fields(FactArguments))


@dataclass(frozen=True)
class RowView:
    prompt: str  # the message the answer answers
    context: tuple  # everything before the answer (system, tools, earlier turns): the duplicate key
    answers: tuple[str, ...]  # the answer (sft, kto, ppo) or chosen + rejected (rm, dpo); () for pt
    source: str


def view(conv: Conversation, kind: str) -> RowView:
    messages = conv.messages
    if kind == "text":
        text = messages[0].content if messages else ""
        return RowView(text, (text,), (), conv.source)
    if conv.chosen is not None or conv.rejected is not None:
        before, answers = messages, tuple(m.content if m else "" for m in (conv.chosen, conv.rejected))
    elif len(messages) % 2 == 0 and messages:
        before, answers = messages[:-1], (messages[-1].content,)
    else:
        before, answers = messages, ()
    # a row's images are part of what it asks: the same text about another image is another question
    context = (conv.system, conv.tools, tuple((m.role, m.content) for m in before), conv.images or ())
    return RowView(before[-1].content if before else "", context, answers, conv.source)


def training_specs(cfg: RunConfig) -> list:
    """The specs of the config's training datasets (a ConfigError / DataError for a wrong name or stage)."""
    from tuneforge.data.pipeline import check_stage

    data = cfg.data
    if not split_names(data.dataset):
        raise ConfigError("`dataset` is not set: name at least one dataset (from dataset_info.json or a file path)")
    config_dir = Path(cfg.config_path).parent if cfg.config_path else None
    specs = load_dataset_specs(data.dataset, data.dataset_dir or "data", config_dir)  # as pipeline.build_datasets
    check_stage(specs, cfg.finetuning.stage)
    return specs


def run_check(cfg: RunConfig, tokenizer, template) -> CheckReport:
    """Check the training rows of `cfg` with the run's own tokenizer and template (None for stage pt)."""
    start = time.perf_counter()
    data, stage = cfg.data, cfg.finetuning.stage
    specs = training_specs(cfg)
    seed = cfg.training.seed
    data_report = DataReport()
    vision = run_vision_inputs(cfg, tokenizer, stage, specs)  # images: their tokens count, as in training
    mixed = read_conversations(specs, "train", data, 42 if seed is None else int(seed), data_report, vision)
    convs = [conv for _, conv in mixed]
    kind = stage_record(stage).data  # what the stage's rows look like (config/stages.py)
    views = [view(conv, kind) for conv in convs]

    cutoff = data.cutoff_len
    report = CheckReport(config=str(cfg.config_path or "(command line)"), stage=stage,
                         template="-" if template is None else getattr(template, "name", "auto"),
                         cutoff_len=cutoff, rows=len(convs))
    for spec in specs:
        stats = data_report.stats(spec.name, "train")
        report.datasets.append({"name": spec.name, "origin": origin_of(spec), "read": stats.rows_read,
                                "used": stats.rows_used, "invalid": sum(stats.dropped.values())})
    report.findings += format_errors(data_report, len(convs))
    if data.val_size:
        report.notes.append(f"val_size={data.val_size}: the rows checked include those held out for evaluation")
    if cfg.facts.augment_facts and kind == "supervised":
        report.notes.append("augment_facts: the rows checked are the dataset's own; training adds more questions "
                            "to its fact rows")
    if not convs:
        read = sum(d["read"] for d in report.datasets)
        report.findings.append(Finding("no_rows", "error", f"none of the {read} row(s) read can be trained on",
                                       Suggestion("fix the rows named by the format errors, or check `max_samples` "
                                                  "/ `num_samples`")))
        report.sort()
        report.seconds = time.perf_counter() - start
        return report

    report.findings += empty_answers(views, kind)
    report.findings += duplicates(views)
    if kind == "supervised":
        report.findings += conflicts(views)
    # rows about images vary in the image, not the words: clusters and fact data are the text rows' alone
    texts = [v for v, conv in zip(views, convs) if not conv.images]
    clusters = find_clusters([v.prompt for v in texts], describe=CLUSTERS_KEPT) if kind != "text" else []
    if clusters:
        report.findings.append(near_duplicates(texts, clusters))
    if kind == "supervised":
        report.findings += fact_data(texts, clusters, cfg, report.notes)
    lengths = measure(convs, template, tokenizer, data, kind)
    report.tokens = token_summary(lengths, cutoff, kind)
    report.findings += truncation(lengths, views, cutoff)
    report.findings += template_mismatch(template, tokenizer, data)
    report.sort()
    report.seconds = time.perf_counter() - start
    return report


# ----------------------------------------------------------------------------- row findings
def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pct(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%" if total else "0%"


def format_errors(data_report: DataReport, total: int) -> list[Finding]:
    findings = []
    for stats in data_report.datasets.values():
        for reason, count in stats.dropped.items():
            findings.append(Finding(
                "format_error", "error" if total == 0 else "warning",
                f"{stats.name}: {count} row(s) are not valid ({reason}) and training would drop them",
                Suggestion("fix or remove these rows (the problem is named after each row); if most rows fail, check "
                           "`formatting` and `columns` of the dataset's entry in dataset_info.json"),
                count=count, rows=list(stats.refs.get(reason, []))))
    return findings


def empty_answers(views: list[RowView], kind: str) -> list[Finding]:
    needs_answer = kind in ("supervised", "feedback", "pairwise")
    empty = [v.source for v in views if (needs_answer and not v.answers) or any(not a.strip() for a in v.answers)]
    if not empty:
        return []
    what = "an empty chosen or rejected answer" if kind == "pairwise" else "an empty answer (or none)"
    return [Finding("empty_answer", "warning",
                    f"{len(empty)} row(s) have {what}: they teach the model to answer with nothing (end of turn)",
                    Suggestion("write the answers or remove these rows"), count=len(empty), rows=empty)]


def duplicates(views: list[RowView]) -> list[Finding]:
    groups: dict[tuple, list[int]] = {}
    for i, v in enumerate(views):
        groups.setdefault((v.context, v.answers), []).append(i)
    repeated = [g for g in groups.values() if len(g) > 1]
    if not repeated:
        return []
    extra = sum(len(g) - 1 for g in repeated)
    lines = [f"{' = '.join(views[i].source for i in g[:4])}{' ...' if len(g) > 4 else ''}: "
             f"{_short(views[g[0]].prompt)!r}" for g in repeated[:3]]
    return [Finding("duplicate", "warning" if extra >= 0.01 * len(views) else "info",
                    f"{extra} row(s) ({_pct(extra, len(views))}) are exact copies of another row (same prompt and "
                    f"answer; {len(repeated)} distinct): each copy is one more epoch on that row",
                    Suggestion("remove the copies, unless repeating these rows is deliberate"),
                    count=extra, rows=[views[i].source for g in repeated for i in g[1:]][:20],
                    details={"groups": [[views[i].source for i in g] for g in repeated[:20]]}, lines=lines)]


def conflicts(views: list[RowView]) -> list[Finding]:
    by_prompt: dict[tuple, dict[str, int]] = {}
    for i, v in enumerate(views):
        if v.answers:
            by_prompt.setdefault(v.context, {}).setdefault(v.answers[0].strip(), i)
    groups = [list(answers.values()) for answers in by_prompt.values() if len(answers) > 1]
    if not groups:
        return []
    rows = sum(len(g) for g in groups)
    lines = []
    for g in groups[:3]:
        lines.append(f"{_short(views[g[0]].prompt)!r} -> " + " | ".join(
            f"{_short(views[i].answers[0], 40)!r} ({views[i].source})" for i in g[:3]))
    return [Finding("conflict", "warning",
                    f"{len(groups)} prompt(s) have different answers ({rows} rows): the model is trained toward "
                    "all of them at once and learns neither reliably",
                    Suggestion("keep one answer per prompt; if the answers must differ, put what decides between them "
                               "(a name, a date, a condition) into the prompt"),
                    count=rows, rows=[views[i].source for g in groups for i in g][:20],
                    details={"groups": [[views[i].source for i in g] for g in groups[:20]]}, lines=lines)]


def near_duplicates(views: list[RowView], clusters) -> Finding:
    total = len(views)
    covered = sum(len(c.rows) for c in clusters)
    lines, details = [], []
    for n, c in enumerate(clusters[:CLUSTERS_KEPT]):
        samples = [c.rows[0], c.rows[len(c.rows) // 2], c.rows[-1]][: min(3, len(c.rows))]
        varies = describe_varies(c.varies)
        details.append({"rows": len(c.rows), "share": round(len(c.rows) / total, 4), "distinct_prompts": c.distinct,
                        "samples": [views[i].prompt for i in samples], "refs": [views[i].source for i in samples],
                        "varies": [list(v) for v in c.varies]})
        if n < CLUSTERS_SHOWN:
            lines.append(f"cluster {n + 1}: {len(c.rows)} rows ({_pct(len(c.rows), total)}), e.g.")
            lines += [f"  {_short(views[i].prompt, 70)!r} ({views[i].source})" for i in samples]
            lines.append(f"  differ only in: {varies}")
    if len(clusters) > CLUSTERS_SHOWN:
        lines.append(f"... {len(clusters) - CLUSTERS_SHOWN} more cluster(s) (see --json)")
    return Finding(
        "near_duplicates", "warning" if covered >= 0.2 * total else "info",
        f"{covered} row(s) ({_pct(covered, total)}) fall into {len(clusters)} cluster(s) of near-duplicate prompts "
        "that differ only in a few words (names, numbers, dates): each cluster is one question template",
        Suggestion("a model trained on one phrasing per template learns the template and the answers' shape, and "
                   "may ignore the words that vary; add varied phrasings of these questions (augment_facts adds "
                   "paraphrases to any row) and check that each answer depends on what varies",
                   keys={"augment_facts": True}),
        count=covered, details={"clusters": details},
        lines=lines)


# ----------------------------------------------------------------------------- fact data
def _value_dense(prompt: str, answer: str) -> bool:
    """An unstructured answer made of many numbers / ids that the prompt does not contain."""
    values = {v for v in _VALUE.findall(answer) if v not in prompt or not contains_value(prompt, v)}
    if len(values) < 3:
        return False
    words = sum(1 for unit in skeleton(answer) if unit[0].isalnum())
    return len(values) >= 0.2 * max(words, 1)


def fact_data(views: list[RowView], clusters, cfg: RunConfig, notes: list[str]) -> list[Finding]:
    parsed = [parse_fact_answer(v.answers[0]) if v.answers else None for v in views]
    structured = [i for i, p in enumerate(parsed) if p is not None]
    dense = [i for i, p in enumerate(parsed) if p is None and views[i].answers
             and _value_dense(views[i].prompt, views[i].answers[0])]
    facts = sorted(structured + dense)
    if len(facts) < 3 or len(facts) < FACT_SHARE * len(views):
        return []
    clustered = {i for c in clusters for i in c.rows}
    templated = [i for i in facts if i in clustered]
    sample = structured[:FACT_SAMPLE]
    hidden = [hidden_fields(views[i].prompt, parsed[i]) for i in sample]
    per_row = sum(map(len, hidden)) / len(hidden) if hidden else 0.0
    keys = list(dict.fromkeys(k for fields in hidden for k, _ in fields))[:6]
    what = (f"{len(structured)} `key: value` answer(s), {per_row:.1f} value(s) per row that the question does not "
            f"contain ({', '.join(keys)})" if structured else "")
    what += ("; " if structured and dense else "") + (f"{len(dense)} answer(s) dense in numbers / ids" if dense else "")
    message = (f"{len(facts)} of {len(views)} row(s) ({_pct(len(facts), len(views))}) answer with facts to memorise: "
               f"{what}")

    from tuneforge.config.facts_args import MEMORIZE_FACTS  # read at run time: the lead tunes the values

    missing = {k: v for k, v in MEMORIZE_FACTS.items() if _recipe_value(cfg, k) != v}
    if not missing:
        notes.append("fact data: the fact recipe's keys are set (" + ", ".join(MEMORIZE_FACTS) + ")")
        severity = "info"
    elif cfg.facts.augment_facts:
        severity = "info"
        message += ". augment_facts is on (more phrasings per fact); the rest of the recipe is not"
    elif len(templated) >= 0.5 * len(facts):
        severity = "error"
        message += (f". {len(templated)} of them ({_pct(len(templated), len(facts))}) have near-duplicate prompts "
                    "(see near_duplicates). Trained like this, the model learns the answers' layout, not the facts: "
                    "every fact is seen in one phrasing only, and a prompt that differs from its neighbours in a name "
                    "alone lets the model ignore the one part that says whose facts to give. Loss goes down while "
                    "exact recall of the facts stays near 0%")
    else:
        severity = "warning"
        message += (". Facts need many varied exposures (other phrasings, one question per field); one phrasing "
                    "per fact is usually not remembered")
    return [Finding("fact_data", severity, message, recipe(cfg, missing or MEMORIZE_FACTS), count=len(facts),
                    rows=[views[i].source for i in facts[:20]],
                    details={"structured": len(structured), "value_dense": len(dense), "near_duplicate": len(templated),
                             "hidden_values_per_row": round(per_row, 2), "hidden_keys": keys})]


def _recipe_value(cfg: RunConfig, key: str):
    """A fact recipe key's value: tuneforge's fact keys as typed (FactArguments), the others as the config
    file or the command line wrote them (unset: None)."""
    if key in FACT_KEYS:
        return getattr(cfg.facts, key)
    if key == "auto_bf16" and (cfg.raw.get("bf16") or cfg.raw.get("fp16")):
        return True  # the config chose its mixed precision itself (`auto_bf16` with it would be refused)
    return cfg.raw.get(key)


def recipe(cfg: RunConfig, keys: dict) -> Suggestion:
    data = cfg.data
    names = ",".join(split_names(data.dataset))
    output_dir = cfg.training.output_dir
    output_dir = f"{output_dir}-facts" if output_dir and output_dir != "trainer_output" else "saves/memorize_facts"
    command = (f"tuneforge train {RECIPE_FILE} dataset_dir={data.dataset_dir or 'data'} "
               f"dataset={names} output_dir={output_dir}")
    model = cfg.model.model_name_or_path
    if model and model != RECIPE_MODEL:
        command += f" model_name_or_path={model}"
    return Suggestion("train with tuneforge's fact recipe: it adds paraphrased questions, one question per field and "
                      "the whole answer in a shuffled field order (augment_facts), two more questions for each field after the "
                      "first (augment_chain_questions), and trains until the facts come back "
                      "(recall_target). Run it as it is:", keys=dict(keys), command=command)


# ----------------------------------------------------------------------------- lengths, template
def _stats(values: list[int]) -> dict[str, int]:
    ordered = sorted(values)
    if not ordered:
        return {"median": 0, "p95": 0, "max": 0}
    return {"median": ordered[len(ordered) // 2], "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "max": ordered[-1]}


def token_summary(lengths: Lengths, cutoff: int, kind: str) -> dict:
    rows = lengths.rows
    full = [r.full for r in rows]
    if kind == "text":  # documents
        return {"total": sum(full), "max_full": max(full, default=0), "cutoff_len": cutoff}
    prompt, answer = [r.prompt for r in rows], [r.answer for r in rows]
    return {"prompt": _stats(prompt), "answer": _stats(answer), "max_full": max(full, default=0), "cutoff_len": cutoff,
            "prompt_answer_ratio": round(sum(prompt) / max(sum(answer), 1), 2), "total": sum(full),
            "estimated_near_cutoff": lengths.estimated_near_cutoff}


def _round_up(n: int, step: int = 64) -> int:
    return -(-n // step) * step


def truncation(lengths: Lengths, views: list[RowView], cutoff: int) -> list[Finding]:
    rows = lengths.rows
    cut = lengths.truncated
    dropped = [i for i, r in enumerate(rows) if r.dropped and r.full]
    if not cut and not dropped:
        return []
    over = sorted(rows[i].full for i in cut + dropped)
    ceiling = _round_up(over[-1])
    suggested = ceiling if ceiling <= max(4 * cutoff, 8192) else _round_up(over[int(0.99 * (len(over) - 1))])
    findings = []
    if cut:
        lost = [rows[i].full - rows[i].kept for i in cut]
        findings.append(Finding(
            "truncation", "warning",
            f"{len(cut)} row(s) ({_pct(len(cut), len(rows))}) are longer than cutoff_len={cutoff} and will be cut: "
            f"{sum(lost)} token(s) lost in all, up to {max(lost)} in one row (longest row {over[-1]} tokens)",
            Suggestion("raise cutoff_len to fit the rows (memory grows with it), or `truncation: drop` to leave them "
                       "out instead of training on cut answers",
                       keys={"cutoff_len": max(suggested, cutoff)}),
            count=len(cut), rows=[views[i].source for i in cut[:20]],
            details={"rows": len(cut), "tokens_lost": sum(lost), "max_lost": max(lost), "longest": over[-1]}))
    if dropped:
        reasons = sorted({rows[i].dropped for i in dropped})
        findings.append(Finding(
            "dropped_by_length", "warning",
            f"{len(dropped)} row(s) will be dropped by the encoder: {'; '.join(reasons)}",
            Suggestion("raise cutoff_len so that these rows fit", keys={"cutoff_len": max(suggested, cutoff)}),
            count=len(dropped), rows=[views[i].source for i in dropped[:20]]))
    return findings


def template_mismatch(template, tokenizer, data: DataArguments) -> list[Finding]:
    if template is None or data.template in (None, "auto"):
        return []
    from tuneforge.data.templates import check_template_matches

    warning = check_template_matches(template, tokenizer)
    if not warning:
        return []
    first, *rest = warning.splitlines()
    return [Finding("template_mismatch", "warning", first, lines=[line.strip() for line in rest[:2]],
                    suggestion=Suggestion("use the model's own chat template (leave `template` unset, or set it to "
                                          "auto), unless you know the model was trained with this one; chat and "
                                          "export must use the same template as training",
                                          keys={"template": "auto"}))]
