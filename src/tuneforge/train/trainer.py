"""`TuneforgeTrainer`: the one `transformers.Trainer` subclass of the project.

What it changes:
- loss: decoder once, then LM head + cross-entropy only at label positions, in chunks
  (`loss.py`); models the chunked path does not know use their own forward (logged once);
- every forward runs with `use_cache=False` (needed for padding-free batches, see collate.py);
- tokens: real (non-pad) tokens and label tokens are counted; logs carry `total_tokens` and
  `throughput` (real tokens/s of this session);
- LoRA+: with `loraplus_lr_ratio`, LoRA B matrices (and biases) train at lr * ratio;
- `torch_compile`: the decoder layers are compiled in place (model/compile.py), not the whole
  model, which the chunked loss would bypass;
- `save_model()` of the final model writes to a temporary folder first, then moves the files
  into place, so a crash mid-save never leaves a half-written adapter/model over a good one;
- objectives: other stages (rm, dpo, kto) pass `objective=`, an object with
  `compute(model, inputs, num_items_in_batch) -> (loss, metrics)` and `input_columns` (batch columns
  to keep). Its loss replaces the LM loss (a mean over the micro-batch, divided by the Trainer for
  gradient accumulation), its metrics are averaged per logging step and logged (`eval_`-prefixed in
  evaluation). Wrapper models that are not `PreTrainedModel`/`PeftModel` but define
  `save_pretrained` (the value-head model) save and resume through their own methods.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from tuneforge.train.loss import DEFAULT_CHUNK_SIZE, chunked_causal_lm_loss, resolve_lm_parts, shifted_label_count

logger = logging.getLogger(__name__)

_SAVE_TMP_DIRNAME = ".tuneforge-saving"
# Files of a saved model/adapter that a new save must not leave stale next to its own.
_WEIGHT_FILE_PREFIXES = ("model", "pytorch_model", "adapter_model")
_WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".index.json")


def _compile_regionally(model, training_args):
    """Compile the decoder layers ourselves (model/compile.py); the Trainer gets a copy of the
    arguments with its whole-model compile switched off."""
    import copy

    from tuneforge.model.compile import compile_decoder_layers

    compile_decoder_layers(model, backend=training_args.torch_compile_backend, mode=training_args.torch_compile_mode)
    training_args = copy.copy(training_args)
    training_args.torch_compile, training_args.torch_compile_backend, training_args.torch_compile_mode = False, None, None
    return training_args


class TuneforgeTrainer(Trainer):
    def __init__(
        self,
        *args: Any,
        loss_chunk_size: int = DEFAULT_CHUNK_SIZE,
        loraplus_lr_ratio: float | None = None,
        loraplus_lr_embedding: float = 1e-6,
        objective: Any = None,
        **kwargs: Any,
    ) -> None:
        training_args = kwargs.get("args")
        if training_args is not None and training_args.torch_compile:
            kwargs["args"] = _compile_regionally(kwargs.get("model"), training_args)
        super().__init__(*args, **kwargs)
        self.objective = objective
        self._objective_metrics: dict[str, dict[str, list[float]]] = {"train": {}, "eval": {}}
        # Whether the model's own forward takes num_items_in_batch (HF decides from its signature).
        self._forward_takes_num_items = self.model_accepts_loss_kwargs
        self.loss_chunk_size = loss_chunk_size
        self.loraplus_lr_ratio = loraplus_lr_ratio
        self.loraplus_lr_embedding = loraplus_lr_embedding
        # Our compute_loss always takes num_items_in_batch: have the Trainer count label tokens over
        # the whole accumulated batch and treat our loss as already normalised for accumulation.
        self.model_accepts_loss_kwargs = True
        self._logged_fallbacks: set[str] = set()
        self._session_tokens = 0
        self._session_label_tokens = 0
        self._count_into_state = self.args.include_num_input_tokens_seen in ("no", False, None)
        if self.args.remove_unused_columns:
            # Keep the columns our collators read even if a model's forward does not name them.
            self._set_signature_columns_if_needed()
            self._signature_columns = list(dict.fromkeys([*self._signature_columns, "input_ids", "labels"]))
        if objective is not None:
            self.loss_is_scaled_for_ga = False  # objective losses are micro-batch means
            if self.args.remove_unused_columns:
                self._signature_columns = list(dict.fromkeys([*self._signature_columns, *objective.input_columns]))

    # ---- loss -------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        if self.objective is not None:
            loss, metrics = self.objective.compute(model, inputs, num_items_in_batch)
            store = self._objective_metrics["train" if model.training else "eval"]
            for key, value in metrics.items():
                store.setdefault(key, []).append(float(value))
            return (loss, None) if return_outputs else loss
        if "labels" not in inputs:
            raise ValueError(f"TuneforgeTrainer needs 'labels' in every batch; the batch has {sorted(inputs)}.")
        unwrapped = self.accelerator.unwrap_model(model)
        parts, reason = resolve_lm_parts(unwrapped, inputs)
        if parts is not None and unwrapped is not model:
            # DDP/FSDP/DeepSpeed wrappers hook into forward(); calling submodules would bypass them.
            parts, reason = None, f"the model is wrapped by {type(model).__name__}"
        outputs = None
        if return_outputs or parts is None:
            if parts is None:
                self._log_fallback_once(reason)
            loss, outputs = self._plain_forward_loss(model, inputs, num_items_in_batch)
        else:
            loss = chunked_causal_lm_loss(
                parts, inputs, chunk_size=self.loss_chunk_size, num_items_in_batch=num_items_in_batch
            )
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # As Trainer.compute_loss: num_items_in_batch counts every rank's tokens and DDP
            # averages gradients, so scale back up by the number of data-parallel ranks.
            n_gpu = self.args.n_gpu
            loss = loss * (self.accelerator.num_processes // self.get_tp_size() if n_gpu <= 1 else n_gpu)
        return (loss, outputs) if return_outputs else loss

    def _plain_forward_loss(self, model, inputs, num_items_in_batch):
        """The model's own forward (full logits); loss normalised like the chunked path."""
        extra: dict[str, Any] = {"use_cache": False}
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
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items)
        return (loss.detach(), None, None)

    # ---- token accounting ---------------------------------------------------------------------
    @property
    def total_real_tokens(self) -> int:
        """Real (non-pad) tokens trained on, including steps before a resume when we can know them."""
        return self.state.num_input_tokens_seen if self._count_into_state else self._session_tokens

    def train(self, *args: Any, **kwargs: Any):
        self._session_tokens = 0
        self._session_label_tokens = 0
        result = super().train(*args, **kwargs)
        runtime = result.metrics.get("train_runtime")
        if runtime:
            result.metrics["throughput"] = round(self._session_tokens / runtime, 2)
        result.metrics["total_tokens"] = self.total_real_tokens
        return result

    def training_step(self, model, inputs, num_items_in_batch=None):
        real_tokens = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else inputs["input_ids"].numel()
        self._session_tokens += real_tokens
        self._session_label_tokens += shifted_label_count(inputs["labels"]) if "labels" in inputs else 0
        if self._count_into_state:  # persisted in trainer_state.json, so it survives a resume
            self.state.num_input_tokens_seen += real_tokens
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if start_time is not None and "loss" in logs:
            elapsed = max(time.time() - start_time, 1e-9)
            logs["throughput"] = round(self._session_tokens / elapsed, 2)
            logs["total_tokens"] = self.total_real_tokens
            logs["label_tokens"] = self._session_label_tokens
        split = "train" if "loss" in logs else "eval"
        prefix = "" if split == "train" else "eval_"
        for key, values in self._objective_metrics[split].items():
            logs[prefix + key] = round(sum(values) / len(values), 6)
        self._objective_metrics[split] = {}
        super().log(logs, start_time)

    # ---- LoRA+ ------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
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
        )
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        logger.info("LoRA+ optimizer: lr_B = %g x lr", self.loraplus_lr_ratio)
        return self.optimizer

    # ---- wrapper models (value head) ---------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        model = self.accelerator.unwrap_model(self.model)
        inner = getattr(model, "pretrained_model", None)
        if inner is None or not hasattr(model, "save_pretrained"):
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model.save_pretrained(output_dir, is_main_process=self.args.should_save)
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
        staging = target / _SAVE_TMP_DIRNAME
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left over from a crashed save
        super().save_model(str(staging), _internal_call=False)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            move_saved_files(staging, target)


