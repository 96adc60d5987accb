"""Training runs lose nothing (issue 10): overwrite starts clean, resume only continues its own run, the log
never doubles back, Ctrl-C keeps a checkpoint, the same config gives the same adapter."""

from __future__ import annotations

import json
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import IDENTITY_ROWS, write_workspace
from log_capture import LogRecords
from tuneforge.cli.main import main
from tuneforge.train import workflow

ROWS = IDENTITY_ROWS


@pytest.fixture
def workspace(tmp_path, tiny_llama_dir, monkeypatch):
    config = {
        "model_name_or_path": str(tiny_llama_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "dataset": "tiny", "dataset_dir": "data", "template": "chatml", "cutoff_len": 64, "output_dir": "out",
        "logging_steps": 1, "save_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 5.0e-3,
        "max_steps": 4, "report_to": "none",
    }
    return write_workspace(tmp_path, monkeypatch, ROWS, "tiny", config, "train.yaml")


@contextmanager
def _with_callback(callback):
    """Inside the block, every trainer `tuneforge train` builds also gets `callback`."""
    build = workflow.build_trainer

    def build_with_callback(*args, **kwargs):
        trainer, log_callback = build(*args, **kwargs)
        trainer.add_callback(callback)
        return trainer, log_callback

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(workflow, "build_trainer", build_with_callback)
        yield


class AtStep(TrainerCallback):
    """Runs `action()` once, at the end of step `step`, after that step's log record."""

    def __init__(self, step: int, action) -> None:
        self.step, self.action, self.done = step, action, False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == self.step and not self.done and "loss" in (logs or {}):
            self.done = True
            self.action()


class DuringStep(AtStep):
    """Runs `action()` once, as step `step` begins (before its forward)."""

    def on_log(self, *args, **kwargs):
        pass

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step and not self.done:
            self.done = True
            self.action()


def _logged_steps(out: Path) -> list[int]:
    rows = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    return [r["current_steps"] for r in rows if "loss" in r]


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter_model.safetensors")


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- item 2: overwrite_output_dir starts clean; resume refuses another run's checkpoint -----------
def test_overwrite_output_dir_removes_the_old_checkpoints(workspace):
    assert main(["train", "train.yaml"]) == 0  # checkpoint-2, checkpoint-4
    with LogRecords("tuneforge") as records:
        assert main(["train", "train.yaml", "overwrite_output_dir=true", "max_steps=2"]) == 0
    assert sorted(p.name for p in (workspace / "out").glob("checkpoint-*")) == ["checkpoint-2"]
    assert ("overwrite_output_dir: removed 2 checkpoint(s) of the previous run in out: checkpoint-2, checkpoint-4"
            in records.messages)
    fresh = _adapter(workspace / "out")
    # the next run resumes the fresh run's checkpoint-2, never the old run's checkpoint-4
    assert main(["train", "train.yaml", "max_steps=2"]) == 0
    assert _same_weights(_adapter(workspace / "out"), fresh)


def test_resume_refuses_a_checkpoint_of_a_different_run(workspace, capsys):
    assert main(["train", "train.yaml", "max_steps=2"]) == 0
    capsys.readouterr()
    assert main(["train", "train.yaml", "learning_rate=1e-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: checkpoint {Path('out') / 'checkpoint-2'} was trained by a different run: learning_rate: "
                   "0.005 in the checkpoint, 0.001 now. Set `overwrite_output_dir: true` to start over (its "
                   "checkpoints are removed), choose another output_dir, or undo the change to resume.")
    (workspace / "data" / "tiny.json").write_text(json.dumps(ROWS[:8]), encoding="utf-8")
    assert main(["train", "train.yaml"]) == 2
    assert "training data: 16 encoded samples (fingerprint " in capsys.readouterr().err
    assert main(["train", "train.yaml", "max_steps=6"]) == 2  # more steps alone would be fine: data differs


def test_resume_with_more_steps_continues(workspace):
    assert main(["train", "train.yaml", "max_steps=2"]) == 0
    assert main(["train", "train.yaml", "max_steps=4"]) == 0
    assert _logged_steps(workspace / "out") == [1, 2, 3, 4]


# ---- item 4: the log of a killed-and-resumed run; a resume with nothing left ---------------------
def test_log_after_a_kill_and_resume_has_each_step_once(workspace):
    def kill():
        raise KeyboardInterrupt  # as if killed after step 3; its last checkpoint is checkpoint-2

    with _with_callback(AtStep(3, kill)):
        assert main(["train", "train.yaml"]) == 130
    assert _logged_steps(workspace / "out") == [1, 2, 3]
    assert main(["train", "train.yaml"]) == 0
    assert _logged_steps(workspace / "out") == [1, 2, 3, 4]


def test_resume_with_nothing_left_reports_the_runs_loss_not_zero(workspace, capsys):
    assert main(["train", "train.yaml"]) == 0
    losses = [json.loads(line)["loss"] for line in (workspace / "out" / "trainer_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    with LogRecords("tuneforge") as records:
        assert main(["train", "train.yaml"]) == 0
    results = json.loads((workspace / "out" / "train_results.json").read_text())
    assert results["train_loss"] == pytest.approx(sum(losses) / len(losses))
    assert any(m.startswith(f"nothing left to train: {Path('out') / 'checkpoint-4'} is already at step 4 of 4")
               for m in records.messages)


# ---- item 5 + 12: Ctrl-C keeps a checkpoint; the same config gives the same adapter ----------------
def test_two_runs_of_one_config_give_the_same_adapter(workspace):
    assert main(["train", "train.yaml", "output_dir=first"]) == 0
    assert main(["train", "train.yaml", "output_dir=second"]) == 0
    assert _same_weights(_adapter(workspace / "first"), _adapter(workspace / "second"))


def test_ctrl_c_saves_a_checkpoint_and_resuming_equals_an_uninterrupted_run(workspace, capsys):
    assert main(["train", "train.yaml", "output_dir=straight"]) == 0
    straight = _adapter(workspace / "straight")

    capsys.readouterr()
    with _with_callback(DuringStep(3, lambda: os.kill(os.getpid(), signal.SIGINT))):
        assert main(["train", "train.yaml", "output_dir=interrupted"]) == 130
    printed = capsys.readouterr()
    assert "Ctrl-C: stopping after the current step and saving a checkpoint" in printed.err
    # (sys.argv is pytest's here, so the command names the config file)
    assert (f"stopped at step 3 of 4: checkpoint saved in {Path('interrupted') / 'checkpoint-3'}; resume with: "
            f"tuneforge train {workspace / 'train.yaml'}") in printed.out
    assert (workspace / "interrupted" / "checkpoint-3" / "tuneforge_run.json").is_file()
    status = json.loads((workspace / "interrupted" / "running_status.json").read_text())
    assert status["status"] == "aborted"
    assert main(["train", "train.yaml", "output_dir=interrupted"]) == 0
    assert _same_weights(_adapter(workspace / "interrupted"), straight)


# ---- item 3: an interrupted final save; item 11: output_dir that cannot be used ------------------
def test_a_crash_during_the_final_save_leaves_old_or_new_files_never_a_mix(workspace):
    import tuneforge.utils.folders as folders

    assert main(["train", "train.yaml", "max_steps=2"]) == 0
    out = workspace / "out"
    old = (out / "adapter_model.safetensors").read_bytes()

    def crash_after_one_file(folder):
        saved = folder / folders.SAVED_DIRNAME
        first = sorted(saved.iterdir())[0]  # adapter_config.json moves, the weights stay behind
        os.replace(first, folder / first.name)
        raise SystemExit("killed while moving files")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit):
        patch.setattr(folders, "_roll_forward", crash_after_one_file)
        main(["train", "train.yaml", "max_steps=4"])
    assert (out / "adapter_model.safetensors").read_bytes() == old  # a mix on disk, but committed
    with LogRecords("tuneforge") as records:  # any reader finishes the committed save first
        assert main(["chat", "train.yaml", "adapter_name_or_path=out", "max_new_tokens=2", "do_sample=false",
                     "--prompt", "hi"]) == 0
    assert "finishing an interrupted save into out (its files were complete)" in records.messages
    assert (out / "adapter_model.safetensors").read_bytes() != old
    assert not (out / folders.SAVED_DIRNAME).exists()


def test_a_save_interrupted_before_its_commit_is_dropped_with_a_log_line(workspace):
    assert main(["train", "train.yaml", "max_steps=2"]) == 0
    staging = workspace / "out" / ".tuneforge-saving"
    staging.mkdir()
    (staging / "adapter_model.safetensors").write_bytes(b"half written")
    with LogRecords("tuneforge") as records:
        assert main(["train", "train.yaml", "max_steps=4"]) == 0
    assert any(m.startswith(f"removed {Path('out') / '.tuneforge-saving'}, the staging folder of a save that was "
                            "interrupted before it was complete") for m in records.messages)
    assert not staging.exists()


@pytest.mark.parametrize("make, expected", [
    (lambda root: (root / "out").write_text("notes"), "output_dir: out is a file; expected a folder"),
    (lambda root: (root / "blocked").write_text("x"), "output_dir: cannot write into blocked/out"),
])
def test_unusable_output_dir_is_one_clear_line(workspace, capsys, make, expected):
    make(workspace)
    output_dir = "out" if "is a file" in expected else "blocked/out"
    assert main(["train", "train.yaml", f"output_dir={output_dir}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {expected}")  # before any model loads: nothing else logged


def test_output_dir_that_is_the_adapter_trained_from_is_refused(workspace, capsys):
    assert main(["train", "train.yaml", "max_steps=2"]) == 0
    capsys.readouterr()
    assert main(["train", "train.yaml", "adapter_name_or_path=out", "overwrite_output_dir=true"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == ("error: output_dir: out is the adapter this run trains from; the final "
                                               "save would overwrite it. Choose another output_dir.")


# ---- item 12: every stage seeds before its model and adapters are built -------------------------
@pytest.mark.parametrize("stage, dataset, extra", [
    ("sft", "plain", {}), ("pt", "plain", {}), ("rm", "pairs", {}), ("dpo", "pairs", {}),
    ("kto", "feedback", {}), ("ppo", "plain", {"reward_model": "http://127.0.0.1:9/score", "reward_model_type": "api"}),
])
def test_every_stage_seeds_before_building_the_model(tiny_llama_dir, tmp_path, monkeypatch, stage, dataset, extra):
    import tuneforge.model.loader as loader
    import tuneforge.model.value_head as value_head
    from pref_helpers import make_cfg, write_data
    from tuneforge.train.tuner import run_train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    write_data(tmp_path)
    seeds = []

    class ModelBuilt(Exception):
        pass

    def record_seed(*args, **kwargs):
        seeds.append(torch.initial_seed())
        raise ModelBuilt

    monkeypatch.setattr(loader, "load_model", record_seed)
    monkeypatch.setattr(value_head, "load_value_head_model", record_seed)
    torch.manual_seed(999)  # whatever ran before in this process
    with pytest.raises(ModelBuilt):
        run_train(make_cfg(tiny_llama_dir, stage, dataset, tmp_path / "out", seed=1234, **extra))
    assert seeds == [1234]
