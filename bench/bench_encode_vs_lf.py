"""SFT data preparation side by side: tuneforge vs. LLaMA-Factory 0.9.5 on the same rows, tokenizer and template.

    .venv/bin/python bench/bench_encode_vs_lf.py                          # 20,000 and 200,000 rows, 1 and 2 workers
    .venv/bin/python bench/bench_encode_vs_lf.py --rows 20000 --workers 1 --skip-commands
    .venv/bin/python bench/bench_encode_vs_lf.py --rows 20000 --workers 1 --repeat 3     # medians of 3, sides alternating

The rows: `bench_encode_workers.make_rows` (generated alpaca rows, ~180 tokens each, ~10% Chinese), the demo
model's tokenizer, `template: smollm2` on both sides (LF needs a name; tuneforge's built-in renders as LF's),
cutoff_len 512. LLaMA-Factory runs in its own venv (`bench/.venv-lf`, installed by compare_llamafactory.py).

1. **Encoding** (one fresh process per run, the data cache empty): LF's `get_dataset` (json -> Arrow, align, the
   tokenizer `map`) and tuneforge's `build_datasets` (read, convert, encode, Arrow, cache). Timed inside the
   process from after the tokenizer is loaded until the dataset is ready; peak RSS of the process and its workers.
   tuneforge also with `template: auto` (the model's own chat template, tuneforge's default).
   Each side runs under the malloc its commands use: LF under glibc's, tuneforge under the one its `cpu_allocator`
   (default auto) picks for a data command -- tcmalloc where it is installed (`--tuneforge-allocators auto system`
   measures both, `--lf-tcmalloc` adds LF under tcmalloc).
2. **The whole command** until the data is ready, as a user types it: `llamafactory-cli train x.yaml`, stopped when
   it prints its first training example (the model would be loaded next), and `tuneforge data preview x.yaml`
   (which exits after printing the samples); wall time from start, data cache empty, one worker.
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

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LF_PYTHON = BENCH / ".venv-lf" / "bin" / "python"


# ----------------------------------------------------------------------------- inside one measured process
def drive_tuneforge(config: str) -> dict:
    from tuneforge.config.parser import load_config
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.train.workflow import load_tokenizer_and_template

    import datasets  # noqa: F401 - imported before the clock, as `import llamafactory` imports it on LF's side

    cfg = load_config(config, require_output_dir=False)
    tokenizer, template = load_tokenizer_and_template(cfg)
    started = time.perf_counter()
    bundle = build_datasets(cfg, tokenizer, template)
    return {"encode_s": time.perf_counter() - started, "samples": len(bundle.train), "tokens": token_count(bundle.train)}


def drive_llamafactory(config: str) -> dict:
    import yaml
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args(yaml.safe_load(Path(config).read_text()))
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    started = time.perf_counter()
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    train = module["train_dataset"]
    return {"encode_s": time.perf_counter() - started, "samples": len(train), "tokens": token_count(train)}


def token_count(dataset) -> int:
    """Tokens of a dataset's `input_ids`, from the Arrow list lengths (the token pages are not read, so a
    memory-mapped dataset's peak RSS is not inflated by counting)."""
    import pyarrow.compute as pc

    column = dataset.data.table.column("input_ids")
    return sum(pc.sum(pc.list_value_length(chunk)).as_py() or 0 for chunk in column.chunks)


# ----------------------------------------------------------------------------- the parent
def peak_rss_while(process: subprocess.Popen) -> int:
    """Peak RSS (bytes) of `process` and its children, sampled every 50 ms until it exits."""
    import psutil

    peak, me = 0, psutil.Process(process.pid)
    while process.poll() is None:
        try:
            total = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
        except psutil.Error:
            total = 0
        peak = max(peak, total)
        time.sleep(0.05)
    return peak


