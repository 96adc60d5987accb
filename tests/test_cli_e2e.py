"""End to end through the `tuneforge` command: train -> chat -> export on a tiny model, and the
one-line errors a user sees for bad input (no traceback unless --debug)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import IDENTITY_ROWS, write_workspace
from tuneforge.cli.main import main

ROWS = IDENTITY_ROWS


@pytest.fixture
def workspace(tmp_path, tiny_llama_dir, monkeypatch):
    config = {
        "model_name_or_path": str(tiny_llama_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "dataset": "tiny",
        "dataset_dir": "data",
        "template": "chatml",
        "cutoff_len": 64,
        "output_dir": "out/lora",
        "logging_steps": 1,
        "save_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 5.0e-3,
        "max_steps": 4,
        "plot_loss": True,
        "report_to": "none",
    }
    return write_workspace(tmp_path, monkeypatch, ROWS, "tiny", config, "train.yaml")


def test_train_chat_export(workspace, capsys):
    assert main(["train", "train.yaml"]) == 0
    out = workspace / "out" / "lora"
    for name in ("adapter_model.safetensors", "adapter_config.json", "trainer_log.jsonl", "data_report.json",
                 "training_loss.png", "checkpoint-4"):
        assert (out / name).exists(), name
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    # one record per logging step (+ LF's closing record of the run summary, which has no loss)
    assert [r["current_steps"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert {"current_steps", "total_steps", "loss", "lr", "epoch", "percentage", "elapsed_time",
            "remaining_time", "throughput", "total_tokens"} <= set(records[0])
    printed = capsys.readouterr().out
    assert "chat with it:" in printed and "adapter_name_or_path=" in printed

    base = ["model_name_or_path=" + str(yaml.safe_load(Path("train.yaml").read_text())["model_name_or_path"]),
            "template=chatml", "adapter_name_or_path=out/lora", "do_sample=false", "max_new_tokens=8"]
    assert main(["chat", *base, "--prompt", "Who are you?"]) == 0
    answer = capsys.readouterr().out.strip()
    assert answer  # random tiny model: any text, but generation ran through the adapter

    assert main(["export", *base, "export_dir=out/merged", "export_size=1"]) == 0
    merged = workspace / "out" / "merged"
    assert (merged / "config.json").is_file()
    assert any(merged.glob("*.safetensors"))
    assert "merge check" in capsys.readouterr().err


def test_rerun_resumes_and_says_so(workspace, capsys, caplog):
    assert main(["train", "train.yaml", "max_steps=2"]) == 0
    capsys.readouterr()
    # A second run into the same folder continues from checkpoint-2 instead of starting over.
    assert main(["train", "train.yaml", "max_steps=4"]) == 0
    logged = caplog.text + capsys.readouterr().err
    assert "Resuming from checkpoint" in logged and "checkpoint-2" in logged
    state = json.loads((workspace / "out" / "lora" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "train.yaml", "lora_rnak=4"], "did you mean `lora_rank`"),
        (["train", "train.yaml", "dataset=nope"], "nope"),
        (["train", "train.yaml", "template=qwen9"], "qwen9"),
        (["train", "train.yaml", "model_name_or_path=./missing-model"], "missing-model"),
        (["train", "train.yaml", "use_mca=true"], "not supported yet"),
        (["train", "train.yaml", "use_galore=true"], "`use_galore` cannot be used with `finetuning_type: lora`"),
        (["train", "missing.yaml"], "missing.yaml"),
        (["train", "train.yaml", "learning_rate=0"], "`learning_rate: 0` with `do_train: true`: nothing will change"),
        (["train", "train.yaml", "max_samples=0"], "`max_samples` must be at least 1"),
        (["train", "train.yaml", "--learning_rate"], "`--learning_rate` has no value"),
        (["train", "train.yaml", "dataset_dir=data/dataset_info.json"], "`dataset_dir` must be a folder"),
    ],
)
def test_bad_input_is_one_clear_line(workspace, capsys, args, expected):
    assert main(args) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    assert expected in last
    assert "Traceback" not in err


def test_wrong_column_mapping_is_one_clear_line(workspace, capsys):
    info = {"tiny": {"file_name": "tiny.json", "columns": {"prompt": "question", "response": "output"}}}
    (workspace / "data" / "dataset_info.json").write_text(json.dumps(info))
    assert main(["train", "train.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"error: dataset 'tiny' in {workspace / 'data' / 'dataset_info.json'}: `columns` maps prompt -> 'question', "
        "but no row of data/tiny.json has that column; its columns are 'instruction', 'input', 'output'. Fix the "
        "mapping, or remove it from `columns`.")
    assert "Traceback" not in err


def test_debug_shows_the_traceback(workspace):
    from tuneforge.errors import TuneforgeError

    with pytest.raises(TuneforgeError):
        main(["--debug", "train", "train.yaml", "lora_rnak=4"])


def test_malformed_row_is_reported_with_file_and_row(workspace, capsys):
    rows = json.loads((workspace / "data" / "tiny.json").read_text())
    rows[2] = {"instruction": "no output column here"}
    (workspace / "data" / "tiny.json").write_text(json.dumps(rows))
    assert main(["train", "train.yaml", "max_steps=1"]) == 0
    report = json.loads((workspace / "out" / "lora" / "data_report.json").read_text())
    text = json.dumps(report)
    assert "tiny.json" in text and "row 3" in text


def test_data_preview_marks_trained_tokens(workspace, capsys):
    assert main(["data", "preview", "train.yaml", "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "[[I am Forgey, made by the tuneforge team.<|im_end|>" in out
    assert "<|im_start|>user\nWho are you?<|im_end|>" in out


def test_data_options_belong_to_their_subcommand(workspace, capsys):
    """`-n` is the preview's, `--json` the check's: given to the other subcommand, each is refused, not ignored."""
    assert main(["data", "preview", "train.yaml", "--json"]) == 2
    assert "unknown key `json`" in capsys.readouterr().err
    assert main(["data", "check", "train.yaml", "-n", "5"]) == 2
    assert "override `-n`: expected `key=value`" in capsys.readouterr().err


def test_train_help_lists_keys(capsys):
    assert main(["train", "-h"]) == 0
    out = capsys.readouterr().out
    assert "lora_rank" in out and "cutoff_len" in out and "learning_rate" in out
