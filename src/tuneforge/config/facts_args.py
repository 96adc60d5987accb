"""tuneforge's keys for fact data ("did it learn?"): question-side augmentation and train-until-learned.

LLaMA-Factory has no such keys; they are tuneforge additions, off by default, so an LF config means
the same thing here. `MEMORIZE_FACTS` is the recipe (`examples/memorize_facts.yaml` holds the same
keys, checked by a test; `tuneforge data check` prints them for fact data).
"""

from dataclasses import dataclass, field
from typing import Any


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class FactArguments:
    augment_facts: bool = _f(False, "Add paraphrased and one-field questions for `key:value` fact answers "
                                    "(data/facts.py; tuneforge).")
    augment_chain_questions: int = _f(0, "With augment_facts: this many more one-field questions per row for each "
                                         "hidden field after the first in the answer (learned only in the "
                                         "record's chain otherwise; the recipe uses 2, bench/RESULTS.md 9e-9f; "
                                         "tuneforge).")
    recall_target: float | None = _f(None, "Stop training once greedy exact recall on the training questions "
                                           "reaches this fraction (e.g. 0.95; tuneforge).")
    recall_check_epochs: float = _f(1.0, "With recall_target: measure recall every this many epochs.")
    recall_check_samples: int = _f(50, "With recall_target: training questions asked per check (seeded sample).")
    float32_from_recall: float | None = _f(None, "With recall_target and bf16 / fp16 mixed precision (or auto_bf16): "
                                                 "once a recall check reaches this fraction, train on in float32 "
                                                 "(autocast off) to the stop, in the same run (a run resumed from "
                                                 "a checkpoint after the switch: float32 from its start; "
                                                 "bench/RESULTS.md 20b-20c; not in the fact recipe, whose last "
                                                 "half epoch learned the same in bf16: 20e; tuneforge).")


# The recipe that makes facts stick: the values measured in bench/RESULTS.md ("Did it learn?").
MEMORIZE_FACTS: dict[str, Any] = {
    "finetuning_type": "full",
    "augment_facts": True,
    "augment_chain_questions": 2,
    "per_device_train_batch_size": 8,
    "learning_rate": 1.0e-4,
    "adam_beta2": 0.95,
    "num_train_epochs": 5.0,
    "lr_scheduler_type": "cosine",
    "recall_target": 1.0,
    "recall_check_epochs": 0.5,
    "auto_bf16": True,
}
