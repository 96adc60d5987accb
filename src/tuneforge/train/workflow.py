"""Steps every language-model recipe shares: tokenizer + template, data report, trainer, save.

A recipe (sft.py, pt.py) reads top to bottom by calling these in order; nothing here decides
which stage runs.
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.utils.distributed import is_main_process

logger = logging.getLogger("tuneforge")


def compute_dtype(cfg) -> str | None:
    """The dtype weights are loaded in for training: what `bf16`/`fp16` ask for, else float32."""
    if cfg.training.bf16:
        return "bfloat16"
    if cfg.training.fp16:
        return "float16"
    return None


def log_precision(cfg) -> None:
    """Say what `auto_bf16` chose, and warn about bf16 on a CPU that only emulates it (hundreds of times slower)."""
    from tuneforge.utils.hardware import NATIVE_BF16_CPU_FLAGS, cpu_native_bf16

    training = cfg.training
    on_cpu = bool(getattr(training, "use_cpu", False))
    native = f"a CPU with {' or '.join(NATIVE_BF16_CPU_FLAGS)}" if on_cpu else "a GPU with bf16"
    if training.auto_bf16:
        logger.info("auto_bf16: %s", "bf16 mixed precision (%s)" % native if training.bf16
                    else "float32 (bf16 is native only on %s)" % native)
    elif training.bf16 and on_cpu and not cpu_native_bf16() and is_main_process():
        logger.warning("bf16: true on a CPU without %s: PyTorch emulates bf16 there, hundreds of times slower than "
                       "float32; remove `bf16` (or use `auto_bf16: true`) to train in float32",
                       " / ".join(NATIVE_BF16_CPU_FLAGS))


def ref_model_arguments(cfg):
    """The model arguments of `ref_model` (dpo / kto / ppo): its path, `ref_model_adapters` and
    `ref_model_quantization_bit` in place of the policy's (LF's create_ref_model); None without `ref_model`."""
    import dataclasses

    from tuneforge.config.args import split_names

    finetuning = cfg.finetuning
    if not finetuning.ref_model:  # (ref_model_quantization_bit without it is refused: config/validate.py)
        return None
    adapters = split_names(finetuning.ref_model_adapters)
    return dataclasses.replace(cfg.model, model_name_or_path=finetuning.ref_model,
                               adapter_name_or_path=tuple(adapters) or None,
                               quantization_bit=finetuning.ref_model_quantization_bit)


def seed_everything(cfg) -> None:
    """Seed before the model and its adapters are built, so the same config gives the same run
    (`full_determinism` also makes the kernels deterministic, as in HF)."""
    from transformers import enable_full_determinism, set_seed

    if cfg.training.full_determinism:
        enable_full_determinism(cfg.training.seed)
    else:
        set_seed(cfg.training.seed)


def load_tokenizer_and_template(cfg):
    """The run's own tokenizer, fixed for its template (eos = turn end, pad token present); raw-text stages
    (pt) have no template: (tokenizer with a pad token, None)."""
    from tuneforge.config.stages import stage_record

    if stage_record(cfg.finetuning.stage).data == "text":
        from tuneforge.model.tokenizer_loading import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer, None
    from tuneforge.data.templates import check_template_matches, template_for
    from tuneforge.model.tokenizer_loading import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    template = template_for(cfg.data, tokenizer)
    if cfg.data.template not in (None, "auto"):
        warning = check_template_matches(template, tokenizer)
        if warning:
            logger.warning(warning)
    vocab_before = len(tokenizer)
    template.fix_tokenizer(tokenizer)
    if len(tokenizer) > vocab_before:
        added = tokenizer.convert_ids_to_tokens(list(range(vocab_before, len(tokenizer))))
        raise ConfigError(
            f"template `{template.name}` needs tokens the model's tokenizer does not have ({', '.join(added)}): "
            f"it is not this model's chat format. Leave `template` unset to use the model's own chat template."
        )
    logger.info("template: %s (stop words: %s)", template.name, ", ".join(template.stop_words) or "eos")
    return tokenizer, template


def report_data(bundle, output_dir: str) -> None:
    """Print the preprocessing report at the start of training and keep a copy in output_dir (rank 0)."""
    if not is_main_process():
        return
    print(bundle.report.format(), flush=True)
    bundle.report.save(output_dir)


def sft_batch_collator(cfg, tokenizer, model, vision=None):
    """sft's collator (data/packing.py): per-batch padding-free, padded or LF's bins; on tuneforge's packed SDPA
    the prompt prefix the samples of a batch share (a system prompt) is computed once per batch. A vision-language
    model's batches (`vision`: the data bundle's image settings) are padded and carry the images' pixels."""
    from tuneforge.data.collate_bins import sft_collator
    from tuneforge.model.attention import runs_packed_sdpa

    if vision is not None:
        from tuneforge.data.collate_vision import NeatVisionCollator, VisionCollator

        if cfg.data.neat_packing:  # per-sample 3-D positions from the model's own rope index
            rope_index = next(m.get_rope_index for m in model.modules() if hasattr(m, "get_rope_index"))
            return NeatVisionCollator(tokenizer.pad_token_id, vision, rope_index)
        return VisionCollator(tokenizer.pad_token_id, vision)

    return sft_collator(cfg.data, tokenizer.pad_token_id, share_prefix=runs_packed_sdpa(model),
                        batching_strategy=cfg.batching.batching_strategy)


