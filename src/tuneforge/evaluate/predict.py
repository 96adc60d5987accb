"""Batch prediction: `do_predict: true` + `predict_with_generate: true` (stage sft), as in LLaMA-Factory.

    eval_dataset rows -> prompt-only encoding (the template's generation prompt, cut with
    cutoff_len like LF) -> one generated answer per row (the chat engine, the run's generation
    keys) -> output_dir/generated_predictions.jsonl ({"prompt", "predict", "label"} per row)
    -> BLEU-4 / ROUGE-1/2/L -> output_dir/predict_results.json and all_results.json

Progress goes to `trainer_log.jsonl` / `running_status.json` like a training run, so the web UI
follows a prediction job the same way, and `STOP_REQUESTED` stops it (the rows done so far are
kept and scored).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

from tuneforge.errors import ConfigError, DataError, NotSupportedError

PREDICTIONS_FILE = "generated_predictions.jsonl"
RESULTS_FILE = "predict_results.json"


def check_predict_config(cfg) -> None:
    """What prediction needs beyond config validation (which already refuses `predict_with_generate`
    with training or outside stage sft)."""
    training = cfg.training
    if not training.predict_with_generate:
        raise NotSupportedError(
            "`do_predict` without `predict_with_generate` (loss-only prediction) is not supported yet; "
            "set `predict_with_generate: true` to generate answers and score them, or use `do_eval` for the loss"
        )
    if not cfg.data.eval_dataset:
        raise ConfigError(
            "`do_predict` reads the rows to answer from `eval_dataset` (as LLaMA-Factory does): "
            "set `eval_dataset: <names from dataset_info.json>`"
        )


def build_predict_dataset(cfg, tokenizer, template):
    """The eval datasets encoded prompt-only (LF's unsupervised processor) + the data report."""
    from tuneforge.data.pipeline import build_split, check_stage
    from tuneforge.data.registry import load_dataset_specs
    from tuneforge.data.report import DataReport

    config_path = getattr(cfg, "config_path", None)
    specs = load_dataset_specs(cfg.data.eval_dataset, cfg.data.dataset_dir or "data",
                               Path(config_path).parent if config_path else None)
    for spec in specs:
        if spec.ranking:
            raise DataError(f"{spec.where} is a ranking dataset (chosen/rejected answers); prediction needs "
                            "plain samples with one reference answer (alpaca / sharegpt / openai)")
    check_stage(specs, "ppo")  # the prompt-only encoder: input_ids = prompt, labels = the reference answer
    report = DataReport()
    seed = 42 if cfg.training.seed is None else int(cfg.training.seed)
    dataset = build_split(specs, "eval", cfg, tokenizer, template, "ppo", seed, report)
    report.eval_samples = len(dataset)
    report.check_not_empty("eval", len(dataset))
    return dataset, report


class _Progress:
    """Drives `LogCallback` (trainer_log.jsonl, running_status.json, STOP_REQUESTED) without a Trainer."""

    def __init__(self, output_dir: str, total: int):
        from tuneforge.train.callbacks import LogCallback

        self.callback = LogCallback(output_dir, console=False)
        self.args = SimpleNamespace(should_save=True, output_dir=output_dir)
        self.state = SimpleNamespace(global_step=0, max_steps=total)
        self.control = SimpleNamespace(should_save=False, should_epoch_stop=False, should_training_stop=False)
        self.callback.on_train_begin(self.args, self.state, self.control)

    def row_done(self, done: int) -> bool:
        """Log progress (every row, as LF's prediction steps); True when a stop was requested."""
        self.state.global_step = done
        self.callback.on_step_end(self.args, self.state, self.control)
        self.callback.on_log(self.args, self.state, self.control, logs={})
        return self.callback.aborted

    def finish(self) -> None:
        self.callback.on_train_end(self.args, self.state, self.control)


def run_predict(cfg) -> dict:
    from tuneforge.evaluate.metrics import similarity_scores
    from tuneforge.infer.engine import ChatEngine

    check_predict_config(cfg)
    output_dir = Path(cfg.training.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    # model first: the dataset is encoded with its tokenizer and template
    engine = ChatEngine.from_config(cfg)
    dataset, report = build_predict_dataset(cfg, engine.tokenizer, engine.template)
    print(report.format(), flush=True)
    report.save(output_dir)

    seed = engine.settings.seed if engine.settings.seed is not None else cfg.training.seed
    settings = {"seed": seed}
    total = len(dataset)
    progress = _Progress(str(output_dir), total)
    start = time.perf_counter()
    print(f"[tuneforge] predicting {total} rows -> {output_dir / PREDICTIONS_FILE}", flush=True)
    try:
        predictions, references, generated_tokens, stopped = _predict_rows(engine, dataset, output_dir, progress, settings)
    except BaseException as err:  # the status file must not stay at `running` (the web UI reads it)
        progress.callback.mark_failed(f"{type(err).__name__}: {err}")
        raise
    seconds = time.perf_counter() - start

    metrics = {f"predict_{key}": value for key, value in similarity_scores(predictions, references).items()}
    metrics.update({
        "predict_samples": len(predictions),
        "predict_runtime": round(seconds, 4),
        "predict_samples_per_second": round(len(predictions) / seconds, 3) if seconds > 0 else 0.0,
        "predict_tokens_per_second": round(generated_tokens / seconds, 3) if seconds > 0 else 0.0,
    })
    for name in (RESULTS_FILE, "all_results.json"):
        (output_dir / name).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    progress.finish()
    _print_metrics(metrics, output_dir, stopped)
    return metrics


def _predict_rows(engine, dataset, output_dir: Path, progress: _Progress, settings: dict):
    """Generate, write and log row by row; returns (predictions, references, generated tokens, stopped)."""
    tokenizer, skip_special, total = engine.tokenizer, engine.settings.skip_special_tokens, len(dataset)
    predictions, references = [], []
    generated_tokens = 0
    with open(output_dir / PREDICTIONS_FILE, "w", encoding="utf-8") as out:
        for index, row in enumerate(dataset):
            answer_ids = engine.generate_ids(row["input_ids"], **settings)
            generated_tokens += len(answer_ids)
            record = {
                "prompt": tokenizer.decode(row["input_ids"], skip_special_tokens=False),
                "predict": tokenizer.decode(answer_ids, skip_special_tokens=skip_special),
                "label": tokenizer.decode(row["labels"], skip_special_tokens=skip_special),
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            predictions.append(record["predict"])
            references.append(record["label"])
            if progress.row_done(index + 1):
                print(f"[tuneforge] stop requested: {index + 1} of {total} rows predicted", flush=True)
                return predictions, references, generated_tokens, True
    return predictions, references, generated_tokens, False


def _print_metrics(metrics: dict, output_dir: Path, stopped: bool) -> None:
    print("", flush=True)
    print(f"[tuneforge] predict{' (stopped early)' if stopped else ''}: {metrics['predict_samples']} rows in "
          f"{metrics['predict_runtime']:.0f}s, {metrics['predict_tokens_per_second']:.1f} generated tokens/s")
    print("  " + "  ".join(f"{key.removeprefix('predict_')} {metrics[key]:.2f}"
                           for key in ("predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l")))
    print(f"[tuneforge] predictions: {output_dir / PREDICTIONS_FILE}")
    print(f"[tuneforge] scores:      {output_dir / RESULTS_FILE}", flush=True)
