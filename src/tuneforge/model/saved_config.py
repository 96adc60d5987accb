"""What a saved model folder's config.json says, read without loading transformers or the weights."""

from __future__ import annotations

import json
import os
from pathlib import Path


def saved_dtype(folder: str | os.PathLike) -> str | None:
    """The dtype the folder's config.json says its weights were saved in (`dtype`, or transformers 4's
    `torch_dtype`), as written there; None when there is no config.json or it does not say."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    values = json.loads(config.read_text(encoding="utf-8"))
    return values.get("dtype") or values.get("torch_dtype")
