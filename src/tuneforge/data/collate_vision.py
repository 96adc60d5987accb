"""Batches for a vision-language model (the Qwen-VL family): padded rows plus the images' pixels.

Each sample carries its images' paths (data/media.py); a batch reads them again, as LLaMA-Factory's collator does,
and adds what the model's forward takes: `pixel_values` (every image's patches, concatenated), `image_grid_thw`
(one (t, h, w) row per image) and `mm_token_type_ids` (1 at image tokens: transformers computes the model's 3-D
rotary positions from them). Rows are padded; the model derives the positions of a row's images from the row. A
`packing: true` row (data/packing.py: its samples' images in row order) is one sequence, as LF's non-neat packed
rows are: positions run on across its samples and its `position_ids` column is not used (`neat_packing`:
NeatVisionCollator below). A batch without images is a text batch for the same model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tuneforge.data.collate import IGNORE_INDEX as IGNORE, PaddedCollator
from tuneforge.errors import DataError

IMAGE_TOKEN_TYPE = 1  # transformers' mm_token_type_ids: 0 text, 1 image, 2 video


class VisionCollator:
    def __init__(self, pad_token_id: int, vision) -> None:
        self.padded = PaddedCollator(pad_token_id=pad_token_id)
        self.vision = vision  # data/media.py VisionInputs

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.padded(features)
        image_tokens = batch["input_ids"] == self.vision.image_token_id
        batch["mm_token_type_ids"] = image_tokens.long() * IMAGE_TOKEN_TYPE
        paths = [path for feature in features for path in (feature.get("images") or ())]
        if not paths:
            return batch
        try:
            pixels = self.vision.pixels(paths)
        except (OSError, ValueError) as err:
            raise DataError(f"an image of this batch could not be read again ({err}); its files: {paths}") from None
        expected = sum(self.vision.token_count(grid) for grid in pixels["image_grid_thw"])
        if expected != int(image_tokens.sum()):
            raise DataError(f"this batch's images need {expected} image tokens but its text has "
                            f"{int(image_tokens.sum())}; were the images changed since the data was encoded? "
                            "Set `overwrite_cache: true` to encode it again")
        batch["pixel_values"] = pixels["pixel_values"]
        batch["image_grid_thw"] = pixels["image_grid_thw"]
        return batch


class VisionPairwiseCollator:
    """Pairwise samples (stages dpo, rm) of a vision-language model: padded rows `[chosen_0 .. chosen_{B-1}, rejected_0
    .. rejected_{B-1}]`, each with its sample's images (both answers see them, as in LF), and the pixels."""

    def __init__(self, pad_token_id: int, vision) -> None:
        self.rows = VisionCollator(pad_token_id, vision)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        chosen = [{"input_ids": f["input_ids"], "labels": f["labels"], "images": f.get("images")} for f in features]
        rejected = [{"input_ids": f["rejected_input_ids"], "labels": f["rejected_labels"], "images": f.get("images")}
                    for f in features]
        return self.rows(chosen + rejected)


class VisionFeedbackCollator:
    """kto samples of a vision-language model: the rated answers as padded rows with their images and pixels, the
    mismatched (KL) answers as `kl_` rows over the same prompts and images (as in LF), and `kto_tags` [B]."""

    def __init__(self, pad_token_id: int, vision) -> None:
        self.rows = VisionCollator(pad_token_id, vision)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        target = self.rows([{"input_ids": f["input_ids"], "labels": f["labels"], "images": f.get("images")}
                            for f in features])
        kl = self.rows([{"input_ids": f["kl_input_ids"], "labels": f["kl_labels"]} for f in features])
        if not torch.equal(kl["mm_token_type_ids"].sum(1), target["mm_token_type_ids"].sum(1)):
            raise DataError("a kto sample's KL sequence has other image tokens than its rated one; set "
                            "`overwrite_cache: true` to encode the data again")
        kl.update({key: target[key] for key in ("pixel_values", "image_grid_thw") if key in target})  # read once
        return {**target, **{f"kl_{key}": value for key, value in kl.items()},
                "kto_tags": torch.tensor([bool(f["kto_tag"]) for f in features], dtype=torch.bool)}


class NeatVisionCollator:
    """`neat_packing` rows of a vision-language model (LF's packed rows with per-sample positions): a batch's rows
    become one padding-free row whose samples do not see each other. Each sample gets the 3-D rotary positions it
    gets alone (the model's `get_rope_index` on the sample with its images); transformers' 4-row position format
    puts the per-sample text positions first, from which the model builds the block-diagonal causal mask."""

    def __init__(self, pad_token_id: int, vision, rope_index) -> None:
        self.rows = VisionCollator(pad_token_id, vision)
        self.rope_index = rope_index  # the model's get_rope_index

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [t for f in features for t in f["input_ids"]]
        text_positions = [p for f in features for p in f["position_ids"]]
        labels = [IGNORE if p == 0 else t for f in features for t, p in zip(f["labels"], f["position_ids"])]
        batch = self.rows([{"input_ids": ids, "labels": labels, "images": [i for f in features
                                                                             for i in (f.get("images") or ())]}])
        grids = batch.get("image_grid_thw", torch.zeros((0, 3), dtype=torch.long))
        starts = [i for i, p in enumerate(text_positions) if p == 0] + [len(ids)]
        rows, used = [], 0
        for start, end in zip(starts, starts[1:]):  # each sample with its own images, positions from 0
            marks = batch["mm_token_type_ids"][:, start:end]
            count = self._image_count(marks, grids[used:])
            positions, _ = self.rope_index(input_ids=batch["input_ids"][:, start:end], mm_token_type_ids=marks,
                                           image_grid_thw=grids[used:used + count] if count else None)
            rows.append(positions)
            used += count
        text = torch.tensor([text_positions], dtype=positions.dtype)
        batch["position_ids"] = torch.cat([text[None], torch.cat(rows, dim=-1)], dim=0)  # (4, 1, L)
        del batch["attention_mask"]  # none: the masks come from the restarting text positions
        return batch

    def _image_count(self, marks: torch.Tensor, grids: torch.Tensor) -> int:
        """How many of the next images the sample's image tokens cover."""
        tokens, count = int((marks == IMAGE_TOKEN_TYPE).sum()), 0
        while tokens > 0:
            tokens -= self.rows.vision.token_count(grids[count])
            count += 1
        return count