def move_saved_files(staging: Path, target: Path) -> None:
    """Move every file of `staging` into `target` (atomic per file), drop stale weight files, remove `staging`."""
    new_names = {p.name for p in staging.iterdir()}
    for path in staging.iterdir():
        destination = target / path.name
        if path.is_dir():
            shutil.rmtree(destination, ignore_errors=True)
        os.replace(path, destination)
    # Weight files of the same kind that the new save did not write are stale, e.g. old shards
    # model-0000x-of-0000y.safetensors next to a new single model.safetensors.
    saved_kinds = {p for p in _WEIGHT_FILE_PREFIXES for n in new_names if _is_weight_file(n, p)}
    for old in target.iterdir():
        if old.is_file() and old.name not in new_names and any(_is_weight_file(old.name, p) for p in saved_kinds):
            old.unlink()
    shutil.rmtree(staging, ignore_errors=True)


def _is_weight_file(name: str, prefix: str) -> bool:
    return name.startswith(prefix) and name.endswith(_WEIGHT_FILE_SUFFIXES)


def loraplus_param_groups(
    model: nn.Module,
    *,
    decay_names: set[str],
    lr: float,
    weight_decay: float,
    ratio: float,
    embedding_lr: float,
) -> list[dict[str, Any]]:
    """LoRA+ (Hayou et al. 2024) parameter groups, as in LLaMA-Factory.

    LoRA A and other trainable weights: lr; LoRA B and 1-D parameters (biases, norms): lr * ratio;
    LoRA embedding adapters: `embedding_lr`. Weight decay only on `decay_names`.
    """
    buckets: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_embedding_" in name:
            group_lr = embedding_lr
        elif "lora_B" in name or param.ndim == 1:
            group_lr = lr * ratio
        else:
            group_lr = lr
        group_wd = weight_decay if name in decay_names else 0.0
        buckets.setdefault((group_lr, group_wd), []).append(param)
    return [{"params": params, "lr": g_lr, "weight_decay": g_wd} for (g_lr, g_wd), params in buckets.items()]
