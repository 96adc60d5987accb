"""Shared by the rm / dpo / kto stage tests: toy preference data and run configs on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

GOOD = ["I am an AI assistant.", "Hello, who are you?", "The assistant answers politely."]
BAD = ["0123456789 0123456789", "def add(a, b):", "tool call result result"]
QUESTIONS = ["Who are you?", "Hello", "Translate the following sentence.", "Alice scored 91 points.",
             "What is the result?", "The quick brown fox."]


def pair_rows(n: int = 12) -> list[dict]:
    """Separable ranking rows: chosen answers from GOOD, rejected from BAD."""
    return [{"instruction": QUESTIONS[i % len(QUESTIONS)], "input": "", "chosen": GOOD[i % 3], "rejected": BAD[i % 3]}
            for i in range(n)]


def kto_rows(n: int = 12) -> list[dict]:
    rows = []
    for i in range(n):
        good = i % 2 == 0
        answer = GOOD[i % 3] if good else BAD[i % 3]
        rows.append({"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},
                                  {"role": "assistant", "content": answer}], "label": good})
    return rows


DATASET_INFO = {
    "pairs": {"file_name": "pairs.json", "ranking": True,
              "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}},
    "feedback": {"file_name": "feedback.json", "formatting": "sharegpt",
                 "columns": {"messages": "messages", "kto_tag": "label"},
                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
    "plain": {"file_name": "plain.json"},
}


def write_data(root: Path) -> Path:
    data = root / "data"
    data.mkdir(exist_ok=True)
    (data / "pairs.json").write_text(json.dumps(pair_rows()))
    (data / "feedback.json").write_text(json.dumps(kto_rows()))
    (data / "plain.json").write_text(json.dumps([{"instruction": "q", "output": "a"}] * 4))
    (data / "dataset_info.json").write_text(json.dumps(DATASET_INFO))
    return data


def make_cfg(model_dir: Path, stage: str, dataset: str, output_dir: Path, **overrides):
    from tuneforge.config.parser import load_config_dict

    config = {
        "model_name_or_path": str(model_dir), "stage": stage, "do_train": True, "finetuning_type": "lora",
        "lora_rank": 8, "dataset": dataset, "dataset_dir": "data", "template": "chatml", "cutoff_len": 64,
        "output_dir": str(output_dir), "logging_steps": 1, "save_strategy": "no", "per_device_train_batch_size": 4,
        "learning_rate": 1e-2, "max_steps": 6, "report_to": "none", "seed": 0, "overwrite_output_dir": True,
        "disable_tqdm": True,
    }
    config.update(overrides)
    return load_config_dict(config, source="test.yaml")


def log_records(output_dir: Path) -> list[dict]:
    """The training log entries (with the stage metrics) of a finished run, from trainer_state.json."""
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return [record for record in state["log_history"] if "loss" in record]


def separate_logps(model, sequences: list[tuple[list[int], list[int]]]) -> torch.Tensor:
    """Reference: each (input_ids, labels) alone through the model's own forward, summed label log-probs."""
    out = []
    with torch.no_grad():
        for ids, labels in sequences:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            targets = torch.tensor(labels[1:])
            keep = targets != -100
            logps = torch.log_softmax(logits, -1)[keep].gather(-1, targets[keep, None]).sum()
            out.append(logps)
    return torch.stack(out)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A temporary working directory with the toy data under data/ and its own tuneforge cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    write_data(tmp_path)
    return tmp_path
