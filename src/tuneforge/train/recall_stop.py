"""Train until learned (`recall_target`): every `recall_check_epochs` epochs, measure exact recall on a
seeded sample of the training rows and stop once it reaches the target -- or say that it did not.

Greedy decoding reproduces a training answer exactly iff, fed the answer's own prefix, the model's
most likely next token is the answer's next token at every position (up to and including the turn's
end token). So exact greedy recall is measured teacher-forced: forward passes over the sample, no
token-by-token decoding -- ~9 s for 50 rows of the demo model on a 2-core CPU instead of minutes; a check stops
as soon as it has missed more samples than the target allows (~3 s while recall is low). The sample is the
training rows as written (before `augment_facts` adds questions), encoded exactly as for training. A
vision-language model's samples go through as padded rows with their images' pixels (the run's image settings).
"""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import replace
from typing import Any

import torch
from transformers import TrainerCallback

from tuneforge.errors import NotSupportedError
from tuneforge.train.precision_switch import computes_in_mixed_precision, continue_in_float32

logger = logging.getLogger("tuneforge")


def recall_check_samples(cfg, tokenizer, template, vision=None) -> list[dict[str, Any]]:
    """The seeded sample of training rows the check asks: encoded like training, without augmentation (with their
    images' files when `vision`, a vision-language model's image settings, is given)."""
    from tuneforge.data.pipeline import build_split
    from tuneforge.data.registry import load_dataset_specs
    from tuneforge.data.report import DataReport

    plain = replace(cfg, facts=replace(cfg.facts, augment_facts=False))
    specs = load_dataset_specs(cfg.data.dataset, cfg.data.dataset_dir or "data", cfg.config_dir)
    with_images = [spec for spec in specs if spec.columns.images]
    if with_images and vision is None:  # a text model: the data layer refuses image rows for it anyway
        raise NotSupportedError(f"`recall_target` on {with_images[0].where} (it has images) needs a vision-language "
                                "model, which takes the images")
    dataset = build_split(specs, "train", plain, tokenizer, template, "sft", cfg.training.seed, DataReport(),
                          vision=vision)
    indices = list(range(len(dataset)))
    random.Random(cfg.training.seed).shuffle(indices)
    picked = dataset.select(sorted(indices[: cfg.facts.recall_check_samples]), keep_in_memory=True)
    keys = [key for key in ("input_ids", "labels", "images") if key in picked.column_names]
    return [{key: list(row[key] or ()) for key in keys} for row in picked]


# Samples per forward pass of the check: one padding-free row, the prompt prefix they share computed once.
CHECK_BATCH = 16


@torch.no_grad()
def teacher_forced_exact(model, samples: list[dict[str, Any]], max_misses: int | None = None,
                         image_collator=None) -> list[bool]:
    """For each sample: would greedy decoding reproduce all of its label tokens? Samples go through the model
    CHECK_BATCH at a time as one packed row, logits only where a label is (train/loss.py); a vision-language
    model's samples a quarter as many at a time, as padded rows with their pixels (`image_collator`). With
    `max_misses`, stops after the first chunk that brings the misses above it: the verdicts of the samples asked
    so far."""
    from tuneforge.data.collate import PackedCollator
    from tuneforge.model.attention import runs_packed_sdpa

    if image_collator is None:
        collator, size, judge = PackedCollator(share_prefix=runs_packed_sdpa(model)), CHECK_BATCH, _packed_exact
    else:
        collator, size, judge = image_collator, CHECK_BATCH // 4, _padded_exact
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    exact: list[bool] = []
    try:
        for start in range(0, len(samples), size):
            chunk = samples[start:start + size]
            batch = {key: value.to(device) for key, value in collator(chunk).items()}
            exact.extend(judge(model, chunk, batch, device))
            if max_misses is not None and exact.count(False) > max_misses:
                break
    finally:
        model.train(was_training)
    return exact


def _packed_exact(model, chunk, batch, device) -> list[bool]:
    from tuneforge.model.lm_parts import resolve_lm_parts
    from tuneforge.train.loss import chunked_causal_lm_eval, sample_accuracies

    parts, _ = resolve_lm_parts(model, batch)
    accuracy = None
    if parts is not None:
        _, hits, keep = chunked_causal_lm_eval(parts, batch)
        accuracy = sample_accuracies(hits, keep, batch)
    if accuracy is not None and accuracy.numel() == len(chunk):
        return [bool(a == 1.0) for a in accuracy.tolist()]
    return _exact_one_by_one(model, chunk, device)  # a model the packed path does not take (or a sample without labels)


