"""LLaMA-Factory 0.9.5's ProfilerArguments: torch.profiler traces of a few training steps (train/profiler.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ProfilerArguments:
    enable_torch_profiler: bool = _f(False, "Collect torch profiler traces during training.")
    profiler_output_dir: str | None = _f(None, "Trace folder (default <output_dir>/profiler; one rank_<N> folder "
                                               "per process).")
    profiler_wait_steps: int = _f(1, "Profiler schedule: steps skipped at the start of each cycle.")
    profiler_warmup_steps: int = _f(1, "Profiler schedule: warm-up steps per cycle.")
    profiler_active_steps: int = _f(1, "Profiler schedule: recorded steps per cycle.")
    profiler_repeat: int = _f(1, "Profiler schedule: cycles (0 = for the whole run).")
    profiler_record_shapes: bool = _f(True, "Profiler: record tensor shapes.")
    profiler_profile_memory: bool = _f(True, "Profiler: record memory.")
    profiler_with_stack: bool = _f(True, "Profiler: record Python stacks.")
