"""`--dry-run`: the plan of a run, checked without loading weights or writing anything (issue 13 item 4)."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import IDENTITY_ROWS, write_workspace
from tuneforge.cli.main import main


@pytest.fixture
def workspace(tmp_path, tiny_llama_dir, monkeypatch):
    config = {
        "model_name_or_path": str(tiny_llama_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "dataset": "tiny", "dataset_dir": "data", "template": "chatml", "cutoff_len": 64,
        "output_dir": "out/lora", "max_steps": 2, "report_to": "none",
    }
    root = write_workspace(tmp_path, monkeypatch, IDENTITY_ROWS + [{"instruction": "", "output": ""}], "tiny",
                           config, "train.yaml")

    def no_weights(*args, **kwargs):
        raise AssertionError("a dry run loaded weights")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", no_weights)
    return root


def test_plan_names_everything_and_touches_nothing(workspace, capsys):
    assert main(["train", "train.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "train: stage sft (supervised data), lora (rank 8, alpha 16, target all)" in out
    assert "one process, device cpu" in out
    assert "LlamaForCausalLM: 2 layers" in out
    assert "template    chatml" in out
    # 16 good rows + 1 empty one, reported as it would be dropped
    assert "tiny (alpaca, " in out and "17 rows, 16 used, 1 bad rows (invalid alpaca row)" in out
    assert "output_dir  out/lora (new)" in out
    assert out.rstrip().endswith("dry run: OK -- the real run would start")
    assert not (workspace / "out").exists()
    assert not (workspace / "cache").exists()  # no data cache written either


def test_every_problem_is_listed_and_the_exit_status_is_2(workspace, capsys):
    (workspace / "data" / "tiny.json").unlink()
    (workspace / "out").write_text("a file where the output folder should be")
    assert main(["train", "train.yaml", "template=no_such_template", "--dry-run"]) == 2
    out = capsys.readouterr().out
    refused = out.split("would be refused (3):")[1]
    assert "template: unknown template 'no_such_template'" in refused
    assert "tiny.json" in refused  # the missing data file, named
    assert "output_dir: " in refused and "is a file" in refused
    assert out.rstrip().endswith("the real run would stop; fix the above first")


def test_a_config_error_is_a_refused_plan(workspace, capsys):
    assert main(["train", "train.yaml", "learning_rate=0", "--dry-run"]) == 2
    out = capsys.readouterr().out
    assert "- config: command-line override: `learning_rate: 0`" in out


def test_a_hub_model_is_named_not_contacted(workspace, capsys, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise AssertionError("a dry run contacted the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert main(["train", "train.yaml", "model_name_or_path=Qwen/Qwen3-0.6B", "template=qwen3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "hub id Qwen/Qwen3-0.6B: not contacted in a dry run" in out
    assert "template    qwen3 (built-in)" in out


def test_an_existing_checkpoint_is_resumed_in_the_plan(workspace, capsys):
    checkpoint = workspace / "out" / "lora" / "checkpoint-1"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 1, "max_steps": 2}))
    assert main(["train", "train.yaml", "--dry-run"]) == 0
    assert "resumes from out/lora/checkpoint-1" in capsys.readouterr().out


def test_export_into_the_current_directory_is_refused(workspace, capsys):
    config = yaml.safe_load((workspace / "train.yaml").read_text())
    config.update({"export_dir": ".", "do_train": False})
    (workspace / "merge.yaml").write_text(yaml.safe_dump(config))
    assert main(["export", "merge.yaml", "--dry-run"]) == 2
    assert "export_dir: " in capsys.readouterr().out


def test_chat_and_eval_plans(workspace, capsys):
    assert main(["chat", "train.yaml", "--prompt", "hi", "--dry-run"]) == 0
    assert "chat with the model" in capsys.readouterr().out
    assert main(["eval", "recall", "train.yaml", "--samples", "3", "--no-drift", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "recall of the training facts" in out and "17 rows, 16 used" in out


def test_the_plan_names_the_launch(workspace, capsys, monkeypatch):
    monkeypatch.setenv("FORCE_TORCHRUN", "1")
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    assert main(["train", "train.yaml", "--dry-run"]) == 0
    assert "launcher    torchrun: 2 processes, device cpu (FORCE_TORCHRUN / several GPUs)" in capsys.readouterr().out
