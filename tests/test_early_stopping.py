"""`early_stopping_steps` (LF: HF's EarlyStoppingCallback): a run stops once `metric_for_best_model` has not improved
for that many evaluations, and a config it cannot work with is refused by key."""

from __future__ import annotations

import json

import pytest

from conftest import IDENTITY_ROWS, write_workspace
from tuneforge.cli.main import main
from tuneforge.config.parser import load_config_dict
from tuneforge.errors import ConfigError

TRAIN = {"stage": "sft", "do_train": True, "finetuning_type": "lora", "dataset": "tiny", "dataset_dir": "data",
         "template": "chatml", "cutoff_len": 64, "output_dir": "out", "per_device_train_batch_size": 2,
         "learning_rate": 5.0e-3, "max_steps": 8, "logging_steps": 1, "report_to": "none", "val_size": 2,
         "eval_strategy": "steps", "eval_steps": 1, "save_steps": 1, "load_best_model_at_end": True}


def test_training_stops_after_patience_evaluations_without_improvement(tmp_path, tiny_llama_dir, monkeypatch):
    # a falling eval loss counts as no improvement when greater is better: the best stays the first evaluation's
    config = {**TRAIN, "model_name_or_path": str(tiny_llama_dir), "early_stopping_steps": 2,
              "metric_for_best_model": "eval_loss", "greater_is_better": True}
    rows = [dict(row, instruction=f"{row['instruction']} ({i})") for i in range(3) for row in IDENTITY_ROWS]
    write_workspace(tmp_path, monkeypatch, rows, "tiny", config, "train.yaml")
    assert main(["train", "train.yaml"]) == 0
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    evals = [row["eval_loss"] for row in state["log_history"] if "eval_loss" in row]
    assert state["global_step"] == 3 and len(evals) == 3  # best at step 1, no improvement at 2 and 3
    assert evals[1] < evals[0] and state["best_global_step"] == 1


@pytest.mark.parametrize("change, message", [
    ({"load_best_model_at_end": False}, "needs `load_best_model_at_end: true`"),
    ({"eval_strategy": "no"}, "the run needs evaluations"),
    ({"val_size": 0}, "the run needs evaluations"),
    ({"early_stopping_steps": 0}, "at least 1; got 0"),
])
def test_early_stopping_without_what_it_needs_is_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        load_config_dict({**TRAIN, "model_name_or_path": "m", "early_stopping_steps": 2, **change})
