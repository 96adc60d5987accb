"""Multiple-choice evaluation, `tuneforge eval x.yaml` with LLaMA-Factory's keys (`task`, `task_dir`, `n_shot`,
`lang`, `batch_size`, `save_dir`, `seed`) -- what `llamafactory-cli eval` does, on local task folders.

For each subject of the task (evaluate/mcq_data.py) and each question: `n_shot` examples drawn from the dev split
(seeded), every one a user turn (question, `\\nA. ...` choices, `\\nAnswer:`) and an assistant turn (its letter),
then the question; the subject's system line goes in front of the first user turn; the conversation is encoded
through the chat template (prompt part) and the model's next-token logits at the end are compared for the tokens
of A, B, C and D: the largest is the answer. Accuracy per subject, per category and on average, printed as LF
prints it, saved to `save_dir` as LF does (`results.json`: the answers, `results.log`: the scores) plus
`scores.json` (every accuracy and count).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import torch

from tuneforge.errors import ConfigError
from tuneforge.evaluate.mcq_data import CATEGORIES, CHOICES, TaskFolder, parse_task

# LF's evaluation templates (system line, choice line, answer cue)
EVAL_TEMPLATES = {
    "en": ("The following are multiple choice questions (with answers) about {subject}.\n\n", "\n{choice}. {content}",
           "\nAnswer:"),
    "zh": ("以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n", "\n{choice}. {content}", "\n答案："),
}


def format_messages(row: dict, support: list[dict], subject_name: str, lang: str) -> list[dict[str, str]]:
    system, choice, answer = EVAL_TEMPLATES[lang]

    def turn(example):
        options = "".join(choice.format(choice=ch, content=example[ch]) for ch in CHOICES)
        return [{"role": "user", "content": example["question"] + options + answer},
                {"role": "assistant", "content": example["answer"]}]

    messages = [message for example in [*support, row] for message in turn(example)]
    messages[0] = {"role": "user", "content": system.format(subject=subject_name) + messages[0]["content"]}
    return messages


def choice_token_ids(tokenizer) -> list[int]:
    """The token of each letter as the answer's first token (LF: the last id of `encode(letter)`)."""
    return [tokenizer.encode(ch, add_special_tokens=False)[-1] for ch in CHOICES]


@torch.inference_mode()
def pick_letters(model, prompts: list[list[int]], choice_ids: list[int], batch_size: int, pad_id: int) -> list[str]:
    """The letter with the largest logit after each prompt; `batch_size` prompts per forward (left-padded)."""
    device = next(model.parameters()).device
    letters = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits[:, -1]
        letters += [CHOICES[i] for i in logits[:, choice_ids].float().argmax(-1).tolist()]
    return letters


def _task_root(cfg) -> Path:
    """`task_dir` as given (relative to the working directory, as in LF), else next to the config file."""
    task_dir = Path(cfg.evaluation.task_dir)
    if not task_dir.is_absolute() and not task_dir.exists() and cfg.config_dir is not None:
        beside = cfg.config_dir / task_dir
        if beside.exists():
            return beside
    return task_dir


def _check_save_dir(save_dir: str | None) -> Path | None:
    if save_dir is None:
        return None
    path = Path(save_dir)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"save_dir: {path} already exists and is not empty; choose a new folder "
                          "(LLaMA-Factory refuses an existing one too)")
    return path


def score_lines(scores: dict) -> str:
    """LF's printout: `   Average: 56.25` then each category with questions."""
    rows = [("Average", scores["average"])] + [(c, scores["categories"][c]) for c in CATEGORIES if c in scores["categories"]]
    return "\n".join(f"{name:>15}: {100 * entry['accuracy']:.2f}" for name, entry in rows)


def run_mcq_eval(cfg, emit: Callable[[str], None] = print) -> dict:
    from tuneforge.data.templates import template_for
    from tuneforge.model import load_model, load_tokenizer

    evaluation = cfg.evaluation
    name, split = parse_task(evaluation.task)
    folder = TaskFolder(_task_root(cfg), name)
    save_dir = _check_save_dir(evaluation.save_dir)
    tokenizer = load_tokenizer(cfg.model)
    template = template_for(cfg.data, tokenizer)
    template.fix_tokenizer(tokenizer)
    model = load_model(cfg.model, cfg.finetuning, is_trainable=False)
    choice_ids = choice_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rng = random.Random(42 if cfg.training.seed is None else int(cfg.training.seed))
    answers, subjects = {}, {}
    tally = {category: [0, 0] for category in ("Average", *CATEGORIES)}
    emit(f"[tuneforge] {evaluation.task}: {len(folder.subjects)} subjects, {evaluation.n_shot}-shot, lang "
         f"{evaluation.lang}, {folder.root}")
    for subject in folder.subjects:
        dev = folder.rows(subject.key, "train") if evaluation.n_shot else []
        rows = folder.rows(subject.key, split)
        prompts = []
        for row in rows:
            support = rng.sample(dev, min(evaluation.n_shot, len(dev)))
            messages = format_messages(row, support, subject.name, evaluation.lang)
            prompts.append(list(template.encode_oneturn(tokenizer, messages)[0]))
        picked = pick_letters(model, prompts, choice_ids, evaluation.batch_size, pad_id)
        correct = sum(p == row["answer"] for p, row in zip(picked, rows))
        answers[subject.key] = {str(i): letter for i, letter in enumerate(picked)}
        subjects[subject.key] = {"name": subject.name, "category": subject.category, "correct": correct,
                                 "total": len(rows), "accuracy": correct / len(rows) if rows else None}
        for key in ("Average", subject.category):
            tally[key][0] += correct
            tally[key][1] += len(rows)
        emit(f"  {subject.name}: {correct}/{len(rows)}")

    def entry(correct_total):
        correct, total = correct_total
        return {"correct": correct, "total": total, "accuracy": correct / total if total else 0.0}

    scores = {"task": evaluation.task, "n_shot": evaluation.n_shot, "lang": evaluation.lang,
              "average": entry(tally["Average"]), "subjects": subjects,
              "categories": {c: entry(tally[c]) for c in CATEGORIES if tally[c][1]}}
    lines = score_lines(scores)
    emit(lines)
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
        (save_dir / "results.json").write_text(json.dumps(answers, indent=2) + "\n", encoding="utf-8")
        (save_dir / "results.log").write_text(lines, encoding="utf-8")
        (save_dir / "scores.json").write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        emit(f"[tuneforge] answers and scores: {save_dir}")
    return scores
