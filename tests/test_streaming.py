"""`streaming: true` (+ `buffer_size`): the datasets are encoded on the fly as IterableDatasets (data/streaming.py)
with LLaMA-Factory's limits (max_steps required, no max_samples, integer val_size)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conftest import IDENTITY_ROWS, data_run_config, write_workspace
from tuneforge.cli.main import main
from tuneforge.config.parser import load_config_dict
from tuneforge.errors import ConfigError, DataError

BASE = {"model_name_or_path": "m", "dataset": "d", "output_dir": "o", "do_train": True}
ROWS = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer number {i}."} for i in range(40)]


def _samples(dataset) -> list[tuple]:
    return [tuple(tuple(sample[key]) for key in sorted(sample)) for sample in dataset]


def _bundles(tmp_path, monkeypatch, tokenizer, stage="sft", **data):
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.data.templates import template_for

    write_workspace(tmp_path, monkeypatch, ROWS + [{"instruction": "", "input": "", "output": ""}], "rows", {}, "x.yaml")
    cfg = data_run_config("rows", template="chatml", cutoff_len=64, **data)
    template = template_for(cfg.data, tokenizer) if stage != "pt" else None
    plain = build_datasets(cfg, tokenizer, template, stage)
    streamed_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, streaming=True, buffer_size=8))
    return plain, build_datasets(streamed_cfg, tokenizer, template, stage)


@pytest.mark.parametrize("stage, data", [("sft", {}), ("sft", {"packing": True}), ("pt", {})])
def test_streamed_samples_equal_the_encoded_ones(tmp_path, monkeypatch, tiny_tokenizer, stage, data):
    from datasets import IterableDataset

    plain, streamed = _bundles(tmp_path, monkeypatch, tiny_tokenizer, stage, **data)
    assert isinstance(streamed.train, IterableDataset)
    samples = _samples(streamed.train)
    assert sorted(samples) == sorted(_samples(plain.train))  # same encodings (pt, packing: batch of 1000 >= rows)
    assert samples != _samples(plain.train) or stage == "pt"  # shuffled with the buffer
    assert samples == _samples(streamed.train)  # the same seed, the same order
    stats = streamed.report.datasets["train:rows"]
    assert stats.rows_read == 41 * 2  # the rows were read (and counted) while iterating: twice
    assert "streamed" in streamed.report.format().splitlines()[0]


def test_integer_val_size_takes_the_first_shuffled_samples(tmp_path, monkeypatch, tiny_tokenizer):
    plain, streamed = _bundles(tmp_path, monkeypatch, tiny_tokenizer, val_size=5)
    train, evaluation = _samples(streamed.train), _samples(streamed.eval)
    assert len(evaluation) == 5 and len(train) == 35 and not set(train) & set(evaluation)
    assert sorted(train + evaluation) == sorted(_samples(plain.train) + _samples(plain.eval))


def test_a_dataset_without_usable_rows_fails_before_training(tmp_path, monkeypatch, tiny_tokenizer):
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.data.templates import template_for

    write_workspace(tmp_path, monkeypatch, [{"instruction": "", "input": "", "output": ""}] * 3, "empty", {}, "x.yaml")
    cfg = data_run_config("empty", template="chatml", streaming=True)
    with pytest.raises(DataError, match="no train samples"):
        build_datasets(cfg, tiny_tokenizer, template_for(cfg.data, tiny_tokenizer), "sft")


def test_lf_limits_of_streaming():
    load_config_dict({**BASE, "streaming": True, "max_steps": 3, "buffer_size": 4, "val_size": 2})
    with pytest.raises(ConfigError, match=r"`streaming: true` needs `max_steps`"):
        load_config_dict({**BASE, "streaming": True})
    with pytest.raises(ConfigError, match="`max_samples` cannot be used with `streaming: true`"):
        load_config_dict({**BASE, "streaming": True, "max_steps": 3, "max_samples": 10})
    with pytest.raises(ConfigError, match="`val_size` must be a number of samples"):
        load_config_dict({**BASE, "streaming": True, "max_steps": 3, "val_size": 0.1})


def test_streamed_training_runs_max_steps(tmp_path, tiny_llama_dir, monkeypatch, capsys):
    config = {"model_name_or_path": str(tiny_llama_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
              "dataset": "tiny", "dataset_dir": "data", "template": "chatml", "cutoff_len": 64,
              "output_dir": "out/stream", "logging_steps": 1, "save_steps": 100, "per_device_train_batch_size": 4,
              "learning_rate": 5.0e-3, "max_steps": 6, "streaming": True, "buffer_size": 4, "report_to": "none"}
    write_workspace(tmp_path, monkeypatch, IDENTITY_ROWS, "tiny", config, "train.yaml")  # 16 rows: 4 batches
    assert main(["train", "train.yaml"]) == 0
    out = tmp_path / "out" / "stream"
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["current_steps"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]  # past one pass of the data
    assert (out / "adapter_model.safetensors").is_file()
    assert "data: streamed" in capsys.readouterr().out
    assert main(["train", "train.yaml", "max_steps=-1"]) == 2
    assert "`streaming: true` needs `max_steps`" in capsys.readouterr().err
