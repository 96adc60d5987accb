"""Values that can only be mistakes are refused when the config loads, before any model is read:
each message names the file (or the command-line override), the key, what was found and what is
expected."""

from __future__ import annotations

import logging

import pytest

from tuneforge.config import load_config, load_config_dict, parse_overrides
from tuneforge.config import validate
from tuneforge.errors import ConfigError

TRAIN = {"model_name_or_path": "some/model", "do_train": True, "dataset": "a", "output_dir": "out"}


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    monkeypatch.setattr(validate, "cuda_available", lambda: False)
    monkeypatch.setattr(validate, "mps_available", lambda: False)
    monkeypatch.setattr(validate, "bitsandbytes_version", lambda: None)


@pytest.mark.parametrize("key, value, message", [
    ("learning_rate", 0, "`learning_rate: 0` with `do_train: true`: nothing will change, the weights stay as they "
                         "are; set a positive value such as 1.0e-4"),
    ("learning_rate", -1e-4, "`learning_rate` must be positive, got -0.0001"),
    ("per_device_train_batch_size", 0, "`per_device_train_batch_size` must be at least 1, got 0"),
    ("max_steps", 0, "`max_steps: 0` with `do_train: true` is ambiguous (no step at all, or no limit?); set a "
                     "positive number of steps, or remove `max_steps` (default -1) to train for `num_train_epochs`"),
    ("max_samples", 0, "`max_samples` must be at least 1 (leave it unset to use every row), got 0"),
    ("max_samples", -5, "`max_samples` must be at least 1 (leave it unset to use every row), got -5"),
], ids=["learning_rate-0", "learning_rate-negative", "batch_size-0", "max_steps-0", "max_samples-0",
        "max_samples-negative"])
def test_values_that_can_only_be_mistakes(key, value, message):
    with pytest.raises(ConfigError) as err:
        load_config_dict({**TRAIN, key: value}, source="run.yaml")
    assert str(err.value) == f"run.yaml: {message}"
    with pytest.raises(ConfigError) as err:  # the same value from the command line names the override
        load_config_dict(TRAIN, source="run.yaml", overrides=[f"{key}={value}"])
    assert str(err.value) == f"command-line override: {message}"


def test_sensible_neighbours_still_load():
    cfg = load_config_dict({**TRAIN, "learning_rate": 1e-4, "per_device_train_batch_size": 1, "max_steps": 1,
                            "max_samples": 1})
    assert (cfg.training.max_steps, cfg.data.max_samples) == (1, 1)
    assert load_config_dict(TRAIN).training.max_steps == -1  # HF's default: train for num_train_epochs
    # without training a zero learning rate or max_steps changes nothing anyone asked for (predict, export)
    load_config_dict({"model_name_or_path": "m", "learning_rate": 0, "max_steps": 0})


def test_dataset_dir_that_is_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text("{}")
    with pytest.raises(ConfigError) as err:
        load_config_dict({**TRAIN, "dataset_dir": "data/dataset_info.json"}, source="run.yaml")
    assert str(err.value) == ("run.yaml: `dataset_dir` must be a folder (the one that holds dataset_info.json), "
                              "got the file 'data/dataset_info.json'; set `dataset_dir: data`")
    config = tmp_path / "cfg"
    config.mkdir()
    (config / "train.json").write_text("[]")  # found next to the config file, not in the working directory
    path = config / "run.yaml"
    path.write_text("model_name_or_path: m\ndataset_dir: train.json\n")
    with pytest.raises(ConfigError, match=r"run.yaml: `dataset_dir` must be a folder .* got the file 'train.json'"):
        load_config(path)
    assert load_config_dict({**TRAIN, "dataset_dir": "data"}).data.dataset_dir == "data"
    assert load_config_dict({**TRAIN, "dataset_dir": "ONLINE"}).data.dataset_dir == "ONLINE"


@pytest.mark.parametrize("overrides, flag", [
    (["--learning_rate"], "--learning_rate"),  # the value was forgotten at the end
    (["--learning_rate", "--num_train_epochs", "2"], "--learning_rate"),  # before: learning_rate 'true'
    (["--output_dir"], "--output_dir"),  # before: output_dir 'true', silently
    (["--max-samples", "lora_rank=8"], "--max-samples"),
], ids=["at-the-end", "before-the-next-flag", "string-key", "before-key=value"])
def test_flag_override_without_a_value(tmp_path, overrides, flag):
    path = tmp_path / "run.yaml"
    path.write_text("model_name_or_path: m\ndo_train: true\ndataset: a\noutput_dir: out\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    name = flag[2:].replace("-", "_")
    assert str(err.value) == (f"command-line override `{flag}` has no value; expected `{flag} VALUE` or "
                              f"`{name}=VALUE` (only true/false keys may be given without a value)")


def test_true_false_flags_and_unknown_keys_keep_their_meaning(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model_name_or_path: m\ndataset: a\noutput_dir: out\n")
    cfg = load_config(path, ["--do_train", "--plot_loss", "--learning_rate", "2e-4", "--max_samples="])
    assert (cfg.training.do_train, cfg.finetuning.plot_loss, cfg.data.max_samples) == (True, True, None)
    with pytest.raises(ConfigError, match="unknown key `lerning_rate`; did you mean `learning_rate`?"):
        load_config(path, ["--lerning_rate"])
    assert parse_overrides(["--learning_rate"]) == {"learning_rate": True}  # no key catalogue: no judgement


def test_json_config_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('\ufeff{"model_name_or_path": "m", "lora_rank": 4}', encoding="utf-8")
    assert load_config(path, require_output_dir=False).finetuning.lora_rank == 4


@pytest.mark.parametrize("flags, bf16", [({"avx2", "fma"}, False), ({"avx512f", "amx_bf16"}, True),
                                         ({"avx512f", "avx512_bf16"}, True)])
def test_auto_bf16_is_bf16_only_where_the_cpu_computes_it(monkeypatch, caplog, flags, bf16):
    from tuneforge.train.workflow import log_precision
    from tuneforge.utils import hardware

    from log_capture import LogRecords

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    caplog.set_level(logging.INFO, logger="tuneforge")
    cfg = load_config_dict({**TRAIN, "auto_bf16": True})
    assert (cfg.training.bf16, cfg.training.use_cpu) == (bf16, True)
    with LogRecords("tuneforge") as logged:
        log_precision(cfg)
    assert logged.messages == ["auto_bf16: bf16 mixed precision (a CPU with amx_bf16 or avx512_bf16)" if bf16 else
                               "auto_bf16: float32 (bf16 is native only on a CPU with amx_bf16 or avx512_bf16)"]
    with LogRecords("tuneforge") as logged:  # bf16 asked for by hand: a warning where it is emulated
        log_precision(load_config_dict({**TRAIN, "bf16": True}))
    assert [m.split(":")[:2] for m in logged.messages] == ([] if bf16 else [["bf16", " true on a CPU without amx_bf16 / avx512_bf16"]])


@pytest.mark.parametrize("key", ["bf16", "fp16", "pure_bf16"])
def test_auto_bf16_with_a_precision_of_its_own_is_refused(key):
    with pytest.raises(ConfigError) as err:
        load_config_dict({**TRAIN, "auto_bf16": True, key: True}, source="run.yaml")
    assert str(err.value) == ("run.yaml: `auto_bf16` chooses the precision itself (bf16 where the device computes it "
                              f"natively, else float32); remove it or `{key}`")
