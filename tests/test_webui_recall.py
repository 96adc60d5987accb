"""The Evaluate tab's recall check ("did it learn?"): UI values -> YAML + `tuneforge eval recall` command (pure),
progress lines and results -> what the tab shows, and a real recall job on the tiny model (run, abort)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("gradio")

from test_webui_args import webui_workspace as workspace, write_data  # noqa: E402,F401 (a fixture)
from tuneforge.config.parser import load_config  # noqa: E402
from tuneforge.errors import ConfigError  # noqa: E402
from tuneforge.webui import args, recall_job  # noqa: E402
from tuneforge.webui.jobs import JobManager, JobSnapshot  # noqa: E402
from tuneforge.webui.safety import Refusal  # noqa: E402

MODEL = {"model_path": "builtin:smollm2", "finetuning_type": "lora", "checkpoints": ["run1"]}


# ---------------------------------------------------------------------------------------- pure: config + command
def test_recall_config_asks_the_chosen_datasets_of_the_chosen_adapter(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path / "data")
    values = {"eval_dataset": ["tiny"], "eval_output_dir": "recall1", "eval_max_samples": 3, "recall_samples": 2}
    config = recall_job.build_recall_config(MODEL, values, "saves")
    assert config == {
        "model_name_or_path": "builtin:smollm2", "adapter_name_or_path": "saves/smollm2/lora/run1", "stage": "sft",
        "finetuning_type": "lora", "dataset": "tiny", "dataset_dir": "data", "output_dir": "saves/smollm2/lora/recall1",
    }
    cfg = args.validate(config)
    assert cfg.data.dataset == ("tiny",) and not cfg.training.do_train and not cfg.training.do_predict

    yaml_path = tmp_path / "saves" / "smollm2" / "lora" / "recall1" / recall_job.RECALL_YAML
    argv = recall_job.recall_argv(yaml_path, yaml_path.parent, recall_job.recall_options(MODEL, values))
    assert argv == ["eval", "recall", str(yaml_path), "--output", str(yaml_path.parent / "recall_results.json"),
                    "--samples", "2"]
    shown = recall_job.command_text(argv)
    assert shown == f"tuneforge eval recall {yaml_path} --output {yaml_path.parent}/recall_results.json --samples 2"
    yaml_path.parent.mkdir(parents=True)
    yaml_path.write_text(args.to_yaml(config, command=shown), encoding="utf-8")
    assert yaml_path.read_text().splitlines()[0] == f"# {shown}"
    assert dict(load_config(str(yaml_path)).raw) == config


@pytest.mark.parametrize("values, expected", [
    ({}, ["--samples", "50"]),
    ({"recall_samples": 0}, []),
    ({"recall_samples": "7", "recall_heldout": False}, ["--samples", "7", "--no-heldout"]),
    ({"recall_samples": 0, "recall_drift": False}, ["--no-drift"]),
    ({"recall_samples": 0, "recall_heldout": False, "recall_drift": False}, ["--no-heldout", "--no-drift"]),
])
def test_recall_options(values, expected):
    assert recall_job.recall_options(MODEL, values) == expected


def test_a_full_checkpoint_is_compared_with_the_model_bar_model_for_drift():
    full = {"model_path": "Qwen/Qwen2.5-0.5B-Instruct", "finetuning_type": "full", "checkpoints": ["run2"]}
    config = recall_job.build_recall_config(full, {"eval_dataset": ["tiny"], "eval_output_dir": "r"}, "saves")
    assert config["model_name_or_path"] == "saves/Qwen2.5-0.5B-Instruct/full/run2"
    assert recall_job.recall_options(full, {"recall_samples": 0}) == ["--base", "Qwen/Qwen2.5-0.5B-Instruct"]
    assert recall_job.recall_options(full, {"recall_samples": 0, "recall_drift": False}) == ["--no-drift"]
    assert recall_job.recall_options({**full, "checkpoints": []}, {"recall_samples": 0}) == []


def test_recall_config_refusals():
    with pytest.raises(ConfigError, match="no dataset chosen; pick the training datasets whose questions"):
        recall_job.build_recall_config(MODEL, {"eval_output_dir": "r"}, "saves")
    with pytest.raises(ConfigError, match="the output folder is empty"):
        recall_job.build_recall_config(MODEL, {"eval_dataset": ["tiny"], "eval_output_dir": " "}, "saves")
    with pytest.raises(Refusal, match=r"^The folder /tmp is outside the output root"):
        recall_job.build_recall_config(MODEL, {"eval_dataset": ["tiny"], "eval_output_dir": "/tmp"}, "saves")
    allowed = recall_job.build_recall_config(MODEL, {"eval_dataset": ["tiny"], "eval_output_dir": "/tmp"}, "saves",
                                             allow_outside=True)
    assert allowed["output_dir"] == "/tmp"
    with pytest.raises(ConfigError, match=r"must be 0 \(all\) or more, got -1"):
        recall_job.recall_options(MODEL, {"recall_samples": -1})
    with pytest.raises(ConfigError, match="`recall_samples` expects a number, got 'many'"):
        recall_job.recall_options(MODEL, {"recall_samples": "many"})


# ---------------------------------------------------------------------------------------- pure: output -> tab
def test_progress_is_the_last_progress_line():
    log = ("[tuneforge] evaluating tiny + adapter x\n[tuneforge] recall 1/4 (0s)  exact so far 0/1\n"
           "[tuneforge] recall 4/4 (3s)  exact so far 2/4\n[tuneforge] held-out 2/8 (1s)  correct so far 1/2\n")
    assert recall_job.parse_progress(log) == recall_job.Progress("held-out", 2, 8, 1, "correct so far 1/2")
    assert recall_job.parse_progress("[tuneforge] drift (base model) 10/20 (5s)") == recall_job.Progress(
        "drift (base model)", 10, 20, 5, "")
    assert recall_job.parse_progress("loading...\n[tuneforge] adapter_name_or_path not set: 3/4 x") is None
    assert not recall_job.has_begun("[tuneforge] no adapter (output_dir x holds no adapter_config.json)")
    assert recall_job.has_begun("[tuneforge] before training: base model")
    assert recall_job.has_begun(log)


RESULTS = {
    "model": {"model_name_or_path": "m", "adapter_name_or_path": "a", "notes": ["drift skipped: no base"]},
    "settings": {"asked": 4, "training_questions": 4, "seed": 42, "rows_skipped": 0},
    "recall": {"questions": 4, "exact": 3, "exact_match": 0.75, "char_similarity": 0.9, "field_accuracy": 5 / 6,
               "fields_correct": 5, "fields_total": 6, "structured_answers": 2, "by_field": {}, "worst": []},
    "heldout": {"questions": 4, "correct": 1, "accuracy": 0.25, "recited_record": 0, "by_field": {}, "rows": []},
    "drift": {"skipped": "--no-drift"},
}


def test_summary_names_every_headline_number_and_the_file():
    text = recall_job.summary_text(RESULTS, "/x/recall_results.json", "en")
    assert text.splitlines() == [
        "exact match 3/4 (75.0%) · character similarity 0.900 · field accuracy 5/6 (83.3%) · held-out 1/4 (25.0%) · "
        "drift mean change skipped (--no-drift)",
        "the training answers are partly recalled (75% exact); held-out phrasings 25% correct "
        "(knows the strings more than the facts).",
        "· drift skipped: no base",
        "all numbers and answers: /x/recall_results.json",
    ]
    other = {**RESULTS, "recall": {**RESULTS["recall"], "field_accuracy": None}, "heldout": {"skipped": "--no-heldout"},
             "drift": {"questions": 20, "mean_change": 0.1234}}
    zh = recall_job.summary_text(other, "r.json", "zh")
    assert "字段准确率 -（没有 key:value 形式的答案）" in zh and "留出问题 已跳过（--no-heldout）" in zh
    assert "漂移平均变化 0.123" in zh and zh.endswith("全部数值与回答：r.json")


def test_recall_progress_is_rendered_per_part():
    from tuneforge.webui.components.train_tab import render_progress

    snap = JobSnapshot(status="running", kind="recall", phase="held-out", current_steps=2, total_steps=8,
                       percentage=25.0, elapsed="0:00:07", message="correct so far 1/2", output_dir="/o")
    html = render_progress(snap, "en", "tf-eval-progress")
    assert 'data-kind="recall" data-status="running"' in html and 'data-phase="held-out"' in html
    assert "Asking the questions…<br>held-out questions: 2/8 questions · 25% of this part · elapsed 0:00:07<br>" \
           "correct so far 1/2" in html
    assert "留出问题：2/8 个问题 · 本部分 25% · 已用 0:00:07" in render_progress(snap, "zh")
    starting = render_progress(JobSnapshot(status="starting", kind="recall"), "en")
    assert "Starting: reading the training questions and loading the model…</div>" in starting


# ---------------------------------------------------------------------------------------- a real job


def start_recall(manager, model_dir: Path, name: str, **recall_values):
    model = {"model_path": str(model_dir), "template": "chatml"}
    values = {"eval_dataset": ["tiny"], "eval_output_dir": name, **recall_values}
    config = recall_job.build_recall_config(model, values, "saves")
    args.validate(config)
    return manager.start(config, kind="recall", options=recall_job.recall_options(model, values))


def test_recall_job_runs_to_the_end_and_the_tab_shows_its_results(workspace, tiny_llama_dir):
    from tuneforge.webui.components.eval_tab import recall_texts, scores_text
    from tuneforge.webui.components.train_tab import render_progress

    manager = JobManager(workspace / "state", workdir=workspace, threads=1)
    out = workspace / "saves" / tiny_llama_dir.name / "lora" / "recall1"
    out.mkdir(parents=True)
    (out / "recall_results.json").write_text("{}")  # an earlier check's file is not this one's result
    first = start_recall(manager, tiny_llama_dir, "recall1", recall_samples=2, recall_drift=False)
    results_path = out / "recall_results.json"
    assert first.kind == "recall" and first.status in ("starting", "running") and not results_path.exists()
    assert first.command == (f"tuneforge eval recall {out / 'tuneforge_recall.yaml'} --output {results_path} "
                             "--samples 2 --no-drift")
    assert recall_texts(first, "en") == ("", "")
    snap = manager.wait(timeout=120)
    assert (snap.kind, snap.status) == ("recall", "finished"), snap.log_tail
    assert (snap.results_path, snap.percentage) == (str(results_path), 100.0)
    assert snap.phase == "recall" and (snap.current_steps, snap.total_steps) == (2, 2)
    assert (out / "tuneforge_recall.yaml").read_text().startswith(f"# {first.command}\n")
    assert "[tuneforge] all numbers and answers:" in (out / "webui_recall.log").read_text()

    results = json.loads(results_path.read_text(encoding="utf-8"))
    assert results["recall"]["questions"] == 2 and results["drift"] == {"skipped": "--no-drift"}
    progress = render_progress(snap, "en", "tf-eval-progress")
    assert 'data-kind="recall" data-status="finished"' in progress and f"Finished. Results in {out}" in progress
    summary, report = recall_texts(snap, "en")
    assert summary.startswith("exact match ") and "drift mean change skipped (--no-drift)" in summary
    assert summary.endswith(f"all numbers and answers: {results_path}")
    assert report.startswith("== did it learn? ") and "verdict: " in report
    assert scores_text(snap, "en") == ""  # not a prediction job

    # a restarted UI re-attaches to the finished check and shows the same
    again = JobManager(workspace / "state", workdir=workspace, threads=1).snapshot()
    assert (again.kind, again.status, again.results_path) == ("recall", "finished", str(results_path))


def test_recall_job_abort_stops_it(workspace, tiny_llama_dir):
    manager = JobManager(workspace / "state", workdir=workspace, threads=1)
    start_recall(manager, tiny_llama_dir, "recall2", recall_samples=0)
    assert manager.abort() == ("abort requested: the recall check was stopped (its results are written only "
                               "when it completes)")
    snap = manager.wait(timeout=30)
    assert snap.status == "aborted" and not manager.is_running()
    assert not Path(snap.results_path).exists() and not Path(snap.output_dir, "STOP_REQUESTED").exists()
    assert manager.abort() == "no job is running"


def test_a_recall_job_that_fails_reports_the_error(workspace, tiny_llama_dir):
    manager = JobManager(workspace / "state", workdir=workspace, threads=1)
    start_recall(manager, tiny_llama_dir, "recall3", eval_dataset=["pairs"])  # ranking data: no single answer
    snap = manager.wait(timeout=60)
    assert snap.status == "failed", snap.log_tail
    assert "pairs" in snap.message and "error:" not in snap.message
    assert not Path(snap.results_path).exists()