def build_trainer(cfg, model, tokenizer, bundle, collator, *, objective=None, extra_log_keys=(), trainer_class=None):
    """The run's `TuneforgeTrainer` (or the stage's subclass): the LM loss by default, or a stage `objective`."""
    from tuneforge.train.callbacks import LogCallback
    from tuneforge.train.checkpointing import training_args_with_checkpointing
    from tuneforge.train.progress import use_token_progress_bar
    from tuneforge.train.reporting import setup_reporting
    from tuneforge.train.threads import ThreadPolicyCallback
    from tuneforge.train.trainer import TuneforgeTrainer

    training_args = training_args_with_checkpointing(cfg) if cfg.training.do_train else cfg.training
    if bundle.vision is not None and cfg.data.streaming:
        # accelerate would read a streamed split in the main process and cut every tensor of a batch into per-process
        # slices of batch-size rows along dim 0: the pixels (one row per image patch) would be cut too
        training_args.accelerator_config.dispatch_batches = False
    if cfg.finetuning.compute_accuracy:
        extra_log_keys = (*extra_log_keys, "accuracy")  # eval_accuracy in trainer_log.jsonl and on the console
    if bundle.eval_sets is not None:  # eval_on_each_dataset: eval_<name>_loss, eval_<name>_accuracy, ...
        extra_log_keys = (*extra_log_keys, *(f"{name}_{key}" for name in bundle.eval_sets
                                             for key in ("loss", *extra_log_keys)))
    log_callback = LogCallback(cfg.training.output_dir, extra_keys=extra_log_keys)
    trainer = (trainer_class or TuneforgeTrainer)(
        model=model,
        args=training_args,
        train_dataset=bundle.train,
        eval_dataset=bundle.trainer_eval,  # a dict with eval_on_each_dataset: one evaluation per dataset
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[log_callback, ThreadPolicyCallback()],
        loraplus_lr_ratio=cfg.finetuning.loraplus_lr_ratio,
        loraplus_lr_embedding=cfg.finetuning.loraplus_lr_embedding,
        objective=objective,
        compute_accuracy=cfg.finetuning.compute_accuracy,  # eval_accuracy (LM stages; rm/dpo/kto log their own)
        token_weighting=token_weighting(cfg.finetuning) if objective is None else None,  # sft only: validate.py
        finetuning_args=cfg.finetuning,  # use_galore / use_apollo / use_badam / use_adam_mini / use_muon
    )
    setup_reporting(trainer.callback_handler, cfg)  # logging_dir, use_swanlab (train/reporting.py)
    if bundle.vision is not None:  # saved next to the model / adapter, as LF saves the processor
        trainer.image_processor = bundle.vision.image_processor
    if cfg.finetuning.pissa_convert:  # LF: the PiSSA adapter also saved as a plain LoRA adapter (train/pissa.py)
        from tuneforge.train.pissa import PissaConvertCallback

        trainer.add_callback(PissaConvertCallback())
    if cfg.finetuning.early_stopping_steps is not None and cfg.training.do_train:  # LF: HF's callback (validated)
        from transformers import EarlyStoppingCallback

        trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=cfg.finetuning.early_stopping_steps))
    if cfg.finetuning.compute_accuracy and bundle.eval is None:
        logger.warning("compute_accuracy: there is no evaluation set (`eval_dataset` or `val_size`), so no "
                       "eval_accuracy will be reported")
    ref_model = getattr(objective, "ref_model", None)
    if ref_model is not None:  # the Trainer places the policy; a frozen reference model goes next to it
        from tuneforge.train.sharding import place_reference_model

        place_reference_model(trainer, ref_model)  # (under DeepSpeed ZeRO-3: run by DeepSpeed, still sharded)
    use_token_progress_bar(trainer)
    _say_world(trainer.args)
    return trainer, log_callback


