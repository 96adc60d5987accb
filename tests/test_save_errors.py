"""A full disk while saving: one message naming the step, the folder and what to do; no incomplete checkpoint left."""

from __future__ import annotations

import errno

from conftest import IDENTITY_ROWS, write_workspace
from tuneforge.train import save_errors
from tuneforge.train.save_errors import disk_full_error, is_disk_full

WRITER_ERROR = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 672507072 vs 672506964")


def test_a_writer_error_is_a_full_disk_only_when_the_disk_is_nearly_full():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"), free=10 * 2**30)
    assert is_disk_full(WRITER_ERROR, free=1 * 2**20)
    assert not is_disk_full(WRITER_ERROR, free=10 * 2**30)  # the same text with space left: something else
    assert not is_disk_full(RuntimeError("size mismatch for lm_head.weight"), free=0)


def test_only_the_incomplete_checkpoint_of_the_failed_step_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(save_errors, "free_bytes", lambda path: 3 * 2**20)
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "model.safetensors").write_text("x")
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    error = disk_full_error(WRITER_ERROR, tmp_path, 4, "a checkpoint")
    assert str(error).startswith(f"could not write a checkpoint at step 4 in {tmp_path}: the disk is full (3 MiB "
                                 "free). The incomplete checkpoint-4 was removed; the checkpoints saved before it are "
                                 "intact.")
    assert "`save_only_model: true`" in str(error) and "`save_total_limit: N`" in str(error)
    assert not (tmp_path / "checkpoint-4").exists() and (tmp_path / "checkpoint-2" / "model.safetensors").exists()
    complete = disk_full_error(WRITER_ERROR, tmp_path, 2, "the trained model")  # step 2's checkpoint is complete
    assert "removed" not in str(complete) and (tmp_path / "checkpoint-2").exists()
    assert disk_full_error(RuntimeError("size mismatch"), tmp_path, 2, "a checkpoint") is None


def test_a_run_whose_checkpoint_hits_a_full_disk_says_so_in_one_line(tmp_path, tiny_llama_dir, monkeypatch, capsys):
    from transformers import Trainer

    from tuneforge.cli.main import main

    config = {"model_name_or_path": str(tiny_llama_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
              "dataset": "tiny", "template": "chatml", "cutoff_len": 64, "output_dir": "out", "save_steps": 1,
              "per_device_train_batch_size": 4, "max_steps": 2, "report_to": "none"}
    write_workspace(tmp_path, monkeypatch, IDENTITY_ROWS, "tiny", config, "train.yaml")

    def full_disk(self, output_dir):  # what torch.save raises when the disk fills during optimizer.pt
        (tmp_path / "out" / "checkpoint-1" / "optimizer.pt").write_bytes(b"partial")
        raise WRITER_ERROR

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full_disk)
    monkeypatch.setattr(save_errors, "free_bytes", lambda path: 5 * 2**20)
    assert main(["train", "train.yaml"]) == 2
    err = capsys.readouterr().err
    assert "error: could not write a checkpoint at step 1 in out: the disk is full (5 MiB free)." in err
    assert "Traceback" not in err and not (tmp_path / "out" / "checkpoint-1").exists()
