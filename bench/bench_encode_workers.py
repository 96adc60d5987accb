"""Time the sft encoding of a large alpaca dataset with 1 and with N `preprocessing_num_workers`.

    python bench/bench_encode_workers.py                   # 50,000 rows, builtin:smollm2, cutoff_len 512, 1 vs 2
    python bench/bench_encode_workers.py --rows 5000 --workers 1 2 4

The rows: generated alpaca rows (English words, ~10% Chinese), ~180 tokens each with the demo model's
chat template. Each run is `build_datasets` from a fresh cache folder (read + convert + encode + Arrow
dataset); the report line says how many tokens the samples have. Prints wall time and rows/s per worker
count, the peak memory of each run (this process + its worker processes, sampled every 50 ms), the load
average before and after (other processes on the machine slow the runs), and checks that every run produced
the same samples.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from synthetic_text import sentence  # bench/, next to this script

def _sentence(rng: random.Random, low: int, high: int) -> str:
    return sentence(rng, low, high, chinese_share=0.1, chinese_scale=1)


def make_rows(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"instruction": _sentence(rng, 8, 40), "input": _sentence(rng, 5, 30) if rng.random() < 0.3 else "",
             "output": _sentence(rng, 40, 180)} for _ in range(count)]


class PeakMemory:
    """Peak RSS of this process plus its children while the block runs (sampled by a thread)."""

    def __enter__(self):
        import threading

        import psutil

        self.peak, self._stop = 0, threading.Event()
        me = psutil.Process()

        def sample():
            while not self._stop.wait(0.05):
                try:
                    total = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
                except psutil.Error:  # a worker that just exited
                    continue
                self.peak = max(self.peak, total)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--model", default="builtin:smollm2", help="model_name_or_path (its tokenizer is used)")
    parser.add_argument("--cutoff-len", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)

    from tuneforge.config.parser import load_config
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.train.workflow import load_tokenizer_and_template

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} cores")
    results, first = [], None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "data").mkdir()
        rows = make_rows(args.rows)
        (work / "data" / "bench.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        (work / "data" / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": "bench.json"}}))
        tokenizer = template = None
        for run, workers in enumerate(args.workers):
            config = work / "train.yaml"
            config.write_text(f"model_name_or_path: {args.model}\nstage: sft\ndataset: bench\n"
                              f"dataset_dir: {work / 'data'}\ncutoff_len: {args.cutoff_len}\n"
                              f"preprocessing_num_workers: {workers}\n", encoding="utf-8")
            cfg = load_config(str(config), require_output_dir=False)
            if tokenizer is None:  # once, from the user's cache (the demo model's folder lives there)
                tokenizer, template = load_tokenizer_and_template(cfg)
                os.environ["TUNEFORGE_CACHE"] = str(work / "cache-warm-up")
                build_datasets(load_config(str(config), ["max_samples=200", "preprocessing_num_workers=1"],
                                           require_output_dir=False), tokenizer, template)  # first-use costs
            os.environ["TUNEFORGE_CACHE"] = str(work / f"cache-{run}")  # no dataset cache hit between runs
            started = time.perf_counter()
            with PeakMemory() as memory:
                bundle = build_datasets(cfg, tokenizer, template)
            wall = time.perf_counter() - started
            stats = next(iter(bundle.report.datasets.values()))
            same = first is None or bundle.train.data.table.equals(first.train.data.table)
            first = first or bundle
            results.append((workers, wall))
            print(f"workers {workers}: {len(bundle.train)} samples, {stats.tokens / max(stats.kept, 1):.0f} tokens/sample, "
                  f"{wall:.1f} s, {args.rows / wall:,.0f} rows/s, peak RSS {memory.peak / 2**30:.2f} GiB, "
                  f"same samples as the first run: {same}", flush=True)
    base = results[0][1]
    for workers, wall in results[1:]:
        print(f"speed-up {workers} vs {results[0][0]} worker(s): {base / wall:.2f}x")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
