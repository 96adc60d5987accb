"""`TuneforgeTrainer`: the one `transformers.Trainer` subclass of the project.

What it changes:
- loss: decoder once, then LM head + cross-entropy only at label positions, in chunks
  (`loss.py`); models the chunked path does not know use their own forward (logged once);
- every forward runs with `use_cache=False` (needed for padding-free batches, see collate.py);
- tokens: real (non-pad) tokens and label tokens are counted; logs carry `total_tokens` and
  `throughput` (real tokens/s of this session);
- LoRA+: with `loraplus_lr_ratio`, LoRA B matrices (and biases) train at lr * ratio (optim.py);
- LF's own optimizers (`use_galore`, `use_apollo`, `use_badam`, `use_adam_mini`, `use_muon`): built by
  optimizers.py; layer-wise GaLore / APOLLO get one lr schedule per parameter;
- `compute_accuracy`: evaluation also reports `eval_accuracy` (LF's token accuracy: per sample, the share of
  label tokens the argmax of the logits predicts, averaged over samples), from the same chunked pass;
- `token_weighting` (LF's `use_dft_loss` / `use_eaft_loss`, sft): every label token's cross-entropy times a
  detached weight (loss.py), in training and evaluation, on the chunked and the plain-forward path alike;
- `torch_compile`: the decoder layers are compiled in place (model/compile.py), not the whole
  model, which the chunked loss would bypass;
- `save_model()` of the final model writes the complete save to a staging folder, commits it with one
  rename and then moves its files into place (utils/folders.py): a crash never leaves a half-written
  adapter/model or a mix of old and new files;
- objectives: other stages (rm, dpo, kto, grpo) pass `objective=`, an object with
  `compute(model, inputs, num_items_in_batch) -> (loss, metrics)` and `input_columns` (batch columns
  to keep). Its loss replaces the LM loss (a mean over the micro-batch, divided by the Trainer for
  gradient accumulation), its metrics are averaged per logging step and logged (`eval_`-prefixed in
  evaluation). Wrapper models that are not `PreTrainedModel`/`PeftModel` but define
  `save_pretrained` (the value-head model) save and resume through their own methods.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from tuneforge.model.compile import compile_regionally
from tuneforge.model.lm_parts import resolve_lm_parts
from tuneforge.train.loss import (DEFAULT_CHUNK_SIZE, IGNORE_INDEX, TokenWeighting, chunked_causal_lm_eval,
                                  chunked_causal_lm_loss, computed_token_count, logits_loss, real_token_count,
                                  sample_accuracies, shifted_label_count)
from tuneforge.train.optim import loraplus_param_groups
from tuneforge.train.sharding import through_wrapper
from tuneforge.train.stage_metrics import StageMetrics
from tuneforge.utils.folders import SAVING_DIRNAME, commit_files, finish_interrupted_save

logger = logging.getLogger(__name__)


def _eval_prefix(logs: dict[str, float]) -> str:
    """`eval_`, or `eval_<name>_` for one dataset of a dict of eval datasets (its loss is `eval_<name>_loss`)."""
    return next((key.removesuffix("loss") for key in logs if key.startswith("eval_") and key.endswith("_loss")),
                "eval_")


class TuneforgeTrainer(Trainer):
    def __init__(
        self,
        *args: Any,
        loss_chunk_size: int = DEFAULT_CHUNK_SIZE,
        loraplus_lr_ratio: float | None = None,
        loraplus_lr_embedding: float = 1e-6,
        objective: Any = None,
        compute_accuracy: bool = False,
        token_weighting: TokenWeighting | None = None,
        finetuning_args: Any = None,
        **kwargs: Any,
    ) -> None:
        training_args = kwargs.get("args")
        if training_args is not None and training_args.torch_compile:
            kwargs["args"] = compile_regionally(kwargs.get("model"), training_args)
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.compute_accuracy = compute_accuracy and objective is None
        self.token_weighting = token_weighting
        self._accuracy_sum = [0.0, 0]  # sum of per-sample accuracies, samples (this evaluation)
        self.stage_metrics = StageMetrics()
        # Whether the model's own forward takes num_items_in_batch (HF decides from its signature).
        self._forward_takes_num_items = self.model_accepts_loss_kwargs
        self.loss_chunk_size = loss_chunk_size
        self.loraplus_lr_ratio = loraplus_lr_ratio
        self.loraplus_lr_embedding = loraplus_lr_embedding
        self.finetuning_args = finetuning_args  # LF's own optimizers: use_galore, use_badam, ... (optimizers.py)
        if getattr(finetuning_args, "use_badam", False):
            from types import MethodType

            from badam import clip_grad_norm_old_version

            # as LF: gradient clipping that also takes BAdam's sparse gradients (badam_mode: ratio)
            self.accelerator.clip_grad_norm_ = MethodType(clip_grad_norm_old_version, self.accelerator)
        # Our compute_loss always takes num_items_in_batch: have the Trainer count label tokens over
        # the whole accumulated batch and treat our loss as already normalised for accumulation.
        self.model_accepts_loss_kwargs = True
        self._logged_fallbacks: set[str] = set()
        self._session_tokens = 0
        self._session_label_tokens = 0
        self.session_computed_tokens = 0  # tokens the model ran: fewer than the real ones with shared prefixes
        self.session_steps = 0  # micro-batches trained by this train() call (0: a resume with nothing left)
        self._count_into_state = self.args.include_num_input_tokens_seen in ("no", False, None)
        if self.args.remove_unused_columns:
            # Keep the columns our collators read even if a model's forward does not name them.
            self._set_signature_columns_if_needed()
            self._signature_columns = list(dict.fromkeys([*self._signature_columns, "input_ids", "labels",
                                                          "images"]))  # images: data/collate_vision.py
        if objective is not None:
            self.loss_is_scaled_for_ga = False  # objective losses are micro-batch means
            if self.args.remove_unused_columns:
                self._signature_columns = list(dict.fromkeys([*self._signature_columns, *objective.input_columns]))

    def create_accelerator_and_postprocess(self) -> None:
        from tuneforge.train.sharding import check_fsdp1_shared_frozen_weights, enable_fsdp_on_cpu

        super().create_accelerator_and_postprocess()
        enable_fsdp_on_cpu(self)  # accelerate applies FSDP on GPUs only; torch's FSDP2 runs on CPU processes too
        check_fsdp1_shared_frozen_weights(self)

    # ---- loss -------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        if self.objective is not None:
            # the objectives call the decoder themselves, past the `bf16`/`fp16` autocast accelerate puts around
            # model.forward() (with float32 trainable weights they would run in float32 throughout)
            with self.accelerator.autocast():
                loss, metrics = self.objective.compute(model, inputs, num_items_in_batch)
            self.stage_metrics.add("train" if model.training else "eval", metrics)
            return (loss, None) if return_outputs else loss
        if "labels" not in inputs:
            raise ValueError(f"TuneforgeTrainer needs 'labels' in every batch; the batch has {sorted(inputs)}.")
        unwrapped = self.accelerator.unwrap_model(model)
        parts, reason = resolve_lm_parts(unwrapped, inputs)
        outputs = None
        if return_outputs or parts is None:
            if parts is None:
                self._log_fallback_once(reason)
            loss, outputs = self._plain_forward_loss(model, inputs, num_items_in_batch)
        else:
            def chunked_loss(**batch):
                # accelerate puts `bf16`/`fp16` autocast around model.forward(); this replaces that forward
                with self.accelerator.autocast():
                    return chunked_causal_lm_loss(parts, batch, chunk_size=self.loss_chunk_size,
                                                  num_items_in_batch=num_items_in_batch, weighting=self.token_weighting)

            loss = through_wrapper(model, unwrapped, chunked_loss, inputs)
        loss = self._scale_for_devices(loss, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _scale_for_devices(self, loss, num_items_in_batch):
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # As Trainer.compute_loss: num_items_in_batch counts every rank's tokens and DDP
            # averages gradients, so scale back up by the number of data-parallel ranks.
            n_gpu = self.args.n_gpu
            loss = loss * (self.accelerator.num_processes // self.get_tp_size() if n_gpu <= 1 else n_gpu)
        return loss

    def _plain_forward_loss(self, model, inputs, num_items_in_batch):
        """The model's own forward (full logits); loss normalised like the chunked path."""
        extra: dict[str, Any] = {"use_cache": False}
        if self.token_weighting is not None:  # the model's loss is plain CE: DFT / EAFT from its logits (as LF)
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, **extra)
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            return logits_loss(logits, inputs["labels"], num_items_in_batch, weighting=self.token_weighting), outputs
        if num_items_in_batch is not None and self._forward_takes_num_items:
            extra["num_items_in_batch"] = num_items_in_batch
        outputs = model(**inputs, **extra)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        if num_items_in_batch is not None and not self._forward_takes_num_items:
            # The model returned a mean over this micro-batch: rescale to sum / num_items_in_batch.
            loss = loss * shifted_label_count(inputs["labels"]) / num_items_in_batch
        return loss, outputs

    def _log_fallback_once(self, reason: str) -> None:
        if reason not in self._logged_fallbacks:
            self._logged_fallbacks.add(reason)
            logger.warning("Chunked LM loss not used (%s); computing full logits instead.", reason)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # When nothing needs logits (no metrics), evaluate with the chunked loss instead of
        # gathering [tokens x vocab] logits for the whole eval set.
        loss_only = prediction_loss_only or (
            self.compute_metrics is None and self.preprocess_logits_for_metrics is None
        )
        if self.objective is not None:
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs)
            return (loss.detach(), None, None)
        if not loss_only or "labels" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        num_items = self._get_num_items_in_batch([inputs], self.args.device)  # as Trainer.prediction_step
        with torch.no_grad(), self.compute_loss_context_manager():
            if self.compute_accuracy:
                loss = self._loss_and_accuracy(model, inputs, num_items)
            else:
                loss = self.compute_loss(model, inputs, num_items_in_batch=num_items)
        return (loss.detach(), None, None)

    def _loss_and_accuracy(self, model, inputs, num_items):
        """The evaluation loss, and the batch's per-sample token accuracies added to this evaluation's sum."""
        unwrapped = self.accelerator.unwrap_model(model)
        parts, reason = resolve_lm_parts(unwrapped, inputs)
        if parts is not None:
            def chunked_eval(**batch):  # label rows only, also as a wrapper's (DeepSpeed, FSDP) forward
                with self.accelerator.autocast():
                    return chunked_causal_lm_eval(parts, batch, chunk_size=self.loss_chunk_size,
                                                  num_items_in_batch=num_items, weighting=self.token_weighting)

            loss, hits, keep = through_wrapper(model, unwrapped, chunked_eval, inputs)
        else:  # the model's own forward: its logits exist anyway
            self._log_fallback_once(reason)
            loss, outputs = self._plain_forward_loss(model, inputs, num_items)
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[1]
            labels = inputs["labels"][:, 1:]
            keep = labels != IGNORE_INDEX
            hits = logits[:, :-1][keep].argmax(dim=-1) == labels[keep]
        accuracies = sample_accuracies(hits, keep, inputs)
        self._accuracy_sum[0] += float(accuracies.sum())
        self._accuracy_sum[1] += accuracies.numel()
        return self._scale_for_devices(loss, num_items)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self._accuracy_sum = [0.0, 0]
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.compute_accuracy:
            total = torch.tensor(self._accuracy_sum, dtype=torch.float64, device=self.args.device)
            if self.accelerator.num_processes > 1:
                total = self.accelerator.reduce(total, reduction="sum")
            if total[1] > 0:
                output.metrics[f"{metric_key_prefix}_accuracy"] = float(total[0] / total[1])
        return output

    # ---- token accounting ---------------------------------------------------------------------
    @property
    def total_real_tokens(self) -> int:
        """Real (non-pad) tokens trained on, including steps before a resume when we can know them."""
        return self.state.num_input_tokens_seen if self._count_into_state else self._session_tokens

    def train(self, resume_from_checkpoint: str | None = None, **kwargs: Any):
        self._session_tokens = 0
        self._session_label_tokens = 0
        self.session_computed_tokens = 0
        self.session_steps = 0
        if resume_from_checkpoint and self._nothing_left(resume_from_checkpoint):
            return self._load_finished_run(resume_from_checkpoint)
        result = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        session, total, _ = self._token_counts()
        runtime = result.metrics.get("train_runtime")
        if runtime:
            result.metrics["throughput"] = round(session / runtime, 2)
        result.metrics["total_tokens"] = total
        return result

    def _token_counts(self) -> tuple[int, int, int]:
        """(session tokens, total tokens, session label tokens) of the whole run: summed over the processes
        of a multi-process run (every rank calls this at the same point: it is a collective)."""
        counts = [self._session_tokens, self.total_real_tokens, self._session_label_tokens]
        if self.accelerator.num_processes > 1:
            summed = self.accelerator.reduce(torch.tensor(counts, dtype=torch.int64, device=self.args.device), "sum")
            counts = [int(x) for x in summed.tolist()]
        return counts[0], counts[1], counts[2]

    def _nothing_left(self, checkpoint: str) -> bool:
        """The checkpoint already reached the run's end (HF would train one step past it: step 5 of 4)."""
        from tuneforge.train.resume import read_checkpoint_state

        state = read_checkpoint_state(Path(checkpoint)) or {}
        if self.args.max_steps > 0:
            return state.get("global_step", 0) >= self.args.max_steps
        return state.get("epoch", 0) >= self.args.num_train_epochs - 1e-6

    def _load_finished_run(self, checkpoint: str):
        """Weights and state of a checkpoint with nothing left to train; train_loss = the run's mean logged loss
        (HF would report 0.0)."""
        from transformers.trainer_utils import TrainOutput
        from transformers.trainer_callback import TrainerState

        self._load_from_checkpoint(checkpoint)
        self.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
        losses = [row["loss"] for row in self.state.log_history if "loss" in row]
        metrics = {"train_runtime": 0.0, "total_tokens": self.total_real_tokens}
        if losses:
            metrics["train_loss"] = sum(losses) / len(losses)
        return TrainOutput(self.state.global_step, metrics.get("train_loss", float("nan")), metrics)

    def micro_batch_tokens(self, inputs) -> tuple[int, int, int]:
        """(real, label, computed) tokens of a micro-batch, for the throughput and token counts (a stage may
        override). Real tokens are the samples' own; computed ones what the model ran (a shared prefix once)."""
        labels = shifted_label_count(inputs["labels"]) if "labels" in inputs else 0
        return real_token_count(inputs), labels, computed_token_count(inputs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        real_tokens, label_tokens, computed_tokens = self.micro_batch_tokens(inputs)
        self.session_computed_tokens += computed_tokens
        self.session_steps += 1
        self._session_tokens += real_tokens
        self._session_label_tokens += label_tokens
        if self._count_into_state:  # persisted in trainer_state.json, so it survives a resume
            self.state.num_input_tokens_seen += real_tokens
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if start_time is not None and "loss" in logs:
            elapsed = max(time.time() - start_time, 1e-9)
            session, total, labels = self._token_counts()
            logs["throughput"] = round(session / elapsed, 2)
            logs["total_tokens"] = total
            logs["label_tokens"] = labels
        split = "train" if "loss" in logs else "eval"
        prefix = "" if split == "train" else _eval_prefix(logs)
        if self.objective is not None:  # every rank logs at the same point (HF's own loss gather is a collective)
            for key, value in self.stage_metrics.pop_means(split).items():
                logs[prefix + key] = round(value, 6)
        super().log(logs, start_time)

    # ---- LoRA+, LF's own optimizers ----------------------------------------------------------
    def create_optimizer(self, model=None):
        if self.optimizer is None and self.finetuning_args is not None:
            from tuneforge.train.optimizers import create_custom_optimizer

            custom = create_custom_optimizer(self.model if model is None else model, self.args, self.finetuning_args)
            if custom is not None:
                self.optimizer = custom
                return self.optimizer
        if self.loraplus_lr_ratio is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        groups = loraplus_param_groups(
            opt_model,
            decay_names=set(self.get_decay_parameter_names(opt_model)),
            lr=self.args.learning_rate,
            weight_decay=self.args.weight_decay,
            ratio=self.loraplus_lr_ratio,
            embedding_lr=self.loraplus_lr_embedding,
        )  # the same groups as optim.create_optimizer (PPO)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        logger.info("LoRA+ optimizer: lr_B = %g x lr", self.loraplus_lr_ratio)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        from tuneforge.train.optimizers import LayerwiseOptimizer

        inner = optimizer if optimizer is not None else self.optimizer
        inner = getattr(inner, "optimizer", inner)  # accelerate's AcceleratedOptimizer wraps ours
        if isinstance(inner, LayerwiseOptimizer):  # layer-wise GaLore / APOLLO: one lr schedule per parameter
            from transformers.optimization import get_scheduler

            inner.attach_schedulers(lambda opt: get_scheduler(
                self.args.lr_scheduler_type, optimizer=opt,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps, scheduler_specific_kwargs=self.args.lr_scheduler_kwargs))
        return super().create_scheduler(num_training_steps, optimizer)

    # ---- wrapper models (value head) ---------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        model = self.accelerator.unwrap_model(self.model)
        inner = getattr(model, "pretrained_model", None)
        if inner is None or not hasattr(model, "save_pretrained"):
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        # state_dict: the parameters gathered from their shards (DeepSpeed ZeRO-3), else None
        model.save_pretrained(output_dir, state_dict=state_dict, is_main_process=self.args.should_save)
        if self.args.should_save:
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        wrapper = self.accelerator.unwrap_model(model if model is not None else self.model)
        inner = getattr(wrapper, "pretrained_model", None)
        if inner is None or not hasattr(wrapper, "load_head"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        super()._load_from_checkpoint(resume_from_checkpoint, inner)
        wrapper.load_head(resume_from_checkpoint)

    # ---- atomic final save --------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if _internal_call:  # checkpoints go to a fresh checkpoint-N folder anyway
            return super().save_model(output_dir, _internal_call=True)
        target = Path(output_dir if output_dir is not None else self.args.output_dir)
        if self.args.should_save:
            finish_interrupted_save(target)  # a save a crash interrupted is finished or dropped (log line)
        super().save_model(str(target / SAVING_DIRNAME), _internal_call=False)
        if self.args.should_save and getattr(self, "image_processor", None) is not None:  # a vision-language model
            self.image_processor.save_pretrained(str(target / SAVING_DIRNAME))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            commit_files(target)  # one rename commits the complete save; its files then move into place
