"""Argument handling of `tuneforge bench` (the command itself lives in runner.py)."""

from __future__ import annotations

import argparse
import json
import sys

from tuneforge.errors import ConfigError

BENCH_USAGE = """\
usage: tuneforge bench [config.yaml] [key=value ...] [--steps N] [--warmup W] [--out result.json] [--json]
                       [--remeasure-peak]

Runs the config's training for W warm-up + N measured optimizer steps (nothing is saved) and prints
real (non-pad) tokens/s, label tokens/s, s/step, peak RSS (and CUDA memory), and the estimated MFU
against this machine's measured matmul peak (cached in $TUNEFORGE_CACHE/gemm_peak.json; a peak
first measured on a busy machine is too low: --remeasure-peak measures again and keeps the higher).
"""


def parse_bench_args(args: list[str]) -> tuple[argparse.Namespace, str | None, list[str]]:
    parser = argparse.ArgumentParser(prog="tuneforge bench", add_help=False)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--remeasure-peak", action="store_true")
    options, rest = parser.parse_known_args(args)
    from tuneforge.config.parser import split_config_and_overrides

    config, overrides = split_config_and_overrides(rest)
    if config is None and not overrides:
        raise ConfigError("tuneforge bench needs a config file (x.yaml) or key=value settings; see `tuneforge bench -h`")
    return options, config, overrides


def main_bench(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(BENCH_USAGE)
        return 0
    from tuneforge.bench.runner import format_result, run_bench

    options, config, overrides = parse_bench_args(args)
    result = run_bench(config, overrides, steps=options.steps, warmup=options.warmup, out=options.out,
                       remeasure_peak=options.remeasure_peak)
    print(json.dumps(result, indent=2) if options.json else format_result(result), flush=True)
    if options.out:
        print(f"saved {options.out}", file=sys.stderr)
    return 0
