"""ChatSession: the Chat tab's model, loaded only when asked for (`ChatEngine` from a config dict)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.utils.vision_models import IMAGE_PLACEHOLDER_DEFAULT


class ChatSession:
    """Holds at most one `ChatEngine`; one generation at a time (the engine is not thread-safe)."""

    def __init__(self) -> None:
        self.engine = None
        self.description = ""
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.engine is not None

    def load(self, config: Mapping[str, Any]) -> str:
        """Load the model (+ adapters) a config dict describes; returns the engine's one-line description."""
        from tuneforge.infer.engine import ChatEngine
        from tuneforge.webui.args import validate

        if self.loaded:
            raise TuneforgeError(f"a model is already loaded ({self.description}); unload it first")
        cfg = validate(config, require_output_dir=False)
        with self._lock:
            self.engine = ChatEngine.from_config(cfg)
            self.description = self.engine.description
        return self.description

    def unload(self) -> None:
        with self._lock:
            self.engine = None
            self.description = ""
        gc.collect()

    @property
    def image_tag(self) -> str:
        """What marks an image's place in a message for the loaded model (`<image>`, or IMAGE_PLACEHOLDER)."""
        vision = getattr(self.engine, "vision", None)
        return vision.placeholder if vision is not None else IMAGE_PLACEHOLDER_DEFAULT

    def stream(self, messages: Sequence[Mapping[str, str]], system: str | None = None, images: Sequence[str] = (),
               **gen: Any) -> Iterator[str]:
        """Text deltas of the answer to `messages` (alternating user/assistant, ending with user); `images`: one
        file per `<image>` in them (a vision-language model)."""
        if self.engine is None:
            raise TuneforgeError("no model is loaded; press Load model first")
        with self._lock:
            yield from self.engine.stream_chat(list(messages), system=system or None, images=list(images), **gen)
