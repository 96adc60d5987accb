"""`cpu_allocator` for `tuneforge train` / `bench` / `data preview|check`: start the command again under tcmalloc
(utils/allocator.py).

Decided from the config read as plain values (no torch, no transformers: ~0.2 s), before anything heavy, so
restarting costs only Python's start and this read once more. The data commands never use a GPU and spend their
time in the tokenizer and in Python objects, both faster under tcmalloc (bench/RESULTS.md section 20: the
tokenizer's batch calls ~25%), so for them `auto` means tcmalloc wherever it is installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from tuneforge.cli.options import DATA_SUBCOMMANDS, split_data_options
from tuneforge.errors import ConfigError
from tuneforge.utils.allocator import (allocator_to_preload, gpu_device_present, preloaded_allocator,
                                      restart_with_preload)

logger = logging.getLogger("tuneforge")


def restart_for_command(command: str, args: Sequence[str]) -> None:
    """`tuneforge train` / `bench` / `data preview|check` (not their -h): `run_under_cpu_allocator` with their
    config and overrides. Only for a process that is the command itself: a restart replaces the whole process."""
    if any(a in ("-h", "--help") for a in args):
        return
    from tuneforge.config.parser import split_config_and_overrides

    data_only = command == "data"
    if command == "bench":
        from tuneforge.bench.cli import parse_bench_args

        _, config, overrides = parse_bench_args(list(args))
    elif command == "train":
        config, overrides = split_config_and_overrides(list(args))
    elif data_only and args and args[0] in DATA_SUBCOMMANDS:
        config, overrides = split_config_and_overrides(split_data_options(args[0], args[1:])[0])
    else:
        return
    run_under_cpu_allocator(config, overrides, data_only=data_only)


def run_under_cpu_allocator(config_path: str | None, overrides: Sequence[str], data_only: bool = False) -> None:
    """Restart this process with tcmalloc preloaded when `cpu_allocator` asks for it (does not return then);
    otherwise say which allocator runs, or how to get tcmalloc. `data_only`: a command that only reads and
    encodes data (on the CPU whatever the run's device)."""
    from tuneforge.config.parser import load_config

    cfg = load_config(config_path, overrides, data_only=True)
    training = cfg.training
    explicit_cpu = vars(training).get("use_cpu")  # unset: decided later by probing torch, which is not loaded yet
    on_cpu = data_only or (explicit_cpu if explicit_cpu is not None else not gpu_device_present())
    try:
        library, note = allocator_to_preload(training.cpu_allocator, os.environ, on_cpu=on_cpu)
    except ValueError as err:
        raise ConfigError(f"cpu_allocator: tcmalloc: {err}; or set `cpu_allocator: auto` / `system`") from None
    if library is not None:
        restart_with_preload(library, os.environ)
    if data_only and not preloaded_allocator(os.environ):
        note = None  # the hint about a missing tcmalloc speaks of training steps
    if note:
        logger.info(note)
