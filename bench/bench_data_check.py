"""Time `tuneforge data check` on a large generated dataset (target: 100,000 rows in under 30 s on 2 cores).

    python bench/bench_data_check.py                 # 100,000 rows, the built-in demo model's tokenizer
    python bench/bench_data_check.py --rows 20000 --model /path/to/model

The rows: 30% school records (data/make_school_records.py: fact answers, near-duplicate prompts, Chinese and
English) and 70% varied instructions with free-text answers, some longer than cutoff_len. Prints the wall time
(tokenizer loading included, then the check alone) and rows/s, and the findings.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from synthetic_text import sentence  # bench/, next to this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data"))

from make_school_records import make_school_records  # noqa: E402


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return sentence(rng, low, high, chinese_share=0.3, chinese_scale=2)


def make_rows(count: int, seed: int = 0) -> list[dict]:
    records = max(0, int(count * 0.3))
    zh = min(records * 2 // 3, 20000)
    rows = make_school_records(zh, "zh") + make_school_records(min(records - zh, 10000), "en", seed=7)
    rng = random.Random(seed)
    while len(rows) < count:
        long = rng.random() < 0.02
        rows.append({"instruction": _sentence(rng, 5, 25), "input": _sentence(rng, 100, 300) if long else "",
                     "output": _sentence(rng, 10, 60)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--model", default="builtin:smollm2", help="model_name_or_path (its tokenizer is used)")
    parser.add_argument("--cutoff-len", type=int, default=256)
    args = parser.parse_args(argv)

    from tuneforge.config.parser import load_config
    from tuneforge.train.check_data import check_data

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "data").mkdir()
        started = time.perf_counter()
        rows = make_rows(args.rows)
        (work / "data" / "bench.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        (work / "data" / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": "bench.json"}}))
        print(f"generated {len(rows)} rows in {time.perf_counter() - started:.1f} s")
        config = work / "check.yaml"
        config.write_text(f"model_name_or_path: {args.model}\nstage: sft\ndataset: bench\n"
                          f"dataset_dir: {work / 'data'}\ncutoff_len: {args.cutoff_len}\n", encoding="utf-8")
        cfg = load_config(str(config), require_output_dir=False)
        started = time.perf_counter()
        report = check_data(cfg)
        wall = time.perf_counter() - started
    for finding in report.findings:
        print(f"  {finding.severity:<7} {finding.kind:<16} {finding.count} row(s)")
    print(f"rows checked:        {report.rows}")
    print(f"wall time:           {wall:.1f} s (tokenizer {report.load_seconds:.1f} s, check {report.seconds:.1f} s)")
    print(f"rows/s:              {report.rows / wall:,.0f} (check alone {report.rows_per_second:,.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
