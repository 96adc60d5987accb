"""LF v1's token-budget micro-batches (`batching_strategy: dynamic_batching | dynamic_padding_free`): the greedy
grouping, the per-epoch sampler, the config checks, and an sft run whose micro-batches keep to the budget."""

from __future__ import annotations

import json

import pytest
import yaml

from tuneforge.cli.main import main
from tuneforge.config.parser import load_config_dict
from tuneforge.data.token_batches import TokenBudgetBatchSampler, token_budget_batches
from tuneforge.errors import ConfigError

LENGTHS = [5, 3, 8, 2, 2, 9, 1]


def test_padded_budget_counts_the_longest_sample_times_the_count():
    # [5,3]: 5x2=10 fits; +8: 8x3 > 10; [8]; +2: 8x2 > 10; [2,2]: 2x2; +9: 9x3 > 10; [9]; +1: 9x2 > 10; [1]
    assert token_budget_batches(range(7), LENGTHS, 10, padded=True) == [[0, 1], [2], [3, 4], [5], [6]]


def test_padding_free_budget_counts_the_sum_of_lengths():
    # [5,3]=8; +8 > 10; [8,2]=10; +2 > 10; [2]; +9 > 10; [9,1]=10
    assert token_budget_batches(range(7), LENGTHS, 10, padded=False) == [[0, 1], [2, 3], [4], [5, 6]]


def test_a_sample_over_the_budget_is_a_micro_batch_of_its_own():
    assert token_budget_batches([1, 0, 2], [12, 1, 1], 10, padded=False) == [[1], [0], [2]]


def test_sampler_is_seeded_per_epoch_and_covers_every_sample_once():
    lengths = [1 + (7 * i) % 13 for i in range(40)]
    sampler = TokenBudgetBatchSampler(lengths, 20, padded=False, seed=3)
    first = list(sampler)
    assert sorted(i for batch in first for i in batch) == list(range(40)) and len(sampler) == len(first)
    assert all(sum(lengths[i] for i in batch) <= 20 for batch in first)
    assert list(TokenBudgetBatchSampler(lengths, 20, padded=False, seed=3)) == first  # same seed, same batches
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(i for batch in sampler for i in batch) == list(range(40))
    ordered = TokenBudgetBatchSampler(lengths, 20, padded=False, seed=3, shuffle=False)
    assert [i for batch in ordered for i in batch] == list(range(40))


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    rows = [{"instruction": "Say " + "again " * (i % 5), "input": "", "output": f"{i} " * (1 + i % 4)}
            for i in range(24)]
    (tmp_path / "data" / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"rows": {"file_name": "rows.json"}}))
    return tmp_path


def _config(model_dir, **settings):
    return {"model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
            "dataset": "rows", "template": "empty", "cutoff_len": 32, "per_device_train_batch_size": 2,
            "output_dir": "out", "max_steps": 3, "logging_steps": 1, "report_to": "none", **settings}


@pytest.mark.parametrize("settings, message", [
    ({"batching_strategy": "dynamic_batching", "max_steps": -1}, "`dynamic_batching` needs `max_steps`"),
    ({"batching_strategy": "dynamic_padding_free", "packing": False}, "either `batching_strategy` \\(LF v1\\) or"),
    ({"batching_strategy": "padding_free", "neat_packing": True}, "either `batching_strategy` \\(LF v1\\) or"),
    ({"batching_strategy": "dynamic_padding_free", "stage": "dpo"}, "forms sft micro-batches; stage is `dpo`"),
])
def test_contradicting_settings_are_refused(workspace, tiny_llama_dir, settings, message):
    with pytest.raises(ConfigError, match=message):
        load_config_dict(_config(tiny_llama_dir, **settings))


@pytest.mark.parametrize("strategy", ["dynamic_batching", "dynamic_padding_free"])
def test_sft_micro_batches_keep_to_the_budget_and_train(workspace, tiny_llama_dir, strategy):
    from tuneforge.bench.runner import build_bench_trainer
    from tuneforge.model.attention import packed_segments, sample_token_count

    cfg = load_config_dict(_config(tiny_llama_dir, batching_strategy=strategy))
    trainer, bundle = build_bench_trainer(cfg)
    budget = 32 * 2
    lengths = sorted(len(ids) for ids in bundle.train["input_ids"])
    seen, samples_per_batch = [], []
    for batch in trainer.get_train_dataloader():
        ids = batch["input_ids"]
        if strategy == "dynamic_batching":  # padded rows: longest x count within the budget
            assert "attention_mask" in batch and (ids.numel() <= budget or ids.shape[0] == 1)
            seen += batch["attention_mask"].sum(1).tolist()
            samples_per_batch.append(ids.shape[0])
        else:  # one padding-free row: the samples' own tokens within the budget
            assert ids.shape[0] == 1 and sample_token_count(batch["position_ids"]) <= budget
            seen.append(sample_token_count(batch["position_ids"]))
            samples_per_batch.append(len(packed_segments(batch["position_ids"], ids.shape[1]) or [0]))
    assert max(samples_per_batch) > 2  # the budget, not per_device_train_batch_size (2), sizes them
    if strategy == "dynamic_batching":
        assert sorted(seen) == lengths  # every sample once
    else:
        assert sum(seen) == sum(lengths)
    (workspace / "train.yaml").write_text(yaml.safe_dump(_config(tiny_llama_dir, batching_strategy=strategy)))
    assert main(["train", "train.yaml"]) == 0
    log = [json.loads(line) for line in (workspace / "out" / "trainer_log.jsonl").read_text().splitlines()]
    assert max(row["current_steps"] for row in log if "loss" in row) == 3


@pytest.mark.parametrize("strategy", ["normal", "padding_free"])
def test_fixed_size_strategies_pad_or_concatenate(workspace, tiny_llama_dir, strategy):
    """`normal` / `padding_free` in an ordinary sft config: micro-batches of per_device_train_batch_size samples,
    padded (v0's `packing: false`) or as one padding-free row (tuneforge's default)."""
    from tuneforge.bench.runner import build_bench_trainer

    trainer, _ = build_bench_trainer(load_config_dict(_config(tiny_llama_dir, batching_strategy=strategy)))
    batch = next(iter(trainer.get_train_dataloader()))
    if strategy == "normal":
        assert batch["input_ids"].shape[0] == 2 and "attention_mask" in batch and "position_ids" not in batch
    else:
        assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
        assert int((batch["position_ids"][0] == 0).sum()) == 2
