"""Several processes (issue 14): the torchrun launch as LF does it, and 2 gloo CPU processes with batch B
matching 1 process with batch 2B -- same loss curve, same weights, one writer, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_workspace
from multiproc import TINY_RUN, log_rows, losses, max_diff, tiny_run_workspace, train
from tuneforge.cli.launch import torchrun_command
from tuneforge.errors import ConfigError


# ------------------------------------------------------------------ the launch command
def test_no_launch_for_one_device_or_inside_torchrun():
    assert torchrun_command(["x.yaml"], {}, 1) is None
    assert torchrun_command(["x.yaml"], {"FORCE_TORCHRUN": "1", "LOCAL_RANK": "0"}, 4) is None


def test_forced_launch_reads_lf_variables():
    env = {"FORCE_TORCHRUN": "1", "NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "4",
           "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29555"}
    command = torchrun_command(["x.yaml", "lr=1"], env, 0)
    assert command[1:] == ["-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", "1", "--nproc-per-node",
                           "4", "--master-addr", "10.0.0.1", "--master-port", "29555", "-m", "tuneforge", "train",
                           "x.yaml", "lr=1"]


def test_several_gpus_launch_one_process_each_and_elastic_keys():
    command = torchrun_command(["x.yaml"], {"RDZV_ID": "job7", "MIN_NNODES": "1", "MAX_NNODES": "3",
                                            "MAX_RESTARTS": "2", "MASTER_PORT": "29600"}, 8)
    assert command[3:15] == ["--nnodes", "1:3", "--nproc-per-node", "8", "--rdzv-id", "job7", "--rdzv-backend",
                             "c10d", "--rdzv-endpoint", "127.0.0.1:29600", "--max-restarts", "2"]


def test_bad_launch_variable_is_one_clear_message():
    with pytest.raises(ConfigError, match=r"NPROC_PER_NODE='two': expected a whole number >= 1"):
        torchrun_command(["x.yaml"], {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "two"}, 0)


# ------------------------------------------------------------------ 2 processes = 1 process with 2x the batch
@pytest.fixture
def workspace(tmp_path, tiny_llama_dir, monkeypatch):
    return tiny_run_workspace(tmp_path, tiny_llama_dir, monkeypatch)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_two_processes_equal_one_with_twice_the_batch_and_resume_as_one_uninterrupted_run(workspace, one_process_runs):
    one_process_runs(workspace, "one")
    two = ("per_device_train_batch_size=4", "save_strategy=steps", "save_steps=2")
    output = train(workspace, "output_dir=two", *two, processes=2)
    assert "distributed: world size 2, backend gloo, devices cpu x2; batch 4 per device x 1 accumulation = 8" in output
    assert "Chunked LM loss not used" not in output  # the label-only loss stays on under DDP
    assert output.count("[tuneforge] done in") == 1 and output.count("data report") <= 1  # rank 0 speaks

    log_one, log_two = log_rows(workspace / "one"), log_rows(workspace / "two")
    assert len(losses(workspace / "two")) == 4
    assert losses(workspace / "two") == pytest.approx(losses(workspace / "one"), abs=1e-5)
    # tokens are counted over both processes: the same totals as one process
    assert [r["total_tokens"] for r in log_two if "loss" in r] == [r["total_tokens"] for r in log_one if "loss" in r]
    a, b = _weights(workspace / "one"), _weights(workspace / "two")
    assert max_diff(a, b) < 1e-5
    results = json.loads((workspace / "two" / "train_results.json").read_text())
    assert results["total_tokens"] == json.loads((workspace / "one" / "train_results.json").read_text())["total_tokens"]

    # resumed in 2 processes from the checkpoint of step 2: only steps 3 and 4 run, and end where the whole run did
    resumed = train(workspace, "output_dir=resumed", *two, "resume_from_checkpoint=two/checkpoint-2", processes=2)
    assert "checkpoint-2" in resumed
    assert [r["current_steps"] for r in log_rows(workspace / "resumed") if "loss" in r] == [3, 4]
    assert max_diff(b, _weights(workspace / "resumed")) < 1e-6


def test_two_processes_kto_equals_one_with_twice_the_batch(tmp_path, tiny_llama_dir, monkeypatch):
    """kto (LoRA; the reference is the policy with its adapter disabled) in 2 processes x 4 samples = 1 process x 8:
    the same losses, logged rewards and adapter. Its KL reference point is averaged over the processes (as TRL
    gathers it), its rewards are means over the chosen / rejected samples of both processes, and its log-probs --
    sequence_logps, dpo's too -- stay label-only under DDP (tests/test_stage_dpo.py). (dpo the same way, and under
    FSDP2 and ZeRO-2/3: checked by hand, bench/RESULTS.md section 18; one stage here keeps the suite short.)"""
    from pref_helpers import DATASET_INFO, kto_rows

    name = "feedback"
    config = {"model_name_or_path": str(tiny_llama_dir), **TINY_RUN, "stage": "kto", "dataset": name,
              "max_steps": 2, "learning_rate": 1.0e-2}
    root = write_workspace(tmp_path, monkeypatch, kto_rows(16), name, config, "train.yaml")
    (root / "data" / "dataset_info.json").write_text(json.dumps({name: DATASET_INFO[name]}))
    train(root, "output_dir=one")
    train(root, "output_dir=two", "per_device_train_batch_size=4", processes=2)
    one, two = log_rows(root / "one"), log_rows(root / "two")
    assert losses(root / "two") == pytest.approx(losses(root / "one"), abs=1e-5) and len(losses(root / "one")) == 2
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert [r[key] for r in two if "loss" in r] == pytest.approx([r[key] for r in one if "loss" in r], abs=1e-5)
    # Adam's first steps move every weight by ~lr (1e-2): float rounding of the two half-batch gradients shows
    # in weights whose gradient is near zero, still far below a step
    assert max_diff(_weights(root / "one"), _weights(root / "two")) < 1e-4


def _agree(rank: int, store_path: str, flags: list[bool], results) -> None:
    import torch.distributed as dist

    from tuneforge.utils.distributed import any_rank

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=len(flags))
    results[rank] = any_rank(flags[rank])
    dist.destroy_process_group()


def test_a_stop_seen_by_one_rank_stops_every_rank(tmp_path):
    """STOP_REQUESTED (or Ctrl-C) seen by one process becomes every process's decision at that step."""
    import torch.multiprocessing as mp

    for flags in ([False, True], [False, False]):
        store = tmp_path / f"store{flags[1]}"
        results = mp.Manager().dict()
        mp.spawn(_agree, args=(str(store), flags, results), nprocs=2)
        assert dict(results) == {0: any(flags), 1: any(flags)}
