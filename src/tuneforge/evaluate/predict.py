"""Batch prediction: `do_predict: true` + `predict_with_generate: true` (stage sft), as in LLaMA-Factory.

    eval_dataset rows -> prompt-only encoding (the template's generation prompt, cut with
    cutoff_len like LF) -> one generated answer per row (the chat engine, the run's generation
    keys) -> output_dir/generated_predictions.jsonl ({"prompt", "predict", "label"} per row)
    -> BLEU-4 / ROUGE-1/2/L -> output_dir/predict_results.json and all_results.json

Progress goes to `trainer_log.jsonl` / `running_status.json` like a training run, so the web UI
follows a prediction job the same way, and `STOP_REQUESTED` stops it (the rows done so far are
kept and scored).

In a training run (`do_train` + `do_predict`, LF's sft workflow: predict after training with the trained
model) the command line trains first, then calls `run_predict(trained_config(cfg), after_training=True)`:
the LoRA adapter just saved in output_dir on top of the base model (and its earlier adapters), or the full /
freeze weights saved in output_dir. The training's `trainer_log.jsonl` is kept (LF does not log prediction
steps after training either); `running_status.json` follows the prediction.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tuneforge.errors import DataError

if TYPE_CHECKING:
    from tuneforge.config.parser import RunConfig

PREDICTIONS_FILE = "generated_predictions.jsonl"
RESULTS_FILE = "predict_results.json"


def build_predict_dataset(cfg: RunConfig, tokenizer, template, vision=None):
    """The eval datasets encoded prompt-only (LF's unsupervised processor) + the data report; `vision`: a
    vision-language model's image settings (the rows keep their images, data/media.py)."""
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
    with_images = [spec for spec in specs if spec.columns.images]
    if with_images and vision is None:
        raise DataError(f"{with_images[0].where} has images but the model ({cfg.model.model_name_or_path}) does "
                        "not take images")
    dataset = build_split(specs, "eval", cfg, tokenizer, template, "ppo", seed, report, vision)
    report.eval_samples = len(dataset)
    report.check_not_empty("eval", len(dataset))
    return dataset, report


def trained_config(cfg: RunConfig) -> RunConfig:
    """`cfg` with the model a training run just saved in output_dir: for LoRA its adapter after any
    `adapter_name_or_path` it trained on top of, for full / freeze the weights in output_dir themselves."""
    output_dir = str(cfg.training.output_dir)
    if cfg.finetuning.finetuning_type in ("lora", "oft"):  # config/args.py ADAPTER_METHODS
        adapters = (*(cfg.model.adapter_name_or_path or ()), output_dir)
        model = dataclasses.replace(cfg.model, adapter_name_or_path=adapters)
    else:  # adapters given to a full / freeze run are merged into the weights it saved
        model = dataclasses.replace(cfg.model, model_name_or_path=output_dir, adapter_name_or_path=None)
    return dataclasses.replace(cfg, model=model)


class _Progress:
    """The run log (utils/runlog.py: trainer_log.jsonl, running_status.json, STOP_REQUESTED) of a prediction.
    `keep_log`: after training, leave the training's trainer_log.jsonl as it is (status and stop only)."""

    def __init__(self, output_dir: str, total: int, *, keep_log: bool = False):
        from tuneforge.utils.runlog import STOP_FILE, RunLog

        self.log = RunLog(output_dir)
        self.keep_log = keep_log
        if keep_log:
            self.log.max_steps = total
            (self.log.output_dir / STOP_FILE).unlink(missing_ok=True)
            self.log.status("running")
        else:
            self.log.begin(0, total)
        self.stopped = False

    def row_done(self, done: int) -> bool:
        """Log progress (every row, as LF's prediction steps); True when a stop was requested."""
        if self.keep_log:
            self.log.current_step = done
            self.log.status("running")
        else:
            self.log.record(done, {})
        self.stopped = self.stopped or self.log.stop_requested()
        return self.stopped

    def finish(self) -> None:
        self.log.end(aborted=self.stopped)


def run_predict(cfg, *, after_training: bool = False) -> dict:
    """Generate, save and score; `after_training`: `cfg` is `trained_config` of the run that just trained in
    output_dir, whose data report and log files stay."""
    from tuneforge.evaluate.metrics import similarity_scores
    from tuneforge.infer.engine import ChatEngine

    output_dir = Path(cfg.training.output_dir)  # the config layer checked what prediction needs
    output_dir.mkdir(parents=True, exist_ok=True)
    if after_training:  # the training's model and optimizer state are unreachable now: free them first
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # model first: the dataset is encoded with its tokenizer and template
    engine = ChatEngine.from_config(cfg)
    dataset, report = build_predict_dataset(cfg, engine.tokenizer, engine.template, engine.vision)
    print(report.format(), flush=True)
    if not after_training:  # the training's own report stays
        report.save(output_dir)

    seed = engine.settings.seed if engine.settings.seed is not None else cfg.training.seed
    settings = {"seed": seed}
    total = len(dataset)
    progress = _Progress(str(output_dir), total, keep_log=after_training)
    start = time.perf_counter()
    print(f"[tuneforge] predicting {total} rows -> {output_dir / PREDICTIONS_FILE}", flush=True)
    try:
        predictions, references, generated_tokens, stopped = _predict_rows(
            engine, dataset, output_dir, progress, settings, cfg.training.per_device_eval_batch_size)
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
    (output_dir / RESULTS_FILE).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _update_all_results(output_dir, metrics, replace=not after_training)
    progress.finish()
    _print_metrics(metrics, output_dir, stopped)
    return metrics


def _update_all_results(output_dir: Path, metrics: dict, *, replace: bool) -> None:
    """all_results.json as HF's `save_metrics` keeps it: after training, the train (and eval) results + these."""
    path = output_dir / "all_results.json"
    combined = {}
    if not replace and path.is_file():
        try:
            combined = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            combined = {}
    combined.update(metrics)
    path.write_text(json.dumps(combined, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def _predict_rows(engine, dataset, output_dir: Path, progress: _Progress, settings: dict, batch_size: int):
    """Generate `batch_size` rows at a time (continuous batching, infer/batching.py), write them in dataset
    order as they complete, log progress; returns (predictions, references, generated tokens, stopped)."""
    from tuneforge.infer.batching import BatchDecoder

    tokenizer, skip_special, total = engine.tokenizer, engine.settings.skip_special_tokens, len(dataset)
    rows = list(dataset)
    generation = engine.settings.with_overrides(**settings)
    decoder = BatchDecoder(engine, max_batch=batch_size)
    # rows with images decode one at a time, with their pixels (infer/vision_chat.py); the others in batches
    requests = [_ImageRequest(engine, row, generation) if row.get("images") else decoder.add(row["input_ids"], generation)
                for row in rows]
    predictions, references = [], []
    generated_tokens = 0
    with open(output_dir / PREDICTIONS_FILE, "w", encoding="utf-8") as out:
        while len(predictions) < total:
            if requests[len(predictions)].done:
                index = len(predictions)
                answer_ids, row = requests[index].generated, rows[index]
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
                if progress.row_done(index + 1) and index + 1 < total:
                    print(f"[tuneforge] stop requested: {index + 1} of {total} rows predicted", flush=True)
                    return predictions, references, generated_tokens, True
            else:
                decoder.step()
    return predictions, references, generated_tokens, False


class _ImageRequest:
    """A prediction row with images: generated with its pixels when it is its turn (`done` asks for it)."""

    def __init__(self, engine, row, settings) -> None:
        self.engine, self.row, self.settings, self._generated = engine, row, settings, None

    @property
    def done(self) -> bool:
        if self._generated is None:
            self._generated = self.engine.generate_ids(self.row["input_ids"], images=self.row["images"],
                                                       **dataclasses.asdict(self.settings))
        return True

    @property
    def generated(self) -> list[int]:
        return self._generated


def _print_metrics(metrics: dict, output_dir: Path, stopped: bool) -> None:
    print("", flush=True)
    print(f"[tuneforge] predict{' (stopped early)' if stopped else ''}: {metrics['predict_samples']} rows in "
          f"{metrics['predict_runtime']:.0f}s, {metrics['predict_tokens_per_second']:.1f} generated tokens/s")
    print("  " + "  ".join(f"{key.removeprefix('predict_')} {metrics[key]:.2f}"
                           for key in ("predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l")))
    print(f"[tuneforge] predictions: {output_dir / PREDICTIONS_FILE}")
    print(f"[tuneforge] scores:      {output_dir / RESULTS_FILE}", flush=True)
