"""Shared by the several-process tests (test_distributed, test_deepspeed, test_fsdp): a tiny LoRA sft workspace,
`tuneforge train` in 1 or N CPU processes (FORCE_TORCHRUN, gloo), and reading what a run wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import IDENTITY_ROWS, write_workspace

# 32 rows, 4 steps of 8 samples: 1 process x batch 8 or 2 processes x batch 4
TINY_RUN = {"stage": "sft", "do_train": True, "finetuning_type": "lora", "dataset": "tiny", "template": "chatml",
            "cutoff_len": 64, "output_dir": "out", "logging_steps": 1, "save_strategy": "no",
            "per_device_train_batch_size": 8, "learning_rate": 5.0e-3, "max_steps": 4, "seed": 7, "report_to": "none"}


def tiny_run_workspace(tmp_path: Path, model_dir: Path, monkeypatch) -> Path:
    rows = [dict(row, output=f"{row['output']} #{i}") for i, row in enumerate(IDENTITY_ROWS * 2)]
    config = {"model_name_or_path": str(model_dir), **TINY_RUN}
    return write_workspace(tmp_path, monkeypatch, rows, "tiny", config, "train.yaml")


def run_command(root: Path, command: list[str], env_extra: dict | None = None, timeout: int = 600) -> str:
    """Run `command` in `root` outside any launcher the tests themselves may be under; its output (it must pass)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        env.pop(name, None)
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def train(root: Path, *overrides: str, processes: int = 1) -> str:
    """`tuneforge train train.yaml <overrides>` in `processes` CPU processes; its output."""
    env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(processes)} if processes > 1 else {}
    return run_command(root, [sys.executable, "-m", "tuneforge", "train", "train.yaml", *overrides], env)


def log_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "trainer_log.jsonl").read_text().splitlines()]


def losses(folder: Path) -> list[float]:
    return [row["loss"] for row in log_rows(folder) if "loss" in row]


def max_diff(a: dict, b: dict) -> float:
    """Largest difference of two state dicts with the same whole tensors (not ZeRO-3 / FSDP shards)."""
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape for k in a)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