def _say_world(args) -> None:
    """One line for a multi-process run: how many processes, which backend, which devices, the global batch."""
    if args.world_size <= 1:
        return
    import torch.distributed as dist

    backend = dist.get_backend() if dist.is_initialized() else "none"
    devices = f"{args.device.type} x{args.world_size}"
    logger.info("distributed: world size %d, backend %s, devices %s; batch %d per device x %d accumulation = %d "
                "samples per step", args.world_size, backend, devices, args.per_device_train_batch_size,
                args.gradient_accumulation_steps,
                args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size)


def train_and_save(cfg, trainer, log_callback, resume: str | None,
                   plot_keys: tuple[str, ...] = ("loss", "eval_loss")) -> dict[str, Any]:
    """Train (resuming if asked), save weights + state atomically, plot, evaluate. Returns metrics.

    The first Ctrl-C stops after the current step with a checkpoint (and the final save); a second
    one quits at once, the last saved checkpoint intact.
    """
    from tuneforge.train.callbacks import RunFileCallback
    from tuneforge.utils.runlog import plot_loss
    from tuneforge.train.resume import check_resume_matches, run_fingerprint
    from tuneforge.train.save_errors import disk_full_error

    args = cfg.training
    fingerprint = run_fingerprint(cfg, trainer.train_dataset)
    if resume:
        check_resume_matches(resume, fingerprint, explicit=bool(args.resume_from_checkpoint))
    trainer.add_callback(RunFileCallback(fingerprint))
    started = time.perf_counter()
    try:
        with _stop_on_first_interrupt(log_callback) as interrupted:
            result = trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:
        log_callback.mark_failed("interrupted by the user")
        logger.warning("training interrupted; the last saved checkpoint in %s is intact", args.output_dir)
        raise
    except Exception as err:  # keep the status file honest for the web UI, then re-raise
        full = disk_full_error(err, args.output_dir, trainer.state.global_step, "a checkpoint")
        log_callback.mark_failed(str(full or err))
        if full is not None:
            raise full from err
        raise
    try:
        trainer.save_model()
        trainer.save_state()
    except Exception as err:
        full = disk_full_error(err, args.output_dir, trainer.state.global_step, "the trained model")
        if full is None:
            raise
        log_callback.mark_failed(str(full))
        raise full from err
    metrics = dict(result.metrics)
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    metrics.update(_resource_metrics(trainer))
    if cfg.finetuning.include_effective_tokens_per_second and metrics.get("train_runtime"):
        # LF's metric: the real (non-padding) tokens trained per second of training
        metrics["effective_tokens_per_sec"] = round(metrics.get("total_tokens", 0) / metrics["train_runtime"], 2)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    if trainer.session_steps == 0 and resume:
        logger.warning("nothing left to train: %s is already at step %d of %d (train_loss is the mean logged loss "
                       "of the run that made it); raise num_train_epochs or max_steps to train further, or set "
                       "overwrite_output_dir: true to start over", resume, trainer.state.global_step,
                       trainer.state.max_steps)
    if log_callback.aborted:
        metrics["interrupted"] = interrupted[0]
        _say_how_to_resume(cfg, trainer.state)
    if cfg.finetuning.plot_loss:
        for path in plot_loss(args.output_dir, keys=plot_keys):
            logger.info("curve: %s", path)
    if args.do_eval and trainer.eval_dataset is not None:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    return metrics


