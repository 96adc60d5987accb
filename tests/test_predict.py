"""Batch prediction (`do_predict` + `predict_with_generate`): LF's files, scores and progress log."""

from __future__ import annotations

import json

import pytest

from conftest import write_workspace
from tuneforge.cli.main import main
from tuneforge.evaluate.metrics import similarity_scores

ROWS = [
    {"instruction": "Who are you?", "input": "", "output": "I am Forgey."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5."},
    {"instruction": "你是谁？", "input": "", "output": "我是 Forgey。"},
]


def test_scores_by_hand():
    # BLEU-4 on characters: 6/7 unigrams, 5/6 bigrams, 4/5 trigrams, 3/4 4-grams, same length
    # -> (3/7) ** (1/4); ROUGE on the words a b c d vs a b c e: 3/4, 2/3, LCS 3/4.
    scores = similarity_scores(["a b c d"], ["a b c e"])
    assert scores["bleu-4"] == pytest.approx(100 * (3 / 7) ** 0.25, abs=1e-4)
    assert scores["rouge-1"] == pytest.approx(75.0, abs=1e-4)
    assert scores["rouge-2"] == pytest.approx(66.6667, abs=1e-4)
    assert scores["rouge-l"] == pytest.approx(75.0, abs=1e-4)
    assert similarity_scores(["我是一个AI助手"], ["我是一个AI助手"]) == pytest.approx(
        {"bleu-4": 100.0, "rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0}, abs=1e-3)
    # an empty answer scores 0 everywhere; the mean is over all rows
    both = similarity_scores(["", "same text here"], ["reference", "same text here"])
    assert both == pytest.approx({"bleu-4": 50.0, "rouge-1": 50.0, "rouge-2": 50.0, "rouge-l": 50.0}, abs=1e-3)


@pytest.fixture
def predict_workspace(tmp_path, tiny_llama_dir, monkeypatch):
    config = {  # LF's examples/train_lora/*_predict.yaml shape
        "model_name_or_path": str(tiny_llama_dir), "stage": "sft", "do_predict": True,
        "finetuning_type": "lora", "eval_dataset": "qa", "dataset_dir": "data", "template": "chatml",
        "cutoff_len": 64, "output_dir": "out/predict", "per_device_eval_batch_size": 1,
        "predict_with_generate": True, "do_sample": False, "max_new_tokens": 6,
    }
    return write_workspace(tmp_path, monkeypatch, ROWS, "qa", config, "predict.yaml")


@pytest.mark.parametrize("batching", [[], ["per_device_eval_batch_size=2", "infer_dtype=float32"]])
def test_predict_writes_lf_files_with_the_engines_answers(predict_workspace, capsys, batching):
    from tuneforge.config.parser import load_config
    from tuneforge.infer.engine import ChatEngine

    assert main(["train", "predict.yaml", *batching]) == 0
    out = predict_workspace / "out" / "predict"
    rows = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [set(row) for row in rows] == [{"prompt", "predict", "label"}] * 3
    # the reference answers (the template's turn end is a special token, skipped) and the prompts
    assert [row["label"].strip() for row in rows] == [r["output"] for r in ROWS]
    assert rows[1]["prompt"].endswith("<|im_start|>user\nAdd the numbers.\n2 and 3<|im_end|>\n<|im_start|>assistant\n")
    # greedy: the same answers as the chat engine gives for the same prompts
    engine = ChatEngine.from_config(load_config("predict.yaml", batching))
    for row, source in zip(rows, ROWS):
        prompt = engine.encode_prompt([{"role": "user", "content": (source["instruction"] + "\n" + source["input"]).strip()}])
        assert row["predict"] == engine.tokenizer.decode(engine.generate_ids(prompt), skip_special_tokens=True)

    results = json.loads((out / "predict_results.json").read_text())
    assert results["predict_samples"] == 3
    want = similarity_scores([r["predict"] for r in rows], [r["label"] for r in rows])
    for key, value in want.items():
        assert results[f"predict_{key}"] == pytest.approx(value)
    assert json.loads((out / "all_results.json").read_text()) == results
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["current_steps"] for r in log] == [1, 2, 3] and log[-1]["total_steps"] == 3
    assert json.loads((out / "running_status.json").read_text())["status"] == "finished"
    printed = capsys.readouterr().out
    assert "predictions:" in printed and "bleu-4" in printed


def test_predict_stops_when_asked_and_keeps_the_rows_done(predict_workspace, monkeypatch):
    from tuneforge.infer.batching import BatchDecoder
    from tuneforge.utils.runlog import STOP_FILE

    original = BatchDecoder.step

    def step_then_request_stop(self):
        (predict_workspace / "out" / "predict" / STOP_FILE).touch()  # what the web UI's Abort does
        return original(self)

    monkeypatch.setattr(BatchDecoder, "step", step_then_request_stop)
    assert main(["train", "predict.yaml"]) == 0
    out = predict_workspace / "out" / "predict"
    assert len((out / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()) == 1
    assert json.loads((out / "predict_results.json").read_text())["predict_samples"] == 1
    assert json.loads((out / "running_status.json").read_text())["status"] == "aborted"


def test_rows_without_an_answer_and_ranking_datasets(predict_workspace, capsys):
    data = predict_workspace / "data"
    (data / "qa.json").write_text(json.dumps([{"instruction": "Say nothing.", "input": "", "output": ""}, *ROWS]))
    pairs = [{"instruction": "Hi", "input": "", "chosen": "Hello!", "rejected": "Go away."}]
    (data / "pairs.json").write_text(json.dumps(pairs))
    info = {"qa": {"file_name": "qa.json"},
            "pairs": {"file_name": "pairs.json", "ranking": True,
                      "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    assert main(["train", "predict.yaml"]) == 0  # an empty reference is kept and scores 0, as in LF
    rows = (predict_workspace / "out" / "predict" / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 4 and json.loads(rows[0])["label"].strip() == ""
    assert main(["train", "predict.yaml", "eval_dataset=pairs"]) != 0
    assert "is a ranking dataset (chosen/rejected answers); prediction needs plain samples" in capsys.readouterr().err


def test_a_failing_prediction_says_so_in_the_status_file(predict_workspace, monkeypatch):
    from tuneforge.infer.batching import BatchDecoder

    def fail(self):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(BatchDecoder, "step", fail)
    with pytest.raises(RuntimeError, match="out of memory"):  # not a user error: the CLI shows the traceback
        main(["train", "predict.yaml"])
    status = json.loads((predict_workspace / "out" / "predict" / "running_status.json").read_text())
    assert (status["status"], status["error"]) == ("failed", "RuntimeError: out of memory")


@pytest.mark.parametrize("overrides,expected", [
    (["predict_with_generate=false"], "`do_predict` with stage sft generates the answers it saves: set "
                                      "`predict_with_generate: true` (LLaMA-Factory refuses it too"),
    (["eval_dataset=null"], "`do_predict` reads the rows to answer from `eval_dataset`"),
    (["stage=rm"], "`predict_with_generate` needs `stage: sft`"),
    (["stage=dpo", "predict_with_generate=false"], "`do_predict` does nothing with stage dpo"),
    (["stage=rm", "predict_with_generate=false", "eval_dataset=null"], "`do_predict` scores the pairs of the evaluation set"),
    (["do_train=true", "dataset=qa", "do_eval=true"], "`predict_with_generate` in a training run with evaluation"),
    (["do_train=true", "dataset=qa", "eval_strategy=steps"], "`predict_with_generate` in a training run with evaluation"),
    (["do_train=true", "predict_with_generate=false", "dataset=qa"], "set `predict_with_generate: true`"),
])
def test_predict_config_errors_are_one_clear_line(predict_workspace, capsys, overrides, expected):
    assert main(["train", "predict.yaml", *overrides]) != 0
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_trained_config_points_at_the_saved_model(tiny_llama_dir):
    from tuneforge.config.parser import load_config_dict
    from tuneforge.evaluate.predict import trained_config

    base = {"model_name_or_path": str(tiny_llama_dir), "do_train": True, "dataset": "qa", "output_dir": "out/run",
            "eval_dataset": "qa", "do_predict": True, "predict_with_generate": True}
    lora = trained_config(load_config_dict({**base, "adapter_name_or_path": "earlier"}))
    assert (lora.model.model_name_or_path, lora.model.adapter_name_or_path) == (str(tiny_llama_dir), ("earlier", "out/run"))
    full = trained_config(load_config_dict({**base, "finetuning_type": "full"}))
    assert (full.model.model_name_or_path, full.model.adapter_name_or_path) == ("out/run", None)


@pytest.mark.parametrize("finetuning_type", ["lora", "full"])
def test_train_then_predict_with_the_trained_model(predict_workspace, capsys, finetuning_type):
    """LF's sft workflow with do_train + do_predict: train, save, then generate on eval_dataset with that model."""
    from tuneforge.config.parser import load_config
    from tuneforge.evaluate.predict import trained_config
    from tuneforge.infer.engine import ChatEngine

    overrides = ["do_train=true", "dataset=qa", "max_steps=3", "learning_rate=1e-2", "save_strategy=no",
                 "logging_steps=1", "report_to=none", f"finetuning_type={finetuning_type}", "output_dir=out/train"]
    assert main(["train", "predict.yaml", *overrides]) == 0
    out = predict_workspace / "out" / "train"
    weights = "adapter_model.safetensors" if finetuning_type == "lora" else "model.safetensors"
    assert (out / weights).is_file() and (out / "train_results.json").is_file()
    # the training log stays the training's (LF does not log prediction steps after training)
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["current_steps"] for r in log if "loss" in r] == [1, 2, 3] and log[-1]["total_steps"] == 3
    assert json.loads((out / "running_status.json").read_text())["status"] == "finished"
    rows = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["label"].strip() for row in rows] == [r["output"] for r in ROWS]
    results = json.loads((out / "predict_results.json").read_text())
    assert results["predict_samples"] == 3 and "predict_bleu-4" in results and "predict_rouge-l" in results
    all_results = json.loads((out / "all_results.json").read_text())
    assert "train_loss" in all_results and all_results["predict_bleu-4"] == results["predict_bleu-4"]
    # the answers are the trained model's (greedy)
    engine = ChatEngine.from_config(trained_config(load_config("predict.yaml", overrides)))
    for row, source in zip(rows, ROWS):
        prompt = engine.encode_prompt([{"role": "user", "content": (source["instruction"] + "\n" + source["input"]).strip()}])
        assert row["predict"] == engine.tokenizer.decode(engine.generate_ids(prompt), skip_special_tokens=True)
    printed = capsys.readouterr().out
    assert "chat with it" in printed and "predictions:" in printed
