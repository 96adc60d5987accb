"""A causal LM with a scalar value head: reward models (stage rm) and PPO critics / reward models.

API (stable; PPO builds on it):

- `ValueHeadModel(pretrained_model)`: wraps a causal LM (a transformers model or a peft `PeftModel`)
  and adds `v_head = nn.Linear(hidden_size, 1)` (float32, bias). The LM head is never run: the decoder
  gives the last hidden states and the value head maps each position to a scalar.
    - `forward(input_ids, attention_mask=None, position_ids=None) -> Tensor [B, T]` (float32): the value
      of every position. Padding-free rows (`position_ids` restarting at 0 per sequence, no
      attention_mask) are understood; the forward always runs with `use_cache=False`.
    - `sequence_values(input_ids, attention_mask=None, position_ids=None) -> Tensor [N]`: the value at the
      last token of each sequence: one per row with right padding (last `attention_mask == 1`), one per
      packed sequence with `position_ids` restarts (N = number of sequences, in order).
    - `save_pretrained(output_dir)`: the wrapped model's own `save_pretrained` (LoRA adapter or full
      weights, + config) and `value_head.safetensors` next to it.
    - `load_head(folder)`: load `value_head.safetensors` from `folder` into `v_head`.
    - `pretrained_model`, `v_head`, `config`; `disable_adapter()` (LoRA: the base model, as context manager).
- `load_value_head_model(model_args, finetuning_args, *, is_trainable, compute_dtype=None, head_dir=None)`:
  `load_model(...)` + the value head read from `head_dir` (default: the last `adapter_name_or_path`, else
  `model_name_or_path`). A missing head is a `ModelError` when not training; for training it starts
  from a fresh head (a reward model from a plain LM).
- `find_value_head(folder) -> Path | None`, `load_value_head_state(folder) -> dict[str, Tensor]`.

The file stores `v_head.summary.weight` / `v_head.summary.bias` (LLaMA-Factory / TRL key names), so reward
models trained with LLaMA-Factory load here and the other way around.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuneforge.config.args import FinetuningArguments, ModelArguments
from tuneforge.errors import ModelError
from tuneforge.model.attention import segment_starts
from tuneforge.utils.vision_models import IMAGE_INPUTS

logger = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"
_WEIGHT_KEY, _BIAS_KEY = "v_head.summary.weight", "v_head.summary.bias"


def last_token_indices(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) of the last real token of every sequence in a batch.

    With an attention_mask: one sequence per row, right padded. Without one, a single row whose
    `position_ids` restart at 0 holds several packed sequences; otherwise each row is one full sequence.
    """
    batch, length = input_ids.shape[:2]
    if attention_mask is not None:
        columns = attention_mask.long().sum(dim=-1) - 1
        if bool((columns < 0).any()):
            raise ValueError("a row of the batch has no real token (attention_mask all zero)")
        return torch.arange(batch, device=input_ids.device), columns.to(input_ids.device)
    if position_ids is not None and batch == 1:
        is_last = torch.ones_like(position_ids[0], dtype=torch.bool)
        is_last[:-1] = segment_starts(position_ids[0])[1:]  # the token before a new segment starts
        columns = is_last.nonzero().squeeze(-1)
        return torch.zeros_like(columns), columns
    return torch.arange(batch, device=input_ids.device), torch.full((batch,), length - 1, device=input_ids.device)


