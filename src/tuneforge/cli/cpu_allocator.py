"""`cpu_allocator` for `tuneforge train` / `bench`: start the command again under tcmalloc (utils/allocator.py).

Decided from the config read as plain values (no torch, no transformers: ~0.2 s), before anything heavy, so
restarting costs only Python's start and this read once more.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from tuneforge.errors import ConfigError
from tuneforge.utils.allocator import allocator_to_preload, gpu_device_present, restart_with_preload

logger = logging.getLogger("tuneforge")


def restart_for_training_command(command: str, args: Sequence[str]) -> None:
    """`tuneforge train` / `bench` (not their -h): `run_under_cpu_allocator` with their config and overrides.
    Only for a process that is the command itself: a restart replaces the whole process."""
    if command not in ("train", "bench") or any(a in ("-h", "--help") for a in args):
        return
    if command == "bench":
        from tuneforge.bench.cli import parse_bench_args

        _, config, overrides = parse_bench_args(list(args))
    else:
        from tuneforge.config.parser import split_config_and_overrides

        config, overrides = split_config_and_overrides(list(args))
    run_under_cpu_allocator(config, overrides)


def run_under_cpu_allocator(config_path: str | None, overrides: Sequence[str]) -> None:
    """Restart this process with tcmalloc preloaded when `cpu_allocator` asks for it (does not return then);
    otherwise say which allocator runs, or how to get tcmalloc."""
    from tuneforge.config.parser import load_config

    cfg = load_config(config_path, overrides, data_only=True)
    training = cfg.training
    explicit_cpu = vars(training).get("use_cpu")  # unset: decided later by probing torch, which is not loaded yet
    on_cpu = explicit_cpu if explicit_cpu is not None else not gpu_device_present()
    try:
        library, note = allocator_to_preload(training.cpu_allocator, os.environ, on_cpu=on_cpu)
    except ValueError as err:
        raise ConfigError(f"cpu_allocator: tcmalloc: {err}; or set `cpu_allocator: auto` / `system`") from None
    if library is not None:
        restart_with_preload(library, os.environ)
    if note:
        logger.info(note)