def _padded_exact(model, chunk, batch, device) -> list[bool]:
    labels = batch.pop("labels")[:, 1:]
    predicted = model(**batch, use_cache=False).logits[:, :-1].argmax(-1)
    hit = (predicted == labels) | (labels == -100)
    return [bool(row.all()) for row in hit]


def _exact_one_by_one(model, samples: list[dict[str, list[int]]], device) -> list[bool]:
    exact = []
    for sample in samples:
        ids = torch.tensor([sample["input_ids"]], device=device)
        labels = torch.tensor(sample["labels"][1:], device=device)
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
        trained = labels != -100
        exact.append(bool((logits[trained].argmax(-1) == labels[trained]).all()))
    return exact


# The record key of the check after which a `float32_from_recall` run computes in float32 (trainer_log.jsonl, and the
# Trainer state's log history that checkpoints keep)
SWITCH_KEY = "float32_after_this_step"


class RecallStopCallback(TrainerCallback):
    """Checks recall at every `every_epochs` boundary; stops at `target` (with a checkpoint unless `save_strategy: no`).
    With `float32_from` and `to_float32` (a call that turns the run's mixed precision off, True if it did): the first
    check that reaches `float32_from` makes the rest of the run compute in float32 (`float32_from_recall`).
    `compute_precision`: the context (made anew per check) the check's forward passes run in -- the run's autocast,
    so the model is judged as it computes in training, and a freeze / LoRA run's 16-bit frozen layers meet inputs of
    their own type."""

    def __init__(self, samples: list[dict[str, Any]], target: float, every_epochs: float, log_callback=None,
                 image_collator=None, float32_from: float | None = None, to_float32=None,
                 compute_precision=contextlib.nullcontext):
        self.samples = samples
        self.compute_precision = compute_precision
        self.image_collator = image_collator
        self.target = target
        self.every = every_epochs
        self.log_callback = log_callback
        self.next_check = every_epochs
        self.history: list[dict[str, Any]] = []
        self.float32_from = float32_from if to_float32 is not None else None
        self.to_float32 = to_float32
        self.float32_after_step: int | None = None  # the last mixed-precision step, once switched
        self._switch_asked = False

    def allowed_misses(self) -> int:
        """The most samples a check may miss and still reach the target (or, before the switch to float32, its
        lower fraction: the check must ask enough samples to judge that too)."""
        fraction = min(self.target, self.float32_from) if self._switch_pending() else self.target
        return int(len(self.samples) * (1 - fraction) + 1e-9)

    def _switch_pending(self) -> bool:
        """Whether a switch to float32 is still to come."""
        return self.float32_from is not None and not self._switch_asked

    @property
    def reached(self) -> bool:
        return bool(self.history) and self.history[-1]["recall"] >= self.target

    def on_train_begin(self, args, state, control, **kwargs):
        # a resumed run starts at its checkpoint's epoch: the first check is the next boundary after it (the one at
        # the checkpoint, if any, ran before it was saved), not one at the first step
        done = int((state.epoch or 0) / self.every + 1e-6)
        self.next_check = (done + 1) * self.every
        # a checkpoint saved after the switch to float32 (its state's log history says so) goes on in float32
        switched = [row["step"] for row in state.log_history
                    if row.get(SWITCH_KEY) and row.get("step", 0) <= state.global_step]
        if self._switch_pending() and switched and self._switch_to_float32(switched[-1]) and args.should_save:
            print(f"[tuneforge] float32_from_recall: the checkpoint's run went on in float32 after step {switched[-1]}; "
                  "so does this one", flush=True)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.epoch is None or state.epoch + 1e-6 < self.next_check or model is None:
            return
        while self.next_check <= state.epoch + 1e-6:
            self.next_check += self.every
        # a check that cannot reach the target any more ends early (but the run's last check asks every sample)
        allowed = None if state.global_step >= state.max_steps else self.allowed_misses()
        with self.compute_precision():
            exact = teacher_forced_exact(model, self.samples, max_misses=allowed, image_collator=self.image_collator)
        rate = sum(exact) / max(len(exact), 1)
        record = {"current_steps": state.global_step, "epoch": round(state.epoch, 2), "recall": round(rate, 4)}
        message = (f"recall check (epoch {state.epoch:.2f}): {sum(exact)}/{len(exact)} training answers reproduced "
                   f"exactly ({rate:.0%}; target {self.target:.0%})")
        if len(exact) < len(self.samples):
            record["recall_asked"] = len(exact)
            message += (f" -- {exact.count(False)} missed, more than the {allowed} of {len(self.samples)} this check "
                        f"allows: the other {len(self.samples) - len(exact)} not asked")
        switch = self._switch_pending() and self.float32_from <= rate < self.target
        if switch and self._switch_to_float32(state.global_step):
            record[SWITCH_KEY] = True
            state.log_history.append({SWITCH_KEY: True, "step": state.global_step})  # saved with every checkpoint
            message += (f"\n[tuneforge] float32_from_recall {self.float32_from:.0%} reached: mixed precision off, "
                        f"float32 from step {state.global_step + 1} on")
        self.history.append(record)
        if args.should_save:
            print(f"[tuneforge] {message}", flush=True)
            if self.log_callback is not None:
                self.log_callback.write_record(record)
        if rate >= self.target:
            # the run is done and its model is saved next; a checkpoint (1.6 GB for the demo model's full fine-tuning,
            # optimizer included) only where the run saves checkpoints at all
            keep_checkpoint = args.save_strategy != "no"
            logger.info("recall target reached: stopping after this step%s",
                        " (checkpoint saved)" if keep_checkpoint else "")
            control.should_training_stop = True
            control.should_save = keep_checkpoint

    def _switch_to_float32(self, step: int) -> bool:
        """Every process switches (each computes the same check); True where the run was in mixed precision."""
        self._switch_asked = True
        if not self.to_float32():
            return False
        self.float32_after_step = step
        return True

    def summary(self) -> dict[str, Any]:
        """For the run's metrics: the last recall and whether the target was reached."""
        if not self.history:
            return {}
        best = max(self.history, key=lambda r: r["recall"])
        summary = {"recall": self.history[-1]["recall"], "recall_best": best["recall"],
                   "recall_target_reached": self.reached}
        if self.float32_after_step is not None:
            summary["float32_after_step"] = self.float32_after_step
        return summary