@contextmanager
def _stop_on_first_interrupt(log_callback):
    """While training: the first SIGINT asks the run to stop after this step with a checkpoint; the second
    raises KeyboardInterrupt as usual. Yields a one-item list that becomes [True] once Ctrl-C was pressed."""
    pressed = [False]
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield pressed
        return

    def on_interrupt(signum, frame):
        if pressed[0]:
            raise KeyboardInterrupt
        pressed[0] = True
        log_callback.request_abort(save_checkpoint=True)
        print("\n[tuneforge] Ctrl-C: stopping after the current step and saving a checkpoint "
              "(press Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def _say_how_to_resume(cfg, state) -> None:
    checkpoint = Path(cfg.training.output_dir) / f"checkpoint-{state.global_step}"
    saved = f"checkpoint saved in {checkpoint}" if checkpoint.is_dir() else "no checkpoint saved"
    print(f"[tuneforge] stopped at step {state.global_step} of {state.max_steps}: {saved}; resume with: "
          f"{resume_command(cfg)}", flush=True)


def resume_command(cfg) -> str:
    """The command that continues this run: the one that started it (auto-resume does the rest)."""
    argv = sys.argv
    if Path(argv[0]).name in ("tuneforge", "__main__.py") and "train" in argv[1:]:
        return shlex.join(["tuneforge", *argv[1:]])
    return shlex.join(["tuneforge", "train", str(cfg.config_path or "<your config>")])


def _resource_metrics(trainer) -> dict[str, Any]:
    import psutil
    import torch

    out: dict[str, Any] = {}
    try:  # ru_maxrss is the true peak of this process (KiB on Linux)
        import resource

        out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    except ImportError:
        out["peak_rss_gib"] = round(psutil.Process().memory_info().rss / 2**30, 3)
    if torch.cuda.is_available():
        out["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out


def chat_command(cfg) -> str:
    """The exact command that chats with what this run saved."""
    from tuneforge.config.args import ADAPTER_METHODS

    parts = ["tuneforge", "chat", f"model_name_or_path={cfg.model.model_name_or_path}"]
    if cfg.finetuning.finetuning_type in ADAPTER_METHODS:
        adapters = [*(cfg.model.adapter_name_or_path or ()), cfg.training.output_dir]
        parts.append(f"adapter_name_or_path={','.join(adapters)}")
    else:
        parts[2] = f"model_name_or_path={cfg.training.output_dir}"
    if cfg.data.template:
        parts.append(f"template={cfg.data.template}")
    return " ".join(shlex.quote(p) for p in parts)


def print_summary(cfg, metrics: dict[str, Any]) -> None:
    if not is_main_process():
        return
    out = Path(cfg.training.output_dir)
    what = {"lora": "LoRA adapter", "oft": "OFT adapter"}.get(cfg.finetuning.finetuning_type, "model weights")
    print("", flush=True)
    print(f"[tuneforge] done in {metrics.get('train_seconds', 0):.0f}s — final train loss "
          f"{metrics.get('train_loss', float('nan')):.4f}, "
          f"{metrics.get('train_tokens_per_second', metrics.get('throughput', 0)) or 0:.0f} tokens/s, "
          f"peak RSS {metrics.get('peak_rss_gib', 0):.2f} GiB")
    print(f"[tuneforge] {what} saved in {out.resolve()}")
    print(f"[tuneforge] chat with it:  {chat_command(cfg)}")


def require_do_train(cfg) -> None:
    if not cfg.training.do_train and not cfg.training.do_eval and not cfg.training.do_predict:
        raise TuneforgeError("nothing to do: set `do_train: true` (or do_eval / do_predict) in the config")


def token_weighting(finetuning):
    """LF's `use_dft_loss` / `use_eaft_loss` (+ `eaft_alpha`) as the loss's per-token weighting, or None."""
    from tuneforge.train.loss import TokenWeighting

    if finetuning.use_dft_loss:
        return TokenWeighting("dft")
    if finetuning.use_eaft_loss:
        return TokenWeighting("eaft", finetuning.eaft_alpha)
    return None

