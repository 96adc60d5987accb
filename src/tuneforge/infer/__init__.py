"""Inference: a chat engine (KV-cache decode loop, streaming, stop words) and the terminal chat."""

from tuneforge.infer.engine import ChatEngine, GenerationSettings, GenerationStats

__all__ = ["ChatEngine", "GenerationSettings", "GenerationStats"]