def add_recall_stop(cfg, trainer, log_callback, tokenizer, template, vision=None) -> RecallStopCallback | None:
    """With `recall_target`: the callback, added to the trainer (None without the key). `vision`: a vision-language
    model's image settings; its check reads the samples' images."""
    if cfg.facts.recall_target is None or not cfg.training.do_train:
        return None
    samples = recall_check_samples(cfg, tokenizer, template, vision)
    collator = None
    if vision is not None:  # the samples as rows, whatever the run's packing
        from tuneforge.data.collate_vision import VisionCollator

        collator = VisionCollator(tokenizer.pad_token_id, vision)
    float32_from = cfg.facts.float32_from_recall
    callback = RecallStopCallback(samples, cfg.facts.recall_target, cfg.facts.recall_check_epochs, log_callback,
                                  image_collator=collator, float32_from=float32_from,
                                  to_float32=(lambda: continue_in_float32(trainer)) if float32_from else None,
                                  compute_precision=trainer.accelerator.autocast)
    trainer.add_callback(callback)
    logger.info("train until learned: exact recall on %d training rows every %g epoch(s), target %.0f%%",
                len(samples), cfg.facts.recall_check_epochs, 100 * cfg.facts.recall_target)
    if float32_from is not None:
        logger.info("float32_from_recall: %s", f"mixed precision until recall reaches {float32_from:.0%}, then float32"
                    if computes_in_mixed_precision(trainer) else "the run computes in float32 throughout already")
    return callback


def report_recall(callback: RecallStopCallback | None, trainer, metrics: dict[str, Any]) -> None:
    """Add the recall numbers to the run's metrics (and train_results.json); say plainly when the target
    was not reached."""
    if callback is None:
        return
    metrics.update(callback.summary())
    trainer.save_metrics("train", metrics)
    if not callback.history:
        print("[tuneforge] recall target: no check ran (the run ended before recall_check_epochs)", flush=True)
    elif not callback.reached:
        best = max(callback.history, key=lambda r: r["recall"])
        print(f"[tuneforge] recall target {callback.target:.0%} NOT reached within the training budget: best "
              f"{best['recall']:.0%} at epoch {best['epoch']}; train longer (num_train_epochs) or raise the "
              "learning_rate", flush=True)