def write_config(work: Path, side: str, workers: int, template: str, allocator: str = "auto") -> Path:
    from tuneforge.model.loader import resolve_model_path

    config = {"model_name_or_path": resolve_model_path("builtin:smollm2"), "stage": "sft", "do_train": True,
              "finetuning_type": "lora", "dataset": "bench", "dataset_dir": str(work / "data"), "template": template,
              "cutoff_len": 512, "output_dir": str(work / f"out-{side}"), "overwrite_cache": True,
              "report_to": "none", "max_steps": 1}
    if workers > 1:
        config["preprocessing_num_workers"] = workers
    if side == "tuneforge" and allocator != "auto":
        config["cpu_allocator"] = allocator  # the whole-command runs (`tuneforge data preview` restarts itself)
    path = work / f"{side}-{template}-{workers}-{allocator}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def fresh_env(work: Path, run: str, preload: str | None = None) -> dict:
    """Empty data caches for this run (tuneforge's and the `datasets` one LF uses), one thread pool as usual;
    `preload`: a malloc library for LD_PRELOAD (else none)."""
    env = {**os.environ, "TUNEFORGE_CACHE": str(work / f"cache-{run}"), "HF_DATASETS_CACHE": str(work / f"hf-{run}"),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("LD_PRELOAD", None)
    return {**env, "LD_PRELOAD": preload} if preload else env


def allocator_library(choice: str) -> str | None:
    """The malloc a tuneforge data command runs under for `cpu_allocator: choice` on this machine (the CLI's
    own decision, cli/cpu_allocator.py): tcmalloc's path, or None for the C library's."""
    from tuneforge.utils.allocator import allocator_to_preload

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return allocator_to_preload(choice, env, on_cpu=True)[0]


def measure_encoding(side: str, config: Path, work: Path, run: str, preload: str | None = None) -> dict:
    python = str(LF_PYTHON) if side == "llamafactory" else sys.executable
    out = work / f"{run}.json"
    code = (f"import json, sys; sys.path.insert(0, {str(BENCH)!r}); import bench_encode_vs_lf as b; "
            f"json.dump(b.drive_{side}({str(config)!r}), open({str(out)!r}, 'w'))")
    started = time.perf_counter()
    process = subprocess.Popen([python, "-c", code], env=fresh_env(work, run, preload), stdout=subprocess.DEVNULL,
                               stderr=open(work / f"{run}.log", "w"))
    peak = peak_rss_while(process)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{side} failed; see {work / f'{run}.log'}:\n" + (work / f"{run}.log").read_text()[-3000:])
    return {**json.loads(out.read_text()), "process_s": wall, "peak_rss_gib": peak / 2**30}


def median_run(attempts: list[dict]) -> dict:
    """The attempt with the median encoding time (the upper one of two), with every attempt's seconds."""
    ordered = sorted(attempts, key=lambda r: r["encode_s"])
    return {**ordered[len(ordered) // 2], "encode_s_all": [r["encode_s"] for r in attempts]}


def measure_command(argv: list[str], ready_marker: str | None, work: Path, run: str) -> float:
    """Seconds from start until the command exits (or prints `ready_marker`, then it is stopped)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=fresh_env(work, run), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output = []
    for line in process.stdout:
        output.append(line)
        if ready_marker and ready_marker in line:
            wall = time.perf_counter() - started
            process.kill()
            process.wait()
            return wall
    process.wait()
    if process.returncode != 0 or ready_marker:
        raise SystemExit(f"{argv[0]} did not finish as expected:\n{''.join(output[-30:])}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1, help="runs per encoding case, sides alternating; the median")
    parser.add_argument("--skip-commands", action="store_true", help="only the encoding measurements")
    parser.add_argument("--tuneforge-only", action="store_true", help="no LLaMA-Factory runs (e.g. for 1M rows)")
    parser.add_argument("--tuneforge-allocators", nargs="+", choices=("auto", "system"), default=["auto"],
                        help="cpu_allocator values for tuneforge's runs (auto: tcmalloc where installed, as its data "
                             "commands run; system: glibc's malloc)")
    parser.add_argument("--lf-tcmalloc", action="store_true", help="also LLaMA-Factory with tcmalloc in LD_PRELOAD")
    parser.add_argument("--out", default=str(BENCH / "results" / "encode_vs_lf.json"))
    args = parser.parse_args(argv)
    if not LF_PYTHON.exists():
        raise SystemExit("LLaMA-Factory's venv is missing: run `.venv/bin/python bench/compare_llamafactory.py` once "
                         "(it installs LLaMA-Factory 0.9.5 into bench/.venv-lf)")
    from bench_encode_workers import make_rows

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} cores", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="encode-vs-lf-") as tmp:
        work = Path(tmp)
        (work / "data").mkdir()
        (work / "data" / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": "bench.json"}}))
        for count in args.rows:
            rows = make_rows(count)
            (work / "data" / "bench.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
            for workers in args.workers:
                # (side, template, cpu_allocator): LF as it runs (glibc's malloc), tuneforge as its commands run
                cases = ([] if args.tuneforge_only else [("llamafactory", "smollm2", "system")]) + \
                        ([("llamafactory", "smollm2", "tcmalloc")] if args.lf_tcmalloc else []) + \
                        [("tuneforge", "smollm2", choice) for choice in args.tuneforge_allocators] + \
                        ([("tuneforge", "auto", args.tuneforge_allocators[0])] if workers == 1 else [])
                runs: dict[tuple, list[dict]] = {case: [] for case in cases}
                for attempt in range(args.repeat):  # the sides alternate, so a slow minute hits both
                    for side, template, choice in cases:
                        run = f"{side}-{template}-{choice}-{count}-{workers}-{attempt}"
                        preload = allocator_library(choice) if side == "tuneforge" or choice == "tcmalloc" else None
                        runs[(side, template, choice)].append(measure_encoding(
                            side, write_config(work, side, workers, template, choice), work, run, preload))
                        runs[(side, template, choice)][-1]["malloc"] = Path(preload).name if preload else "glibc"
                for (side, template, choice), attempts in runs.items():
                    result = median_run(attempts)
                    result.update(side=side, template=template, rows=count, workers=workers,
                                  rows_per_s=count / result["encode_s"])
                    results.append(result)
                    spread = (f" (median of {len(attempts)}: {min(r['encode_s'] for r in attempts):.1f}-"
                              f"{max(r['encode_s'] for r in attempts):.1f} s)" if len(attempts) > 1 else "")
                    print(f"{side:<13} {template:<8} {result['malloc']:<24} {count:>7,} rows  {workers} worker(s): "
                          f"encode {result['encode_s']:6.1f} s{spread} = {result['rows_per_s']:6,.0f} rows/s, process "
                          f"{result['process_s']:6.1f} s, peak RSS {result['peak_rss_gib']:.2f} GiB, "
                          f"{result['samples']:,} samples, {result['tokens']:,} tokens", flush=True)
            for workers in [] if args.tuneforge_only else args.workers:
                lf = next(r for r in results if r["side"] == "llamafactory" and r["rows"] == count and
                          r["workers"] == workers and r["malloc"] == "glibc")
                for ours in (r for r in results if r["side"] == "tuneforge" and r["rows"] == count and r["workers"] == workers):
                    print(f"  {count:,} rows, {workers} worker(s), tuneforge {ours['template']} ({ours['malloc']}): "
                          f"{ours['rows_per_s'] / lf['rows_per_s']:.2f}x LLaMA-Factory's rows/s", flush=True)
        commands, walls = {}, {}
        if not args.skip_commands and not args.tuneforge_only:
            count = args.rows[0]
            (work / "data" / "bench.json").write_text(json.dumps(make_rows(count), ensure_ascii=False), encoding="utf-8")
            lf_cli, tuneforge_cli = str(LF_PYTHON.parent / "llamafactory-cli"), str(Path(sys.executable).parent / "tuneforge")
            for attempt in range(args.repeat):  # alternating, each run with empty caches of its own
                walls.setdefault("llamafactory-cli train", []).append(measure_command(
                    [lf_cli, "train", str(write_config(work, "llamafactory", 1, "smollm2"))], "training example:", work,
                    f"cmd-lf-{attempt}"))
                for template in ("smollm2", "auto"):
                    for choice in args.tuneforge_allocators:
                        name = f"tuneforge data preview ({template}, cpu_allocator {choice})"
                        config = write_config(work, "tuneforge", 1, template, choice)
                        walls.setdefault(name, []).append(measure_command(
                            [tuneforge_cli, "data", "preview", str(config)], None, work,
                            f"cmd-tf-{template}-{choice}-{attempt}"))
            commands = {name: sorted(times)[len(times) // 2] for name, times in walls.items()}
            lf_wall = commands["llamafactory-cli train"]
            for name, wall in commands.items():
                spread = f"  (runs: {', '.join(f'{t:.1f}' for t in walls[name])} s)" if args.repeat > 1 else ""
                print(f"whole command, {count:,} rows: {name:<50} {wall:6.1f} s  "
                      f"({lf_wall / wall:.2f}x faster than LF){spread}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"encoding": results, "commands": commands,
                                          "command_runs": walls if commands else {}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    raise SystemExit(main())
