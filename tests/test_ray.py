"""Ray training (issue 14): USE_RAY=1 / `ray_num_workers` runs `tuneforge train` as a Ray Train TorchTrainer on a local
Ray cluster; 2 CPU workers with batch B equal 1 process with batch 2B, as under torchrun (test_distributed.py)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from multiproc import log_rows, losses, max_diff, run_command, tiny_run_workspace
from tuneforge.config.parser import load_config
from tuneforge.errors import ConfigError, NotSupportedError

CPU_WORKERS = ('resources_per_worker={"CPU": 1}',)


@pytest.fixture
def workspace(tmp_path, tiny_llama_dir, monkeypatch):
    return tiny_run_workspace(tmp_path, tiny_llama_dir, monkeypatch)


# ------------------------------------------------------------------ config checks (no Ray started)
@pytest.fixture
def no_gpu(monkeypatch):
    from tuneforge.config import validate

    monkeypatch.setattr(validate, "cuda_available", lambda: False)
    monkeypatch.setattr(validate, "ray_available", lambda: True)
    for name in ("USE_RAY", "FORCE_TORCHRUN", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


def test_lf_default_gpu_resources_without_gpus_name_the_key(workspace, no_gpu):
    with pytest.raises(NotSupportedError, match=r'`resources_per_worker: \{"GPU": 1\}` \(LF\'s default\) gives each '
                                                r"Ray worker a GPU, and this machine has none"):
        load_config("train.yaml", ["ray_num_workers=2"])


def test_ray_key_checks(workspace, no_gpu, monkeypatch):
    with pytest.raises(ConfigError, match=r"`ray_num_workers` must be a whole number >= 1"):
        load_config("train.yaml", ["ray_num_workers=0"])
    with pytest.raises(ConfigError, match=r"`resources_per_worker` expects a mapping or a string, got \[1\]"):
        load_config("train.yaml", ["ray_num_workers=2", "resources_per_worker=[1]"])
    with pytest.raises(ConfigError, match=r"`resources_per_worker` must be a mapping \(or a JSON object\), got \[1\]"):
        load_config("train.yaml", ["ray_num_workers=2", "resources_per_worker='[1]'"])
    with pytest.raises(ConfigError, match=r"`resources_per_worker: \{CPU: 1\}` is not a mapping or a JSON object"):
        load_config("train.yaml", ["ray_num_workers=2", "resources_per_worker='{CPU: 1}'"])
    with pytest.raises(ConfigError, match=r"`resources_per_worker`: CPU: -1 is not a number >= 0"):
        load_config("train.yaml", ["ray_num_workers=2", 'resources_per_worker={"CPU": -1}'])
    # a JSON string works as in LF; an existing cluster (RAY_ADDRESS) may have the GPUs this machine lacks
    load_config("train.yaml", ["ray_num_workers=2", """resources_per_worker='{"CPU": 1}'"""])
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    load_config("train.yaml", ["ray_num_workers=2"])
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv("USE_RAY", "1")
    monkeypatch.setenv("FORCE_TORCHRUN", "1")
    with pytest.raises(ConfigError, match=r"Ray \(USE_RAY=1 or `ray_num_workers: 1`\) and FORCE_TORCHRUN=1 both"):
        load_config("train.yaml", CPU_WORKERS)


def test_ray_missing_names_the_extra(workspace, no_gpu, monkeypatch):
    from tuneforge.config import validate

    monkeypatch.setattr(validate, "ray_available", lambda: False)
    with pytest.raises(NotSupportedError, match=r"pip install 'tuneforge\[ray\]'"):
        load_config("train.yaml", ["ray_num_workers=2", *CPU_WORKERS])
    load_config("train.yaml", [])  # without Ray asked for, nothing needs it


def test_cluster_without_room_names_both_keys_and_worker_errors_are_one_line():
    from types import SimpleNamespace

    from tuneforge.cli.ray_launch import _check_cluster, _raise_tuneforge_error
    from tuneforge.errors import TuneforgeError

    cluster = SimpleNamespace(cluster_resources=lambda: {"CPU": 16.0, "GPU": 2.0})
    _check_cluster(cluster, {"GPU": 1}, 2)
    with pytest.raises(NotSupportedError, match=r'`ray_num_workers: 4` x `resources_per_worker: \{"GPU": 1\}` does not '
                                                r"fit this Ray cluster \(GPU: 4 needed, 2 in the cluster\)"):
        _check_cluster(cluster, {"GPU": 1}, 4)
    failed = SimpleNamespace(worker_failures={1: RuntimeError("x"), 0: SimpleNamespace(cause=ConfigError("bad"))})
    with pytest.raises(TuneforgeError, match=r"^Ray worker: bad$"):
        _raise_tuneforge_error(failed)
    _raise_tuneforge_error(SimpleNamespace(worker_failures={0: RuntimeError("x")}))  # anything else: Ray's own error


def test_ray_is_asked_for_by_use_ray_or_several_workers():
    from types import SimpleNamespace

    from tuneforge.cli.ray_launch import wants_ray

    def cfg(workers, do_train=True):
        return SimpleNamespace(training=SimpleNamespace(ray_num_workers=workers, do_train=do_train))

    assert not wants_ray(cfg(1), {}) and wants_ray(cfg(2), {}) and wants_ray(cfg(1), {"USE_RAY": "1"})
    assert not wants_ray(cfg(2), {"LOCAL_RANK": "0"})  # inside a worker (Ray's or torchrun's): train here
    assert not wants_ray(cfg(2, do_train=False), {})


# ------------------------------------------------------------------ 2 Ray workers = 1 process with 2x the batch
@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="Ray Train is not installed (pip install 'tuneforge[ray]')")
def test_two_ray_workers_equal_one_process_with_twice_the_batch(workspace, one_process_runs):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    one_process_runs(workspace, "one")
    output = run_command(workspace, [sys.executable, "-m", "tuneforge", "train", "train.yaml", "output_dir=two",
                                     "per_device_train_batch_size=4", "ray_num_workers=2", *CPU_WORKERS,
                                     "ray_run_name=tiny", "ray_storage_path=ray_saves"],
                         {"RAY_DEDUP_LOGS": "0"}, timeout=300)
    assert "Ray: 2 worker(s)" in output
    assert "distributed: world size 2, backend gloo, devices cpu x2; batch 4 per device x 1 accumulation = 8" in output
    assert len(losses(workspace / "two")) == 4
    assert losses(workspace / "two") == pytest.approx(losses(workspace / "one"), abs=1e-5)
    one, two = log_rows(workspace / "one"), log_rows(workspace / "two")
    assert [r["total_tokens"] for r in two if "loss" in r] == [r["total_tokens"] for r in one if "loss" in r]
    a = load_file(workspace / "one" / "adapter_model.safetensors")
    b = load_file(workspace / "two" / "adapter_model.safetensors")
    assert max_diff(a, b) < 1e-5
    config = json.loads((workspace / "two" / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    PeftModel.from_pretrained(base, workspace / "two")  # the adapter loads with peft
    # Ray's run folder: <ray_storage_path>/<ray_run_name>, with a checkpoint that is the trained output_dir
    run = workspace / "ray_saves" / "tiny"
    assert run.is_dir()
    saved = [p for p in run.rglob("adapter_model.safetensors")]
    assert saved and max_diff(load_file(saved[0]), b) == 0
