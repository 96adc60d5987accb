"""Images for the Qwen-VL family, as LLaMA-Factory 0.9.5's `Qwen2VLPlugin` treats them.

- A row's `images` column lists files, relative to `media_dir` (default: the dataset's folder). Each `<image>`
  in the messages stands for the next image; their numbers must agree (LF raises; here the row is reported as
  dropped, with the counts).
- Each image is read as RGB and resized as LF does before the model's own image processor sees it: down to at most
  `image_max_pixels` (up to `image_min_pixels`) keeping its aspect, both sides at least 28 pixels, an aspect ratio
  of at most 200. The image processor then cuts it into patches: `image_grid_thw` (t, h, w) patches, which the
  model's merger turns into t*h*w / merge_size^2 embeddings.
- `<image>` becomes `<|vision_start|>` + that many `<|image_pad|>` + `<|vision_end|>` (the tokens are read from
  the model's config: `vision_start_token_id`, `image_token_id`, `vision_end_token_id`).
- The encoded sample keeps the resolved paths (`images` column); `VisionCollator` (data/collate_vision.py) reads the
  images again for each batch and adds `pixel_values`, `image_grid_thw` and `mm_token_type_ids`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from tuneforge.data.formats import Conversation, Message, RowError
from tuneforge.errors import DataError, NotSupportedError
from tuneforge.utils.vision_models import (IMAGE_PLACEHOLDER_DEFAULT, SUPPORTED_NAMES, read_model_config,
                                          stage_problem, vision_family)

MIN_SIDE, MAX_ASPECT, ASPECT_FIX = 28, 200, 180  # LF's Qwen2VLPlugin._preprocess_image


class VisionInputs:
    """What the data pipeline and the collator need of a vision-language model: its image processor, its image
    tokens and the run's image settings."""

    def __init__(self, image_processor, tokenizer, model_config: dict[str, Any], *, max_pixels: int,
                 min_pixels: int, media_dir: Path | None = None) -> None:
        self.image_processor = image_processor
        self.max_pixels, self.min_pixels, self.media_dir = max_pixels, min_pixels, media_dir
        self.image_token_id = int(model_config["image_token_id"])
        tokens = tokenizer.convert_ids_to_tokens([self.image_token_id, int(model_config["vision_start_token_id"]),
                                                  int(model_config["vision_end_token_id"])])
        self.image_token, self.vision_start, self.vision_end = tokens
        self.merge_length = int(getattr(image_processor, "merge_size", 2)) ** 2
        self.placeholder = image_placeholder()

    @classmethod
    def for_run(cls, model_args, data_args, tokenizer, config_dir: Path | None = None) -> VisionInputs | None:
        """The run's vision inputs when its model is a supported vision-language model, else None."""
        source = getattr(tokenizer, "name_or_path", None) or model_args.model_name_or_path
        config = read_model_config(str(source))
        if config is None or vision_family(config) is None:
            return None
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(str(source))
        except (OSError, ValueError) as err:
            raise DataError(f"model_name_or_path: {source} is a vision-language model but its image processor "
                            f"(preprocessor_config.json) could not be loaded: {err}") from None
        return cls(processor, tokenizer, config, max_pixels=model_args.image_max_pixels,
                   min_pixels=model_args.image_min_pixels, media_dir=media_folder(data_args.media_dir, config_dir))

    def fingerprint(self) -> dict[str, Any]:
        """What decides the encoded samples, for the data cache key."""
        return {"max_pixels": self.max_pixels, "min_pixels": self.min_pixels, "media_dir": str(self.media_dir),
                "processor": self.image_processor.to_dict(), "tokens": [self.image_token, self.vision_start,
                                                                        self.vision_end]}

    # ------------------------------------------------------------------------------------------ one image
    def load(self, path: str):
        """The image at `path`, RGB, resized as LF does before the image processor."""
        from PIL import Image

        with Image.open(path) as opened:
            image = opened.convert("RGB") if opened.mode != "RGB" else opened.copy()
        width, height = image.width, image.height
        if width * height > self.max_pixels:
            factor = math.sqrt(self.max_pixels / (width * height))
            width, height = int(width * factor), int(height * factor)
        if width * height < self.min_pixels:
            factor = math.sqrt(self.min_pixels / (width * height))
            width, height = int(width * factor), int(height * factor)
        width, height = max(width, MIN_SIDE), max(height, MIN_SIDE)
        if width / height > MAX_ASPECT:
            width = height * ASPECT_FIX
        if height / width > MAX_ASPECT:
            height = width * ASPECT_FIX
        return image if (width, height) == image.size else image.resize((width, height))

    def pixels(self, paths: list[str]) -> dict[str, Any]:
        """The image processor's `pixel_values` (patches x features) and `image_grid_thw` for these images."""
        return dict(self.image_processor(images=[self.load(p) for p in paths], return_tensors="pt"))

    def token_count(self, grid_thw) -> int:
        return int(math.prod(int(x) for x in grid_thw)) // self.merge_length

    # ------------------------------------------------------------------------------------------ one row
    def expand(self, conv: Conversation, dataset_dir: Path | None) -> Conversation:
        """`conv` with its image paths resolved and each `<image>` replaced by the model's image tokens."""
        return self.expand_with_pixels(conv, dataset_dir)[0]

    def expand_with_pixels(self, conv: Conversation, dataset_dir: Path | None) -> tuple[Conversation, dict[str, Any]]:
        """`expand`, and the images' `pixels` it read to count their tokens ({} without images): a prompt answered
        now (chat, API) uses them as they are; encoded samples keep their paths and are read again per batch."""
        paths = row_image_paths(conv, self.media_dir or dataset_dir, self.placeholder)
        if not paths:
            return dataclasses.replace(conv, images=()), {}
        try:
            pixels = self.pixels(paths)
        except (OSError, ValueError) as err:
            raise RowError(conv.source, f"an image could not be read ({err})") from None
        spans = iter(self.vision_start + self.image_token * self.token_count(g) + self.vision_end
                     for g in pixels["image_grid_thw"])
        messages = tuple(Message(m.role, _replace_each(m.content, self.placeholder, spans)) for m in conv.messages)
        return dataclasses.replace(conv, messages=messages, images=tuple(paths)), pixels


