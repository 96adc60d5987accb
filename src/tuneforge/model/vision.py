"""Which vision/audio-language models load, and with which class (utils/vision_models.py has the family facts).

The Qwen-VL family loads with transformers' `AutoModelForImageTextToText` and plain SDPA attention: its batches
are padded (data/collate_vision.py) and its 3-D rotary positions jump over images, which tuneforge's packed SDPA
would read as sample boundaries. Other vision/audio-language models are refused by name.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tuneforge.utils.vision_models import SUPPORTED_NAMES, stage_problem, vision_family

_MULTIMODAL_CONFIG_KEYS = ("vision_config", "audio_config", "vision_tower", "mm_vision_tower")


def multimodal_problem(config: dict, where: str, stage: str | None = None) -> str | None:
    """Why a model whose config.json is `config` cannot be loaded (a vision/audio-language model tuneforge does
    not support) -- or trained with `stage`, when given --, or None."""
    parts = [key for key in _MULTIMODAL_CONFIG_KEYS if config.get(key)]
    if not parts:
        return None
    if vision_family(config) is not None:
        return None if stage is None else stage_problem(stage)
    arch = ", ".join(config.get("architectures") or [str(config.get("model_type", "?"))])
    return (f"model_name_or_path: {where} is a vision/audio-language model ({arch}; its config has "
            f"{' and '.join(parts)}) that tuneforge does not support yet (vision-language models supported: "
            f"{SUPPORTED_NAMES}). Its chat template renders text, but the model needs its multimodal class; use a "
            "text-only model or a supported one.")


def vision_model_class(config: dict[str, Any] | None):
    """`AutoModelForImageTextToText` for a supported vision-language model's config.json, else None."""
    if config is None or vision_family(config) is None:
        return None
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText


def is_vision_model(model) -> bool:
    config = getattr(model, "config", None)
    return vision_family({"model_type": getattr(config, "model_type", "")}) is not None


PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json")


def copy_processor_files(source, target: Path) -> None:
    """A model folder's image/video processor settings into `target` (an exported model), when it has them."""
    for name in PROCESSOR_FILES:
        if (Path(str(source)) / name).is_file():
            shutil.copy2(Path(str(source)) / name, target / name)
