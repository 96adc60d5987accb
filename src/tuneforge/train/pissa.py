"""`pissa_convert: true` (LLaMA-Factory's `PissaConvertCallback`): a PiSSA adapter only works on the residual
base weights PiSSA made from the model, so at the end of training it is also saved as a plain LoRA adapter that
works on the original model.

    <output_dir>/pissa_init/        the adapter as initialised (before the first step), init_lora_weights: true
    <output_dir>/pissa_backup/      the trained PiSSA adapter, init_lora_weights: true (LF writes it too)
    <output_dir>/pissa_converted/   the trained adapter as a plain LoRA adapter of rank 2r (peft's
                                    `save_pretrained(path_initial_model_for_weight_conversion=pissa_init)`):
                                    original model + this adapter = the trained PiSSA model

`output_dir` itself holds the PiSSA adapter as usual (its config says `init_lora_weights: pissa...`, so peft
re-derives the residual weights when it is loaded). A resumed run keeps the `pissa_init` of the run that
started from step 0 (LF would save the resumed checkpoint's adapter there, which converts only the steps
after the resume).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

INIT_DIR, BACKUP_DIR, CONVERTED_DIR = "pissa_init", "pissa_backup", "pissa_converted"


def _peft_model(model):
    """The PeftModel inside `model` (a value-head wrapper's `pretrained_model`), or None."""
    from peft import PeftModel

    for candidate in (model, getattr(model, "pretrained_model", None)):
        if isinstance(candidate, PeftModel):
            return candidate
    return None


def _save_as_plain_init(model, folder: str, **kwargs) -> None:
    """`model.save_pretrained(folder)` with `init_lora_weights: true` in its config, as LF does: an adapter whose
    config says `pissa` would make peft subtract the principal components from the base again when loaded."""
    config = model.peft_config["default"]
    init = config.init_lora_weights
    config.init_lora_weights = True
    try:
        model.save_pretrained(folder, **kwargs)
    finally:
        config.init_lora_weights = init


class PissaConvertCallback(TrainerCallback):
    """LF's PissaConvertCallback (see the module docstring)."""

    def __init__(self) -> None:
        self.can_convert = True

    def on_train_begin(self, args, state, control, **kwargs):
        model = _peft_model(kwargs.get("model"))
        if not args.should_save or model is None:
            return
        init_dir = os.path.join(args.output_dir, INIT_DIR)
        if state.global_step > 0:  # resumed: the initial adapter is the one the run saved at step 0
            self.can_convert = (Path(init_dir) / "adapter_config.json").is_file()
            if not self.can_convert:
                logger.warning("pissa_convert: resumed at step %d but %s is missing (the run did not start in this "
                               "output_dir); the PiSSA adapter is not converted", state.global_step, init_dir)
            return
        logger.info("pissa_convert: initial PiSSA adapter saved in %s", init_dir)
        _save_as_plain_init(model, init_dir)

    def on_train_end(self, args, state, control, **kwargs):
        model = _peft_model(kwargs.get("model"))
        if not args.should_save or model is None or not self.can_convert:
            return
        init_dir = os.path.join(args.output_dir, INIT_DIR)
        backup_dir = os.path.join(args.output_dir, BACKUP_DIR)
        converted_dir = os.path.join(args.output_dir, CONVERTED_DIR)
        trainable = {name for name, param in model.named_parameters() if param.requires_grad}
        _save_as_plain_init(model, backup_dir)
        # peft loads pissa_init as a second adapter, subtracts it (the result has rank 2r) and deletes it again
        model.save_pretrained(converted_dir, path_initial_model_for_weight_conversion=init_dir)
        model.set_adapter("default")
        for name, param in model.named_parameters():  # loading/deleting the initial adapter must not change this
            param.requires_grad_(name in trainable)
        logger.info("pissa_convert: the trained adapter as a plain LoRA adapter of the original model: %s "
                    "(use it as adapter_name_or_path on %s)", converted_dir,
                    getattr(model.peft_config["default"], "base_model_name_or_path", None) or "the base model")
