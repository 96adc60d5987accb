"""LLaMA-Factory's evaluation keys (`llamafactory-cli eval`): multiple-choice tasks (evaluate/mcq.py).

Names, defaults and meaning as in LF's `EvaluationArguments`; `seed` is the training section's key (LF's
default 42 there too). `download_mode` stays refused: tasks are read from local folders.
"""

from dataclasses import dataclass, field
from typing import Any


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class EvaluationArguments:
    task: str | None = _f(None, "Multiple-choice task `<name>_<split>`, e.g. mmlu_test, ceval_validation, cmmlu_test.")
    task_dir: str = _f("evaluation", "Folder holding the task folders (<task_dir>/<name>/mapping.json + CSV files).")
    batch_size: int = _f(4, "Evaluation batch size (questions per forward).")
    lang: str = _f("en", "Language of the evaluation prompts: en or zh.")
    n_shot: int = _f(5, "Few-shot examples (from the dev split) before each question.")
    save_dir: str | None = _f(None, "New folder for results.json, results.log and scores.json.")
