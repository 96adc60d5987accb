"""`report_to: tensorboard` + `logging_dir`, and LF's `use_swanlab` (train/reporting.py), on the tiny model."""

from __future__ import annotations

import json

import pytest

from conftest import IDENTITY_ROWS, write_workspace
from tuneforge.config.parser import load_config_dict
from tuneforge.errors import NotSupportedError

BASE = {"model_name_or_path": "m", "dataset": "d", "output_dir": "o", "do_train": True}


def _train(tmp_path, monkeypatch, model_dir, extra: dict):
    from tuneforge.cli.main import main

    config = {"model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
              "dataset": "tiny", "dataset_dir": "data", "template": "chatml", "cutoff_len": 64, "output_dir": "out",
              "per_device_train_batch_size": 4, "max_steps": 3, "learning_rate": 1e-3, "save_strategy": "no",
              "logging_steps": 1, **extra}
    write_workspace(tmp_path, monkeypatch, IDENTITY_ROWS, "tiny", config, "train.yaml")
    assert main(["train", "train.yaml"]) == 0
    return tmp_path / "out"


def test_tensorboard_writes_the_loss_into_logging_dir(tmp_path, monkeypatch, tiny_llama_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "not_here"))  # the key wins over the variable
    out = _train(tmp_path, monkeypatch, tiny_llama_dir, {"report_to": "tensorboard", "logging_dir": "tb_logs"})
    events = list((tmp_path / "tb_logs").glob("events.out.tfevents.*"))
    assert events, list(tmp_path.rglob("events.out.tfevents.*"))
    assert not (tmp_path / "not_here").exists() and not (out / "runs").exists()
    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()
    losses = accumulator.Scalars("train/loss")
    logged = [row for row in map(json.loads, (out / "trainer_log.jsonl").read_text().splitlines()) if "loss" in row]
    assert [e.step for e in losses] == [1, 2, 3]
    assert [round(e.value, 4) for e in losses] == [round(row["loss"], 4) for row in logged]


def test_tensorboard_without_logging_dir_uses_output_dir_runs(tmp_path, monkeypatch, tiny_llama_dir):
    pytest.importorskip("tensorboard")
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    out = _train(tmp_path, monkeypatch, tiny_llama_dir, {"report_to": "tensorboard", "max_steps": 1})
    assert list((out / "runs").glob("*/events.out.tfevents.*"))


def test_logging_dir_is_a_training_key_now():
    cfg = load_config_dict({**BASE, "logging_dir": "tb"})
    assert cfg.training.logging_dir == "tb"
    assert load_config_dict(BASE).training.logging_dir is None


def test_missing_tracker_packages_are_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX", "swanlab", "swanboard")
                        else real(name, *a))
    with pytest.raises(NotSupportedError, match=r"pip install 'tuneforge\[tensorboard\]'"):
        load_config_dict({**BASE, "report_to": "tensorboard"})
    with pytest.raises(NotSupportedError, match=r"pip install 'tuneforge\[swanlab\]'"):
        load_config_dict({**BASE, "use_swanlab": True})
    load_config_dict({**BASE, "report_to": "tensorboard", "do_train": False})  # chat/export configs: not needed
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "swanboard" else real(name, *a))
    with pytest.raises(NotSupportedError, match=r"swanlab\[dashboard\]"):
        load_config_dict({**BASE, "use_swanlab": True, "swanlab_mode": "local"})


def test_swanlab_offline_logs_the_run(tmp_path, monkeypatch, tiny_llama_dir):
    swanlab = pytest.importorskip("swanlab")
    monkeypatch.setenv("SWANLAB_SAVE_DIR", str(tmp_path / "swanlab_home"))
    monkeypatch.delenv("SWANLAB_MODE", raising=False)
    try:
        out = _train(tmp_path, monkeypatch, tiny_llama_dir, {
            "use_swanlab": True, "swanlab_mode": "offline", "swanlab_logdir": "swan_logs",
            "swanlab_project": "tf", "swanlab_run_name": "tiny", "report_to": "none",
            "swanlab_api_key": "never-used-offline"})
        run = swanlab.get_run()
        assert run is not None and run.config["finetuning_args"]["finetuning_type"] == "lora"
        assert run.config["model_args"]["model_name_or_path"] == str(tiny_llama_dir)
    finally:
        swanlab.finish()
    runs = list((tmp_path / "swan_logs").glob("run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.swanlab")), list((tmp_path / "swan_logs").rglob("*"))
    public = json.loads((out / "swanlab_public_config.json").read_text())
    assert public.get("mode") == "offline" and public.get("name") == "tiny"


def test_ppo_loop_callbacks_get_the_same_setup(tmp_path):
    pytest.importorskip("tensorboard")
    from transformers.integrations import TensorBoardCallback

    from tuneforge.train.callbacks import LogCallback
    from tuneforge.train.ppo import loop_callbacks
    from tuneforge.train.reporting import setup_reporting

    cfg = load_config_dict({**BASE, "stage": "ppo", "report_to": "tensorboard", "logging_dir": str(tmp_path / "tb"),
                            "output_dir": str(tmp_path / "out")})
    handler = loop_callbacks(cfg.training, LogCallback(str(tmp_path / "out")), None, None)
    setup_reporting(handler, cfg)
    board = next(c for c in handler.callbacks if isinstance(c, TensorBoardCallback))
    assert board.logging_dir == str(tmp_path / "tb")
