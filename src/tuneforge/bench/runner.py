"""`tuneforge bench x.yaml`: the config's real training for warm-up + N optimizer steps, timed.

Nothing here trains: the recipe's own pieces (tokenizer/template, `build_datasets`, `load_model`,
the collator, `TuneforgeTrainer`) run unchanged; a `StepTimer` callback notes the time and the
token counters at the end of every optimizer step and stops the run after warm-up + N steps.
Only the steps after warm-up are measured, so start-up, first-call allocations and any
compilation are reported separately (`first_step_seconds`).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tuneforge.errors import ConfigError, NotSupportedError
from tuneforge.utils.allocator import preloaded_allocator

logger = logging.getLogger("tuneforge")


class StepTimer(TrainerCallback):
    """Times optimizer steps; stops training after `warmup + steps` of them."""

    def __init__(self, warmup: int, steps: int, counters: Callable[[], tuple[int, int, int]]) -> None:
        self.warmup, self.steps, self.counters = warmup, steps, counters
        # (step, wall time, CPU time of this process, real tokens, label tokens, computed tokens)
        self.marks: list[tuple[int, float, float, int, int, int]] = []
        self.losses: dict[int, float] = {}
        self.train_begin: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin = time.perf_counter()
        self.marks.append((0, self.train_begin, time.process_time(), *self.counters()))

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append((state.global_step, time.perf_counter(), time.process_time(), *self.counters()))
        if state.global_step >= self.warmup + self.steps:
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = float(logs["loss"])

    def measured(self) -> dict[str, float]:
        """Per-step averages over the steps after warm-up."""
        by_step = {step: rest for step, *rest in self.marks}
        end = self.warmup + self.steps
        if self.warmup not in by_step or end not in by_step:
            done = max(by_step) if by_step else 0
            raise NotSupportedError(
                f"the run stopped after {done} optimizer steps, before warm-up ({self.warmup}) + "
                f"measured steps ({self.steps}) were done (a callback or an error ended it early)"
            )
        (t0, cpu0, real0, label0, run0), (t1, cpu1, real1, label1, run1) = by_step[self.warmup], by_step[end]
        seconds = t1 - t0
        return {
            "seconds": seconds,
            # CPU time is less sensitive than wall time to other processes on a shared machine
            # (with one thread; idle OpenMP threads spin and count too).
            "cpu_seconds": cpu1 - cpu0,
            "seconds_per_step": seconds / self.steps,
            "real_tokens": real1 - real0,
            "label_tokens": label1 - label0,
            "computed_tokens": run1 - run0,  # fewer than the real ones when a batch shares a prompt prefix
            "first_step_seconds": by_step[1][0] - by_step[0][0] if 1 in by_step and 0 in by_step else float("nan"),
        }


def bench_overrides(user_overrides: Sequence[str], *, steps: int, warmup: int, output_dir: str) -> list[str]:
    """The user's overrides, then what the benchmark needs (no saving, no eval, a fixed step count)."""
    forced = [
        f"max_steps={warmup + steps}",
        "do_train=true",
        "do_eval=false",
        "eval_strategy='no'",
        "save_strategy='no'",
        "logging_steps=1",
        "plot_loss=false",
        "report_to=none",
        f"output_dir={output_dir}",
        "overwrite_output_dir=true",
    ]
    return [*user_overrides, *forced]


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _current_rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def _weights_dtype(model) -> str:
    """The dtype most linear weights have: the GEMM peak MFU is measured against. Packed integer
    weights (bitsandbytes 4/8-bit) are left out: they are dequantized to the compute dtype."""
    from collections import Counter

    counts: Counter[str] = Counter()
    for param in model.parameters():
        if param.ndim == 2 and param.dtype.is_floating_point:
            counts[str(param.dtype).removeprefix("torch.")] += param.numel()
    return counts.most_common(1)[0][0] if counts else "float32"


def build_bench_trainer(cfg):
    """Tokenizer, data, model, collator and trainer exactly as the stage's recipe builds them."""
    from tuneforge.data.collate import PackedCollator
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.config.stages import stage_record
    from tuneforge.model.loader import load_model
    from tuneforge.train import workflow
    from tuneforge.train.token_batching import sft_trainer_class

    stage = cfg.finetuning.stage
    if stage_record(stage).data not in ("supervised", "text"):
        raise NotSupportedError(f"tuneforge bench: stage `{stage}` is not supported yet (supported: sft, pt)")
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    bundle = build_datasets(cfg, tokenizer, template, stage=stage)
    model = load_model(cfg.model, cfg.finetuning, is_trainable=True, compute_dtype=workflow.compute_dtype(cfg))
    collator = PackedCollator() if template is None else workflow.sft_batch_collator(cfg, tokenizer, model)
    trainer, _ = workflow.build_trainer(cfg, model, tokenizer, bundle, collator, trainer_class=sft_trainer_class(cfg))
    return trainer, bundle


