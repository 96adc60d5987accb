"""Facts about the vision-language models tuneforge trains: which ones, and how their modules are named.

The Qwen-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL and its MoE): a ViT ("vision tower") whose patches a merger
(the "multi-modal projector") turns into language-model embeddings, one per `<|image_pad|>` token of the text.
The module keys are LLaMA-Factory 0.9.5's (`model/model_utils/visual.py`), matched as substrings of parameter and
module names: they hold for transformers 5's layout (`model.visual.*`, `model.language_model.*`, `lm_head`).
Nothing here imports torch or transformers at import time: the data pipeline and the model loader share it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class VisionFamily:
    vision_tower: tuple[str, ...]  # frozen with freeze_vision_tower (LF's default)
    projector: tuple[str, ...]  # frozen with freeze_multi_modal_projector (LF's default)
    language_model: tuple[str, ...]  # frozen with freeze_language_model
    lora_conflicts: tuple[str, ...] = ("patch_embed",)  # never given LoRA layers (a Conv3d LF leaves alone)


_QWEN2_VL = VisionFamily(vision_tower=("visual.patch_embed", "visual.blocks"), projector=("visual.merger",),
                         language_model=("language_model", "lm_head"))
_QWEN3_VL = VisionFamily(vision_tower=("visual.patch_embed", "visual.blocks", "visual.pos_embed",
                                       "visual.deepstack_merger_list"),
                         projector=("visual.merger",), language_model=("language_model", "lm_head"))
FAMILIES: dict[str, VisionFamily] = {"qwen2_vl": _QWEN2_VL, "qwen2_5_vl": _QWEN2_VL,
                                     "qwen3_vl": _QWEN3_VL, "qwen3_vl_moe": _QWEN3_VL}
SUPPORTED_NAMES = "Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE"

# LF's placeholders in dataset text (constants.py; LF reads IMAGE_PLACEHOLDER / VIDEO_PLACEHOLDER from the
# environment too)
IMAGE_PLACEHOLDER_DEFAULT = "<image>"


def vision_family(config: dict[str, Any]) -> VisionFamily | None:
    """The family of a model whose config.json is `config`, or None (a text model, or one not supported)."""
    return FAMILIES.get(str(config.get("model_type", "")))


def read_model_config(source: str) -> dict[str, Any] | None:
    """config.json of a model folder, or of a hub id (the hub cache, else the hub), or None when there is none."""
    path = Path(source) / "config.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if Path(source).is_dir():
        return None
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(source).to_dict()
    except Exception:  # noqa: BLE001 -- no readable config: not a vision model here; loading the model says why
        return None


def forbidden_modules(family: VisionFamily, *, freeze_vision_tower: bool, freeze_multi_modal_projector: bool,
                      freeze_language_model: bool) -> tuple[str, ...]:
    """LF's `get_forbidden_modules`: the module keys that stay frozen (and get no LoRA layers)."""
    keys: list[str] = []
    if freeze_vision_tower:
        keys += family.vision_tower
    if freeze_multi_modal_projector:
        keys += family.projector
    if freeze_language_model:
        keys += family.language_model
    return tuple(keys)


def matches_any(name: str, keys: tuple[str, ...]) -> bool:
    return any(key in name for key in keys)


# what a vision-language batch carries besides the padded rows (data/collate_vision.py), for the model's forward
IMAGE_INPUTS = ("pixel_values", "image_grid_thw", "mm_token_type_ids")
TRAINING_STAGES = ("sft", "dpo", "rm", "kto")  # what a vision-language model trains with here (LF also has ppo)


def stage_problem(stage: str) -> str | None:
    """Why a vision-language model cannot train with `stage` yet, or None."""
    if stage in TRAINING_STAGES:
        return None
    return (f"stage `{stage}` with a vision-language model is not supported yet by tuneforge (stage "
            f"{', '.join(TRAINING_STAGES)} is)")
