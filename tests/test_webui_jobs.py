"""JobManager on a tiny model: a real `tuneforge train <yaml>` subprocess started, followed, aborted, re-attached."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio")

from test_webui_args import webui_workspace as workspace, write_data  # noqa: E402,F401 (a fixture)
from tuneforge.webui import args  # noqa: E402
from tuneforge.webui.jobs import JOB_LOG, JOB_YAML, JobBusyError, JobManager  # noqa: E402




def tiny_config(model_dir: Path, name: str, **values) -> dict:
    ui = {"model_path": str(model_dir), "template": "chatml", "dataset": ["tiny"], "dataset_dir": "data",
          "learning_rate": "5e-3", "cutoff_len": 64, "per_device_train_batch_size": 4,
          "gradient_accumulation_steps": 1, "logging_steps": 1, "output_dir": name, **values}
    config = args.build_train_config(ui, "saves")
    args.validate(config)
    return config


def wait_for(predicate, timeout: float, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("timed out")


def test_job_runs_to_the_end_and_reports_progress(workspace, tiny_llama_dir):
    manager = JobManager(workspace / "state", workdir=workspace, threads=1)
    assert manager.snapshot().status == "idle"
    config = tiny_config(tiny_llama_dir, "run", max_steps=4, save_steps=2)
    first = manager.start(config, note="new run")
    assert first.status in ("starting", "running")
    with pytest.raises(JobBusyError, match=r"^a job is already running \(output_dir .*run, pid \d+\); "
                                           r"abort it or wait until it finishes before starting another$"):
        manager.start(config)
    snap = manager.wait(timeout=120)
    assert snap.status == "finished", snap.log_tail
    out = workspace / "saves" / tiny_llama_dir.name / "lora" / "run"
    assert snap.output_dir == str(out)
    assert (snap.current_steps, snap.total_steps, snap.percentage, snap.remaining) == (4, 4, 100.0, "0:00:00")
    assert [step for step, _ in snap.losses] == [1, 2, 3, 4]
    assert all(loss > 0 for _, loss in snap.losses) and snap.throughput and snap.throughput > 0
    assert "[tuneforge] done in" in snap.log_tail
    assert (out / "adapter_model.safetensors").is_file() and (out / "checkpoint-4").is_dir()
    assert (out / JOB_YAML).read_text().startswith(f"# tuneforge train {out / JOB_YAML}\n")
    assert (out / JOB_LOG).is_file()
    assert args.list_checkpoints("saves", str(tiny_llama_dir), "lora") == ["run", "run/checkpoint-2", "run/checkpoint-4"]

    # the same folder again resumes (and the UI says so before starting)
    kind, note = args.describe_output_dir(out)
    assert kind == "resume" and note.endswith("training resumes from checkpoint-4 (step 4 of 4)")


def test_prediction_job_writes_predictions_and_scores(workspace, tiny_llama_dir):
    from tuneforge.webui.components.eval_tab import scores_text
    from tuneforge.webui.components.train_tab import render_progress

    manager = JobManager(workspace / "state", workdir=workspace, threads=1)
    model = {"model_path": str(tiny_llama_dir), "template": "chatml"}
    config = args.build_predict_config(model, {"eval_dataset": ["tiny"], "eval_max_samples": 3, "max_new_tokens": 4,
                                               "eval_output_dir": "eval1"}, "saves")
    args.validate(config)
    manager.start(config)
    snap = manager.wait(timeout=120)
    assert (snap.kind, snap.status) == ("predict", "finished"), snap.log_tail
    out = workspace / "saves" / tiny_llama_dir.name / "lora" / "eval1"
    assert len((out / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()) == 3
    assert (snap.current_steps, snap.total_steps, snap.percentage) == (3, 3, 100.0)
    assert 'data-kind="predict" data-status="finished"' in render_progress(snap, "en", "tf-eval-progress")
    assert f"Finished. Predictions and scores in {out}" in render_progress(snap, "en")
    scores = scores_text(snap, "en")
    assert scores.startswith("BLEU-4 ") and "(3 rows, " in scores
    assert f"predictions: {out / 'generated_predictions.jsonl'}" in scores
    assert "预测结果" in scores_text(snap, "zh")


def test_abort_keeps_a_checkpoint_and_a_new_manager_reattaches(workspace, tiny_llama_dir):
    manager = JobManager(workspace / "state", workdir=workspace, threads=1)
    config = tiny_config(tiny_llama_dir, "long", max_steps=5000, save_steps=10000)
    manager.start(config)
    wait_for(lambda: manager.snapshot().status == "running" and manager.snapshot().current_steps >= 2, 90)

    # a UI restarted while the job runs finds it through the state file (no Popen handle)
    again = JobManager(workspace / "state", workdir=workspace, threads=1)
    assert again.is_running()
    snap = again.snapshot()
    assert snap.status == "running" and snap.pid == manager.snapshot().pid and snap.current_steps >= 2
    with pytest.raises(JobBusyError):
        again.start(config)

    assert again.abort() == "abort requested: the job stops after the current step and keeps a checkpoint"
    assert again.snapshot().status == "aborting"
    final = again.wait(timeout=60)
    assert final.status == "aborted", final.log_tail
    # the first manager holds the Popen handle: its view turns final once the process has fully exited
    # (the pid-based view of `again` can see the exiting process a moment earlier)
    assert manager.wait(timeout=30).status == "aborted"
    out = Path(final.output_dir)
    status = json.loads((out / "running_status.json").read_text())
    step = status["current_steps"]
    assert status["status"] == "aborted" and 2 <= step < 5000
    checkpoint = out / f"checkpoint-{step}"
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "trainer_state.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()  # the final save ran too
    assert not (out / "STOP_REQUESTED").exists()
    assert again.abort() == "no job is running"


class FailingJobs(JobManager):
    """The CLI's failure behaviour without its import time: print the one-line error, exit 2."""

    def command(self, yaml_path):
        script = "import sys; print('loading...'); print(\"error: dataset 'x' is not defined\"); sys.exit(2)"
        return [sys.executable, "-c", script]


def test_a_job_that_fails_reports_the_error(workspace, tiny_llama_dir):
    manager = FailingJobs(workspace / "state", workdir=workspace, threads=1)
    manager.start(tiny_config(tiny_llama_dir, "bad", max_steps=2))
    snap = manager.wait(timeout=30)
    assert (snap.status, snap.message) == ("failed", "dataset 'x' is not defined")
    assert snap.log_tail == "loading...\nerror: dataset 'x' is not defined"
    assert not manager.is_running() and manager.abort() == "no job is running"


def test_a_grpo_job_runs_and_is_followed(workspace, tiny_llama_dir):
    """The Train tab with stage GRPO: its keys in the YAML the job runs, progress and the reward in the log."""
    manager = JobManager(workspace / "state", workdir=workspace, threads=1)
    config = tiny_config(tiny_llama_dir, "grpo", stage="grpo", num_generations=2, reward_funcs="length", max_steps=2,
                         save_steps=100, extra_args='{"max_new_tokens": 6, "top_k": 0}')
    assert (config["stage"], config["num_generations"], config["reward_funcs"]) == ("grpo", 2, "length")
    manager.start(config, note="grpo run")
    snap = manager.wait(timeout=120)
    assert snap.status == "finished", snap.log_tail
    assert (snap.current_steps, snap.total_steps) == (2, 2) and [step for step, _ in snap.losses] == [1, 2]
    rows = [json.loads(line) for line in Path(snap.output_dir, "trainer_log.jsonl").read_text().splitlines()]
    assert "rewards/length" in rows[0] and "reward" in snap.log_tail
