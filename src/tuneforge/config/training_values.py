"""The training keys as plain values, for the commands that only read data (`tuneforge data preview / check`).

Building transformers' `TrainingArguments` imports peft and accelerate (~2 s on this CPU, a quarter of a
`data preview`); those commands read a few of its values (`seed`, `output_dir`) and ask whether this process is
the one that encodes and writes, which a single process always is. The keys are typed and checked as for a run
(config/parser.py); transformers' own argument checks run when a run builds the real class.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import MISSING
from typing import Any

from .training_fields import training_fields


class TrainingValues:
    """Every training key's value (the config's, else its default), as attributes; one process."""

    should_save = True
    process_index = local_process_index = 0
    world_size = 1

    def __init__(self, values: dict[str, Any]) -> None:
        defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                    for f in training_fields()}
        if "use_cpu" not in values:
            del defaults["use_cpu"]  # decided when read (__getattr__): probing for CUDA imports torch
        self.__dict__.update({**defaults, **values})

    def __getattr__(self, name: str) -> Any:  # only for what __init__ did not set
        if name == "use_cpu":
            from .validate import runs_on_cpu

            self.use_cpu = runs_on_cpu()  # as `training_kwargs` decides it for a run
            return self.use_cpu
        raise AttributeError(name)

    @contextmanager
    def main_process_first(self, local: bool = True, desc: str = "work"):
        yield  # one process: it is the first
