"""Checkpoints -> modules: loading (local folder, hub id, .gguf, built-in demo), dtype/attention,
fine-tuning methods (full / freeze / lora) and adapters."""

from tuneforge.model.adapters import apply_finetuning
from tuneforge.model.demo import DEMO_MODEL_NAME, ensure_demo_model
from tuneforge.model.loader import count_parameters, load_model, resolve_model_path
from tuneforge.model.tokenizer_loading import load_tokenizer

__all__ = [
    "DEMO_MODEL_NAME",
    "apply_finetuning",
    "count_parameters",
    "ensure_demo_model",
    "load_model",
    "load_tokenizer",
    "resolve_model_path",
]