def run_bench(
    config_path: str | None,
    overrides: Sequence[str] = (),
    *,
    steps: int = 20,
    warmup: int = 3,
    out: str | os.PathLike | None = None,
    remeasure_peak: bool = False,
) -> dict[str, Any]:
    """Run the benchmark; returns the result dict (also written to `out` as JSON when given)."""
    import torch

    from tuneforge.bench import flops as flops_model
    from tuneforge.bench.gemm import device_name, gemm_peak_gflops
    from tuneforge.config.parser import load_config

    if steps < 1 or warmup < 0:
        raise ConfigError(f"tuneforge bench: --steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    load_start = os.getloadavg()
    logger.info("bench: load average at start %.2f %.2f %.2f, %d torch threads, %d cores",
                *load_start, torch.get_num_threads(), os.cpu_count() or 0)
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as scratch:
        cfg = load_config(config_path, bench_overrides(overrides, steps=steps, warmup=warmup, output_dir=scratch))
        started = time.perf_counter()
        trainer, bundle = build_bench_trainer(cfg)
        rss_before = _current_rss_gib()
        timer = StepTimer(warmup, steps, lambda: (trainer._session_tokens, trainer._session_label_tokens,
                                                           trainer.session_computed_tokens))
        trainer.add_callback(timer)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        measured = timer.measured()
    model = trainer.model
    dtype = _weights_dtype(model)
    shape = flops_model.shape_from_model(model)
    attn_per_token = flops_model.attention_flops_per_token(shape, (len(ids) for ids in bundle.train["input_ids"]))
    step_flops = flops_model.step_flops(shape, measured["computed_tokens"], measured["label_tokens"], attn_per_token)
    achieved = step_flops / measured["seconds"] / 1e9
    peak = gemm_peak_gflops(dtype, refresh=remeasure_peak)
    result: dict[str, Any] = {
        "config": str(config_path) if config_path else None,
        "overrides": list(overrides),
        "stage": cfg.finetuning.stage,
        "finetuning_type": cfg.finetuning.finetuning_type,
        "model": cfg.model.model_name_or_path,
        "weights_dtype": dtype,
        "batch_size": cfg.training.per_device_train_batch_size,
        "gradient_accumulation_steps": cfg.training.gradient_accumulation_steps,
        "cutoff_len": cfg.data.cutoff_len,
        "warmup_steps": warmup,
        "steps": steps,
        "seconds_per_step": round(measured["seconds_per_step"], 4),
        "real_tokens_per_s": round(measured["real_tokens"] / measured["seconds"], 2),
        "label_tokens_per_s": round(measured["label_tokens"] / measured["seconds"], 2),
        "real_tokens_per_cpu_s": round(measured["real_tokens"] / measured["cpu_seconds"], 2),
        "real_tokens_per_step": round(measured["real_tokens"] / steps, 1),
        "computed_tokens_per_step": round(measured["computed_tokens"] / steps, 1),
        "setup_seconds": round((timer.train_begin or started) - started, 2),
        "first_step_seconds": round(measured["first_step_seconds"], 2),
        "peak_rss_gib": round(_peak_rss_gib(), 3),
        "rss_before_train_gib": round(rss_before, 3),
        "model_gflop_per_step": round(step_flops / steps / 1e9, 2),
        "achieved_gflops": round(achieved, 1),
        "gemm_peak_gflops": peak,
        "mfu": round(achieved / peak, 4) if peak else None,
        "losses": {str(k): round(v, 4) for k, v in sorted(timer.losses.items())},
        "device": device_name(),
        "threads": torch.get_num_threads(),
        "allocator": Path(preloaded_allocator(os.environ) or "system malloc").name,
        "gradient_checkpointing": bool(trainer.args.activation_checkpointing),
        "attention": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if torch.cuda.is_available():
        result["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_result(result: dict[str, Any]) -> str:
    lines = [
        f"bench: {result['config']} {' '.join(result['overrides'])}".rstrip(),
        f"  {result['stage']} / {result['finetuning_type']} / weights {result['weights_dtype']} / "
        f"batch {result['batch_size']} x accum {result['gradient_accumulation_steps']} / cutoff {result['cutoff_len']}",
        f"  {result['steps']} steps after {result['warmup_steps']} warm-up "
        f"(first step {result['first_step_seconds']} s, setup {result['setup_seconds']} s)",
        f"  real tokens/s     {result['real_tokens_per_s']:>10.1f}   ({result['real_tokens_per_step']:.0f} per step)",
        f"  label tokens/s    {result['label_tokens_per_s']:>10.1f}",
        f"  computed tokens   {result['computed_tokens_per_step']:>10.0f}   per step (a prompt prefix a batch shares "
        "runs once)",
        f"  s/step            {result['seconds_per_step']:>10.3f}",
        f"  real tokens/CPU-s {result['real_tokens_per_cpu_s']:>10.1f}   (CPU time of this process)",
        f"  peak RSS          {result['peak_rss_gib']:>10.2f} GiB",
    ]
    if "peak_cuda_gib" in result:
        lines.append(f"  peak CUDA memory  {result['peak_cuda_gib']:>10.2f} GiB")
    lines += [
        f"  MFU               {100 * (result['mfu'] or 0):>9.1f} %   ({result['achieved_gflops']} of "
        f"{result['gemm_peak_gflops']} GFLOP/s measured {result['weights_dtype']} GEMM peak)",
        f"  attention {result.get('attention')}, gradient checkpointing "
        f"{'on' if result.get('gradient_checkpointing') else 'off'}",
        f"  {result['device']}, {result['threads']} threads, allocator {result.get('allocator')}, "
        f"load average {result['loadavg_start'][0]} at start",
    ]
    return "\n".join(lines)
