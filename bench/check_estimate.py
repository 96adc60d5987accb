"""Check `tuneforge estimate` against the measured peak RSS of real training runs on CPU.

    .venv/bin/python bench/check_estimate.py [--cases demo-lora,demo-full,qwen2-0.5b-lora] [--json out.json]

Every case trains for 3 optimizer steps with `tuneforge bench` in a fresh process (so its peak RSS is
its own) on a generated data set whose samples are all longer than `cutoff_len`: every batch then
holds exactly batch x cutoff tokens, the estimator's worst case. Prints estimate vs. measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

# name -> (model, method, batch, cutoff, extra overrides)
CASES = {
    "demo-lora": ("builtin:smollm2", "lora", 2, 512, []),
    "demo-full": ("builtin:smollm2", "full", 2, 512, []),
    "demo-freeze": ("builtin:smollm2", "freeze", 4, 512, ["freeze_trainable_layers=4"]),
    "qwen2-0.5b-lora": ("qwen2-0.5b", "lora", 1, 512, []),
}


def write_long_dataset(folder: Path, rows: int = 24) -> None:
    """Alpaca rows whose answers are ~1,500 tokens of the demo data's own text."""
    texts = [r["output"] for r in json.loads((REPO / "data" / "demo_bilingual_alpaca.json").read_text())]
    long_answer = " ".join(texts)
    data = [{"instruction": f"Write note {i}.", "input": "", "output": long_answer[i * 37:] + long_answer[: i * 37]}
            for i in range(rows)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "long.json").write_text(json.dumps(data, ensure_ascii=False))
    (folder / "dataset_info.json").write_text(json.dumps({"long": {"file_name": "long.json"}}))


def run_case(name: str, data_dir: Path, work: Path) -> dict:
    from make_qwen2_model import build_random_qwen2

    from tuneforge.estimate import EstimateSpec, estimate_memory, load_shape

    model, method, batch, cutoff, extra = CASES[name]
    if model == "qwen2-0.5b":
        model = str(build_random_qwen2())
    out = work / f"{name}.json"
    cmd = [
        sys.executable, "-m", "tuneforge", "bench", f"model_name_or_path={model}", "stage=sft",
        f"finetuning_type={method}", "lora_target=all", "lora_rank=8", "dataset=long", f"dataset_dir={data_dir}",
        f"cutoff_len={cutoff}", f"per_device_train_batch_size={batch}", "learning_rate=1e-5",
        f"output_dir={work / name}", "disable_gradient_checkpointing=true", *extra, "--steps", "2", "--warmup", "1", "--out", str(out),
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    measured = json.loads(out.read_text())
    freeze = int(next((e.split("=")[1] for e in extra if e.startswith("freeze_trainable_layers=")), 2))
    spec = EstimateSpec(load_shape(model), method, "fp32", batch, cutoff, freeze_trainable_layers=freeze)
    estimate = estimate_memory(spec)
    predicted = estimate.total / 2**30
    return {
        "case": name, "model": model, "method": method, "batch": batch, "cutoff": cutoff,
        "tokens_per_step": measured["real_tokens_per_step"], "estimated_gib": round(predicted, 3),
        "measured_peak_rss_gib": measured["peak_rss_gib"],
        "error_pct": round(100 * (predicted - measured["peak_rss_gib"]) / measured["peak_rss_gib"], 1),
        "parts_gib": {k: round(v / 2**30, 3) for k, v in estimate.parts.items()},
        "command": " ".join(cmd[1:]).replace(str(work), "$WORK"),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="demo-lora,demo-full,qwen2-0.5b-lora")
    parser.add_argument("--json")
    options = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    results = []
    with tempfile.TemporaryDirectory(prefix="tuneforge-estimate-check-") as tmp:
        write_long_dataset(Path(tmp) / "data")
        for name in options.cases.split(","):
            result = run_case(name, Path(tmp) / "data", Path(tmp))
            results.append(result)
            print(f"{name:<18} tokens/step {result['tokens_per_step']:>6.0f}  estimated {result['estimated_gib']:.2f} GiB"
                  f"  measured peak RSS {result['measured_peak_rss_gib']:.2f} GiB  ({result['error_pct']:+.1f}%)", flush=True)
    if options.json:
        Path(options.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(abs(r["error_pct"]) <= 20 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