class ValueHeadModel(nn.Module):
    """A causal LM whose last hidden states feed a `Linear(hidden, 1)` value head."""

    def __init__(self, pretrained_model: nn.Module, hidden_size: int | None = None) -> None:
        super().__init__()
        self.pretrained_model = pretrained_model
        config = pretrained_model.config
        hidden = hidden_size or getattr(getattr(config, "text_config", None) or config, "hidden_size", None)
        if not hidden:
            raise ModelError(f"cannot find hidden_size in the config of {type(pretrained_model).__name__}")
        self.v_head = nn.Linear(int(hidden), 1, dtype=torch.float32)
        device = next(pretrained_model.parameters()).device
        self.v_head.to(device)

    # ---- what the HF Trainer and peft users look for ------------------------------------------
    @property
    def config(self):
        return self.pretrained_model.config

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.pretrained_model.gradient_checkpointing_enable(**kwargs)

    def enable_input_require_grads(self) -> None:
        self.pretrained_model.enable_input_require_grads()

    def disable_adapter(self):
        """Context manager: the base model without its LoRA adapter (no-op for full/freeze models)."""
        disable = getattr(self.pretrained_model, "disable_adapter", None)
        return disable() if callable(disable) and hasattr(self.pretrained_model, "peft_config") else contextlib.nullcontext()

    # ---- forward ------------------------------------------------------------------------------
    def hidden_states(self, input_ids, attention_mask=None, position_ids=None, **images: Any) -> torch.Tensor:
        """Last hidden states [B, T, H] (final norm applied), without computing any logits. `images`: a
        vision-language model's `pixel_values`, `image_grid_thw`, `mm_token_type_ids` (data/collate_vision.py),
        which its inner model (vision tower + language model, no LM head) takes."""
        from tuneforge.model.lm_parts import resolve_lm_parts, unwrap_peft

        kwargs = {"input_ids": input_ids, "use_cache": False, **images}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        parts, _ = resolve_lm_parts(self.pretrained_model)
        inner = getattr(unwrap_peft(self.pretrained_model), "base_model", None) if images else None
        decoder = parts.decoder if parts is not None else inner
        if decoder is not None:
            out = decoder(**kwargs)
            return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        out = self.pretrained_model(**kwargs, output_hidden_states=True, return_dict=True)
        return out.hidden_states[-1]

    def forward(self, input_ids, attention_mask=None, position_ids=None, **images: Any) -> torch.Tensor:
        images = {key: images[key] for key in IMAGE_INPUTS if images.get(key) is not None}
        hidden = self.hidden_states(input_ids, attention_mask, position_ids, **images)
        return self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1)

    def sequence_values(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        rows, columns = last_token_indices(input_ids, attention_mask, position_ids)
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)
        # only the last positions go through the head
        return self.v_head(hidden[rows, columns].to(self.v_head.weight.dtype)).squeeze(-1)

    # ---- save / load --------------------------------------------------------------------------
    def head_state(self) -> dict[str, torch.Tensor]:
        return {_WEIGHT_KEY: self.v_head.weight.detach().cpu().contiguous(),
                _BIAS_KEY: self.v_head.bias.detach().cpu().contiguous()}

    def save_pretrained(self, output_dir: str, state_dict=None, is_main_process: bool = True, **kwargs: Any) -> None:
        """The wrapped model's files (adapter or full weights) + `value_head.safetensors`.

        `state_dict`: a full state dict of this wrapper (`pretrained_model.*`, `v_head.*`), as the HF Trainer passes
        it where the parameters themselves are sharded (DeepSpeed ZeRO-3 gathers them into it); without one each
        part saves its own weights.
        """
        from safetensors.torch import save_file

        head = self.head_state()
        if state_dict is not None:
            inner = "pretrained_model."
            kwargs["state_dict"] = {k[len(inner):]: v for k, v in state_dict.items() if k.startswith(inner)}
            if "v_head.weight" in state_dict:
                head = {_WEIGHT_KEY: state_dict["v_head.weight"].detach().cpu().contiguous(),
                        _BIAS_KEY: state_dict["v_head.bias"].detach().cpu().contiguous()}
        self.pretrained_model.save_pretrained(output_dir, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            save_file(head, str(Path(output_dir) / VALUE_HEAD_FILE), metadata={"format": "pt"})

    def load_head(self, folder: str | Path) -> None:
        state = load_value_head_state(folder)
        with torch.no_grad():
            weight, bias = state[_WEIGHT_KEY], state[_BIAS_KEY]
            if weight.shape != self.v_head.weight.shape:
                raise ModelError(f"{Path(folder) / VALUE_HEAD_FILE}: value head of shape {tuple(weight.shape)} "
                                 f"does not fit a model with hidden size {self.v_head.in_features}")
            self.v_head.weight.copy_(weight.to(self.v_head.weight))
            self.v_head.bias.copy_(bias.to(self.v_head.bias))


def find_value_head(folder: str | Path | None) -> Path | None:
    if folder is None:
        return None
    path = Path(str(folder)).expanduser() / VALUE_HEAD_FILE
    return path if path.is_file() else None


def load_value_head_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """`{"v_head.summary.weight", "v_head.summary.bias"}` from `folder/value_head.safetensors`."""
    from safetensors.torch import load_file

    path = find_value_head(folder)
    if path is None:
        raise ModelError(f"{folder} has no {VALUE_HEAD_FILE}: it is not a reward model (train one with `stage: rm`)")
    state = load_file(str(path))
    if _WEIGHT_KEY not in state or _BIAS_KEY not in state:
        raise ModelError(f"{path}: expected tensors {_WEIGHT_KEY} and {_BIAS_KEY}, found {sorted(state)}")
    return state


def default_head_dir(model_args: ModelArguments) -> str:
    """Where a model's value head lives: the last adapter folder, else the model folder."""
    from tuneforge.model.loader import resolve_model_path
    from tuneforge.config.args import split_names

    adapters = split_names(model_args.adapter_name_or_path)
    return adapters[-1] if adapters else resolve_model_path(model_args.model_name_or_path)


def load_value_head_model(model_args: ModelArguments, finetuning_args: FinetuningArguments, *, is_trainable: bool,
                          compute_dtype=None, head_dir: str | Path | None = None) -> ValueHeadModel:
    """`load_model(...)` wrapped in a `ValueHeadModel`, its head read from `head_dir` when there is one."""
    from tuneforge.model.loader import load_model

    folder = head_dir if head_dir is not None else default_head_dir(model_args)
    found = find_value_head(folder)
    if found is None and not is_trainable:
        raise ModelError(f"{folder} has no {VALUE_HEAD_FILE}: it is not a reward model (train one with `stage: rm`)")
    model = ValueHeadModel(load_model(model_args, finetuning_args, is_trainable=is_trainable,
                                      compute_dtype=compute_dtype))
    if found is not None:
        model.load_head(folder)
        logger.info("value head loaded from %s", found)
    else:
        logger.info("value head: new, initialised at random (no %s in %s)", VALUE_HEAD_FILE, folder)
    if not is_trainable:
        model.requires_grad_(False)
        model.eval()
    return model
