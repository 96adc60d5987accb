"""glibc's malloc against tcmalloc for CPU training, side by side: the two runs at the same time, one core each.

This VM's speed moves by 15-40% within the hour, more than the difference measured, so the two allocators run
*concurrently*, each `tuneforge bench` pinned to its own core with one thread (`taskset`, OMP_NUM_THREADS=1),
and swap cores in the next round: both see the same machine at the same moment.

    .venv/bin/python bench/bench_allocator.py examples/memorize_facts.yaml --rounds 2 --steps 8 \\
        --out bench/results/allocator_cpu.json
    .venv/bin/python bench/bench_allocator.py examples/memorize_facts.yaml auto_bf16=true --rounds 2 --steps 8

Prints s/step, page faults and system CPU time of each run, and the ratio per round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def start(config: str, overrides: list[str], allocator: str, core: int, steps: int, warmup: int,
          out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("LD_PRELOAD", None)
    command = ["taskset", "-c", str(core), "/usr/bin/time", "-f", "%R %S %U", "-o", str(out) + ".time",
               sys.executable, "-m", "tuneforge", "bench", config, *overrides, f"cpu_allocator={allocator}",
               "--steps", str(steps), "--warmup", str(warmup), "--out", str(out)]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, out: Path) -> dict:
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"bench failed:\n{stderr[-3000:]}")
    result = json.loads(out.read_text())
    faults, system, user = Path(str(out) + ".time").read_text().split()[-3:]
    return {"seconds_per_step": result["seconds_per_step"], "allocator": result.get("allocator"),
            "minor_page_faults": int(faults), "system_cpu_s": float(system), "user_cpu_s": float(user),
            "peak_rss_gib": result["peak_rss_gib"], "losses": result["losses"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key=value settings for the config (e.g. auto_bf16=true)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs 2 cores: the two allocators run at the same time, one core each")
    rounds = []
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(args.rounds):
            cores = {"system": index % 2, "tcmalloc": 1 - index % 2}  # swap cores every round
            outs = {name: Path(scratch) / f"{name}{index}.json" for name in cores}
            processes = {name: start(args.config, args.overrides, name, cores[name], args.steps, args.warmup,
                                     outs[name]) for name in cores}
            runs = {name: {"core": cores[name], **finish(processes[name], outs[name])} for name in cores}
            ratio = runs["system"]["seconds_per_step"] / runs["tcmalloc"]["seconds_per_step"]
            same = runs["system"]["losses"] == runs["tcmalloc"]["losses"]
            rounds.append({"runs": runs, "system_over_tcmalloc": round(ratio, 3), "same_losses": same})
            for name, run in runs.items():
                print(f"round {index + 1} {name:<9} core {run['core']}: {run['seconds_per_step']:.3f} s/step, "
                      f"{run['minor_page_faults']:,} page faults, {run['system_cpu_s']:.1f} s system CPU "
                      f"({run['allocator']})")
            print(f"round {index + 1}: system malloc / tcmalloc = {ratio:.3f}x, "
                  f"{'the same' if same else 'DIFFERENT'} losses", flush=True)
    summary = {"config": args.config, "overrides": args.overrides, "steps": args.steps, "warmup": args.warmup,
               "rounds": rounds, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
        print(f"saved {args.out}")


if __name__ == "__main__":
    main()
