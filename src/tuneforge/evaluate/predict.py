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
from typing import TYPE_CHECKING

from tuneforge.errors import DataError

if TYPE_CHECKING:
    from tuneforge.config.parser import RunConfig

PREDICTIONS_FILE = "generated_predictions.jsonl"
RESULTS_FILE = "predict_results.json"


def build_predict_dataset(cfg: RunConfig, tokenizer, template):
    """The eval datasets encoded prompt-only (LF's unsupervised processor) + the data report."""
    from tuneforge.data.pipeline import build_split, check_stage
    from tuneforge.data.registry import load_dataset_specs
    from tuneforge.data.report import DataReport

    specs = load_dataset_specs(cfg.data.eval_dataset, cfg.data.dataset_dir or "data",
                               Path(cfg.config_path).parent if cfg.config_path else None)
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
    """The run log (utils/runlog.py: trainer_log.jsonl, running_status.json, STOP_REQUESTED) of a prediction."""

    def __init__(self, output_dir: str, total: int):
        from tuneforge.utils.runlog import RunLog

        self.log = RunLog(output_dir)
        self.log.begin(0, total)
        self.stopped = False

    def row_done(self, done: int) -> bool:
        """Log progress (every row, as LF's prediction steps); True when a stop was requested."""
        self.log.record(done, {})
        self.stopped = self.stopped or self.log.stop_requested()
        return self.stopped

    def finish(self) -> None:
        self.log.end(aborted=self.stopped)


def run_predict(cfg) -> dict:
    from tuneforge.evaluate.metrics import similarity_scores
    from tuneforge.infer.engine import ChatEngine

    output_dir = Path(cfg.training.output_dir)  # the config layer checked what prediction needs
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
        progress.log.status("failed", error=f"{type(err).__name__}: {err}")
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