def _replace_each(text: str, placeholder: str, replacements) -> str:
    parts = text.split(placeholder)
    return parts[0] + "".join(next(replacements) + part for part in parts[1:])


def row_image_paths(conv: Conversation, folder: Path | None, placeholder: str) -> list[str]:
    """A row's image files, resolved (`resolve_image`), one per `placeholder` in its messages; a RowError when a
    file is missing or the files and the tags do not pair up."""
    paths = [resolve_image(p, folder, conv.source) for p in conv.images or ()]
    tags = sum(m.content.count(placeholder) for m in conv.messages)
    if tags != len(paths):
        raise RowError(conv.source, f"{len(paths)} image(s) in the images column but {tags} `{placeholder}` "
                       f"tag(s) in the messages; put one `{placeholder}` where each image belongs")
    return paths


def image_placeholder() -> str:
    """What marks an image's place in dataset text: `<image>`, or LF's IMAGE_PLACEHOLDER environment variable."""
    return os.environ.get("IMAGE_PLACEHOLDER", IMAGE_PLACEHOLDER_DEFAULT)


def resolve_image(path: str, folder: Path | None, source: str) -> str:
    """LF's rule: `folder / path` (`media_dir`, else the dataset's folder) when that file exists, else the path
    as it is; a RowError naming both when neither is a file."""
    joined = Path(folder) / path if folder is not None else Path(path)
    for candidate in (joined, Path(path)):
        if candidate.is_file():
            return str(candidate.resolve())
    raise RowError(source, f"image file not found: {path} (looked for {joined}"
                   f"{'' if joined == Path(path) else f' and {path}'}; set `media_dir` to the images' folder)")


def media_folder(media_dir: str | None, config_dir: Path | None) -> Path | None:
    if not media_dir:
        return None
    for base in (Path.cwd(), config_dir):
        if base is not None and (base / media_dir).is_dir():
            return (base / media_dir).resolve()
    raise DataError(f"media_dir: {media_dir} is not a folder (looked in {Path.cwd()}"
                    f"{f' and {config_dir}' if config_dir else ''})")


def run_vision_inputs(cfg, tokenizer, stage: str, specs) -> VisionInputs | None:
    """A run's image settings when its model is a vision-language model, else None; image data for a text model,
    and what images are not supported with yet, are refused here (the data pipeline asks this first)."""
    config_dir = Path(cfg.config_path).parent if cfg.config_path else None
    vision = VisionInputs.for_run(cfg.model, cfg.data, tokenizer, config_dir)
    with_images = [spec for spec in specs if spec.columns.images]
    if vision is None:
        if with_images:
            raise DataError(f"{with_images[0].where}: has an `images` column ('{with_images[0].columns.images}') "
                            f"but the model ({cfg.model.model_name_or_path}) does not take images; image inputs "
                            f"need a vision-language model ({SUPPORTED_NAMES})")
        return None
    if stage_problem(stage):
        raise NotSupportedError(stage_problem(stage))
    return vision
