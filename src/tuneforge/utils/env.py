"""LLaMA-Factory's on/off environment switches (FORCE_TORCHRUN, USE_RAY, USE_MODELSCOPE_HUB, ...): one rule."""

from __future__ import annotations

import os
from collections.abc import Mapping


def env_enabled(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """`name` is set to 1 / true / y / yes (any case), as LF's `is_env_enabled` reads its switches."""
    value = (os.environ if environ is None else environ).get(name, "")
    return value.strip().lower() in ("1", "true", "y", "yes")
