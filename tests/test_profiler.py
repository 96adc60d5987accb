"""`enable_torch_profiler` (LF 0.9.5): traces of the scheduled training steps, one folder per process."""

from __future__ import annotations

import json

from conftest import IDENTITY_ROWS, write_workspace
from tuneforge.cli.main import main


def test_profiler_writes_a_trace_of_the_recorded_steps(tmp_path, tiny_llama_dir, monkeypatch):
    config = {"model_name_or_path": str(tiny_llama_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
              "dataset": "tiny", "dataset_dir": "data", "template": "chatml", "cutoff_len": 64, "output_dir": "out",
              "per_device_train_batch_size": 2, "max_steps": 4, "report_to": "none", "enable_torch_profiler": True,
              "profiler_wait_steps": 1, "profiler_warmup_steps": 1, "profiler_active_steps": 2,
              "profiler_with_stack": False}
    write_workspace(tmp_path, monkeypatch, IDENTITY_ROWS, "tiny", config, "train.yaml")
    assert main(["train", "train.yaml"]) == 0
    traces = list((tmp_path / "out" / "profiler" / "rank_0").glob("*.pt.trace.json"))
    assert len(traces) == 1  # one cycle (profiler_repeat: 1)
    events = json.loads(traces[0].read_text())["traceEvents"]
    steps = {e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")}
    assert steps == {"ProfilerStep#2", "ProfilerStep#3"}  # after 1 skipped and 1 warm-up step: the 2 recorded
    assert any(e.get("name") == "aten::mm" for e in events)  # the model's work is in it
