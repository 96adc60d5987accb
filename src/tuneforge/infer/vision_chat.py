"""Chatting about images with a vision-language model (the Qwen-VL family).

As LLaMA-Factory's chat engines: a user message may hold `<image>` tags, one per image given; when none of the
messages has one, they are put at the start of the first user message. Each tag becomes the model's image tokens
(data/media.py, the training's expansion) and the prompt's forward gets the pixels. The model keeps the rotary
offset its images caused for the decoding steps (transformers' `rope_deltas`); it is cleared before every new
prompt, so a text prompt after an image prompt starts from plain positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tuneforge.data.formats import Conversation, Message
from tuneforge.errors import ConfigError


def vision_inputs_for(cfg, model, tokenizer):
    """The image settings of a vision-language model's chat (data/media.py), else None."""
    from tuneforge.data.media import VisionInputs
    from tuneforge.model.vision import is_vision_model

    if not is_vision_model(model):
        return None
    return VisionInputs.for_run(cfg.model, cfg.data, tokenizer, cfg.config_dir)


def image_chat(engine, messages: Sequence[Any], images: Sequence[str]) -> tuple[list[dict], dict[str, Any]]:
    """A vision-language model's prompt: the messages with every `<image>` expanded, and the pixels its forward
    needs ({} for a text prompt)."""
    if engine.vision is None:
        raise ConfigError(f"images were given but the model ({engine.description}) does not take images")
    clear_rope_offset(engine.model)  # the last prompt's image offset must not move this one's positions
    return expand_images(engine.vision, messages, images)


def expand_images(vision, messages: Sequence[Any], images: Sequence[str]) -> tuple[list[dict], dict[str, Any]]:
    """`image_chat` without touching the model (the API's request threads; the decode thread clears the offset)."""
    turns = [dict(m) if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in messages]
    tags = sum(turn["content"].count(vision.placeholder) for turn in turns)
    if tags == 0 and images:
        first = next((turn for turn in turns if turn["role"] == "user"), None)
        if first is None:
            raise ConfigError("an image needs a user message to go with")
        first["content"] = vision.placeholder * len(images) + first["content"]
    conv = Conversation(messages=tuple(Message(t["role"], t["content"]) for t in turns), images=tuple(images),
                        source="the chat")
    expanded, pixels = vision.expand_with_pixels(conv, None)  # RowError (a DataError): a missing file, a count
    turns = [{**turn, "content": message.content} for turn, message in zip(turns, expanded.messages)]
    return turns, pixels


def image_pixels(engine, images: Sequence[str]) -> dict[str, Any]:
    """The pixels of a prompt whose image tokens are already in its ids (a prediction's encoded rows)."""
    if engine.vision is None:
        raise ConfigError(f"images were given but the model ({engine.description}) does not take images")
    clear_rope_offset(engine.model)
    return engine.vision.pixels(list(images))


def prefill_inputs(vision, input_ids: torch.Tensor, pixels: dict[str, Any]) -> dict[str, Any]:
    """What the prompt's forward takes besides its ids: the pixels and the image-token marks."""
    if not pixels:
        return {}
    marks = (input_ids == vision.image_token_id).long()
    return {"pixel_values": pixels["pixel_values"].to(input_ids.device),
            "image_grid_thw": pixels["image_grid_thw"].to(input_ids.device), "mm_token_type_ids": marks}


def clear_rope_offset(model) -> None:
    for module in model.modules():
        if hasattr(module, "rope_deltas"):
            module.rope_deltas = None
