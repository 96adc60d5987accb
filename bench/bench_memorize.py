"""Did it learn? Train on generated school records with a config, then measure recall -- for several configs.

Each run: `data/make_school_records.py` writes N records into a fresh workspace, `tuneforge train CONFIG
dataset_dir=... dataset=records output_dir=... [overrides]` trains (timed), `tuneforge eval recall ... --json`
measures exact recall on the training questions, held-out single-field questions and (optionally) drift.

    .venv/bin/python bench/bench_memorize.py --rows 50 \\
        recipe=examples/memorize_facts.yaml \\
        lf_defaults=examples/school_records_lf_defaults.yaml \\
        seed_fix=examples/school_records_seed_fix.yaml
    # a hyper-parameter sweep (runs in parallel on a GPU machine):
    python bench/bench_memorize.py --rows 50 --parallel 4 --no-drift \\
        "r64=examples/memorize_facts.yaml lora_rank=64 lora_alpha=128" "full=examples/memorize_facts.yaml finetuning_type=full learning_rate=1e-4"

Prints one table row per run and writes all numbers to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "data"))
from make_school_records import make_school_records  # noqa: E402


def tuneforge(*args: str, log: Path) -> tuple[int, float]:
    started = time.perf_counter()
    with open(log, "a", encoding="utf-8") as out:
        code = subprocess.call([sys.executable, "-m", "tuneforge", *args], stdout=out, stderr=subprocess.STDOUT,
                               cwd=log.parent)
    return code, time.perf_counter() - started


def run_one(spec: str, rows: int, lang: str, seed: int, root: Path, drift: bool, samples: int | None) -> dict:
    name, _, rest = spec.partition("=")
    config, *overrides = rest.split()
    work = root / name
    (work / "data").mkdir(parents=True, exist_ok=True)
    records = make_school_records(rows, lang, seed)
    (work / "data" / "records.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (work / "data" / "dataset_info.json").write_text(json.dumps({"records": {"file_name": "records.json"}}))
    common = [str(REPO / config), "dataset_dir=data", "dataset=records", "output_dir=out", *overrides]
    log = work / "run.log"
    code, train_seconds = tuneforge("train", *common, log=log)
    result = {"name": name, "config": config, "overrides": overrides, "rows": rows, "lang": lang,
              "train_seconds": round(train_seconds, 1), "train_exit": code}
    if code != 0:
        return {**result, "error": f"training failed, see {log}"}
    state = json.loads((work / "out" / "trainer_state.json").read_text())
    trained = json.loads((work / "out" / "train_results.json").read_text())
    log_rows = [json.loads(line) for line in (work / "out" / "trainer_log.jsonl").read_text().splitlines()]
    result.update(steps=state["global_step"], epochs=round(state.get("epoch") or 0, 2),
                  recall_during_training=trained.get("recall"),
                  recall_curve=[(r["epoch"], r["recall"]) for r in log_rows if "recall" in r])
    recall_args = ["eval", "recall", *common, "--json", "--output", "recall.json"]
    recall_args += [] if drift else ["--no-drift"]
    recall_args += ["--samples", str(samples)] if samples else []
    code, eval_seconds = tuneforge(*recall_args, log=log)
    if code != 0:
        return {**result, "error": f"eval recall failed, see {log}"}
    scores = json.loads((work / "recall.json").read_text())
    recall, heldout, drift_scores = scores["recall"], scores.get("heldout", {}), scores.get("drift", {})
    return {**result, "eval_seconds": round(eval_seconds, 1), "exact": recall["exact_match"],
            "exact_count": f"{recall['exact']}/{recall['questions']}", "similarity": recall["char_similarity"],
            "field_accuracy": recall.get("field_accuracy"), "heldout": heldout.get("accuracy"),
            "drift_change": drift_scores.get("mean_change"), "drift_keywords": (drift_scores.get("keyword_before"),
                                                                                drift_scores.get("keyword_after"))}


def row_text(r: dict) -> str:
    if "error" in r:
        return f"{r['name']:<16} {r['rows']:>4}  {r['error']}"
    heldout = "-" if r["heldout"] is None else f"{r['heldout']:.1%}"
    drift = "-" if r["drift_change"] is None else f"{r['drift_change']:.3f}"
    return (f"{r['name']:<16} {r['rows']:>4} {r['train_seconds'] / 60:>7.1f} {r['steps']:>6} {r['epochs']:>6} "
            f"{r['exact']:>7.1%} {r['similarity']:>6.3f} {r['field_accuracy'] or 0:>7.1%} {heldout:>8} {drift:>6}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="NAME=CONFIG.yaml [key=value ...] (quote each run)")
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--lang", default="zh", choices=("zh", "en", "both"))
    parser.add_argument("--seed", type=int, default=1010, help="data seed (make_school_records)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (1 on a CPU)")
    parser.add_argument("--no-drift", action="store_true")
    parser.add_argument("--samples", type=int, default=None, help="recall on a sample of the training questions")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tuneforge-bench-memorize"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "memorize.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("TUNEFORGE_CACHE", str(Path.home() / ".cache" / "tuneforge"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{'run':<16} {'rows':>4} {'train m':>7} {'steps':>6} {'epochs':>6} {'exact':>7} {'sim':>6} "
          f"{'fields':>7} {'held-out':>8} {'drift':>6}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [pool.submit(run_one, spec, args.rows, args.lang, args.seed, args.workdir, not args.no_drift,
                               args.samples) for spec in args.runs]
        for future in as_completed(futures):  # each result is written as soon as its run ends
            results.append(future.result())
            print(row_text(results[-1]), flush=True)
            args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
