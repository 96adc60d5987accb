"""Side by side: tuneforge vs. LLaMA-Factory on the same YAML, data, model and step count.

    .venv/bin/python bench/compare_llamafactory.py [config.yaml] [key=value ...] [--steps 10 --warmup 2]
    (default config: bench/configs/demo_lora_bilingual.yaml)

1. Installs LLaMA-Factory 0.9.5 into its own virtual environment `bench/.venv-lf` (once): torch 2.13.0
   (CPU wheel) first, then llamafactory without its torchvision / torchaudio requirements (LF's SFT
   path does not import them) and with torch pinned, so pip cannot swap in a CUDA build. The set
   that works: torch 2.13.0, transformers 5.6.0, peft 0.18.1, trl 0.24.0, accelerate 1.11.0,
   datasets 4.0.0, torchdata 0.11.0 (LF's own upper bounds), plus an import-only `torchaudio` placeholder (see below).
2. Runs `llamafactory-cli train` on the config (LF's defaults: padded batches, gradient
   checkpointing, full-vocabulary logits) for warm-up + N steps and reads its `trainer_log.jsonl`:
   real tokens from `include_num_input_tokens_seen: non_padding`, exact elapsed time from its
   `throughput` field (tokens / seconds).
3. Runs `tuneforge bench` on the same config and prints both, and the ratio.

`--lf-python PY [--lf-path DIR]` uses an LLaMA-Factory that is already installed instead of step 1: `PY -m
llamafactory.cli`, with DIR first on its PYTHONPATH (bench/gpu_check.sh: the GPU machine has no internet, so
LF 0.9.5 and its pinned versions travel as wheels, installed into DIR; tuneforge's run keeps its own packages).

`builtin:smollm2` is tuneforge's name: LF gets the converted folder. A config without `template`
(tuneforge's `auto`) runs with `template: smollm2` on both sides: LF needs a name, and our built-in
`smollm2` renders byte for byte as LF's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LF_VENV = BENCH / ".venv-lf"
LF_VERSION = "0.9.5"
TORCH_VERSION = "2.13.0"
# LF 0.9.5's requirements without torch / torchvision / torchaudio (not used by its text SFT path)
# and without gradio / modelscope / av (web UI, hub mirror, video).
LF_REQUIREMENTS = [
    "accelerate>=1.3.0,<=1.11.0", "datasets>=2.16.0,<=4.0.0", "einops", "fire", "matplotlib>=3.7.0", "numpy",
    "omegaconf", "packaging", "pandas", "peft>=0.18.0,<=0.18.1", "protobuf", "pydantic", "pyyaml", "safetensors",
    "scipy", "sentencepiece", "tiktoken", "transformers>=4.55.0,<=5.6.0,!=4.52.0,!=4.57.0", "trl>=0.18.0,<=0.24.0",
    "tyro<0.9.0", "torchdata>=0.10.0,<=0.11.0", "fastapi", "sse-starlette", "uvicorn",
]  # fmt: skip
DEFAULT_CONFIG = BENCH / "configs" / "demo_lora_bilingual.yaml"


def ensure_lf_venv() -> Path:
    cli = LF_VENV / "bin" / "llamafactory-cli"
    if cli.exists():
        install_torchaudio_placeholder()
        return cli
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(LF_VENV)], check=True)
    pip = [str(LF_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as pin:
        pin.write(f"torch=={TORCH_VERSION}\n")
    subprocess.run([*pip, f"torch=={TORCH_VERSION}"], check=True)
    subprocess.run([*pip, "--no-deps", f"llamafactory=={LF_VERSION}"], check=True)
    subprocess.run([*pip, "-c", pin.name, *LF_REQUIREMENTS], check=True)
    os.unlink(pin.name)
    install_torchaudio_placeholder()
    return cli


def install_torchaudio_placeholder() -> None:
    """LF's mm_plugin does `import torchaudio` at import time, and no torchaudio wheel is built for
    torch 2.13 (2.11's extension fails to load). Text SFT never calls it, so the LF venv gets an
    import-only placeholder package (no dist-info: transformers still sees torchaudio as absent)."""
    site = next((LF_VENV / "lib").glob("python3*/site-packages"))
    package = site / "torchaudio"
    if (package / "__init__.py").exists() and "placeholder" in (package / "__init__.py").read_text():
        return
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text(
        '"""tuneforge bench placeholder: torchaudio is not installed in this venv (no build for torch 2.13)."""\n'
        "def __getattr__(name):\n"
        "    raise ImportError(f'torchaudio.{name}: audio is not available in the benchmark venv')\n"
    )


def lf_config(config: dict, work: Path, steps: int) -> dict:
    """The user's config as LF reads it: model folder, explicit template, absolute data dir, no saving."""
    from tuneforge.model.loader import resolve_model_path

    lf = dict(config)
    lf["model_name_or_path"] = resolve_model_path(str(config["model_name_or_path"]))
    if lf.get("template") in (None, "auto"):
        if str(config["model_name_or_path"]) != "builtin:smollm2":
            raise SystemExit("LLaMA-Factory needs an explicit `template`; add one to the config")
        lf["template"] = "smollm2"
    for key in ("truncation",):  # tuneforge-only keys
        lf.pop(key, None)
    if lf.get("packing") is None:
        lf.pop("packing", None)
    lf["dataset_dir"] = str((REPO / config.get("dataset_dir", "data")).resolve())
    lf.update(
        output_dir=str(work / "lf-out"), overwrite_output_dir=True, max_steps=steps, logging_steps=1,
        save_strategy="no", plot_loss=False, report_to="none", do_eval=False, eval_strategy="no",
        include_num_input_tokens_seen="non_padding",
    )
    lf.pop("val_size", None)
    return lf


def lf_command(options) -> tuple[list[str], dict]:
    """How to start LLaMA-Factory's CLI, and its environment: the benchmark venv (installed once), or `--lf-python`."""
    if not options.lf_python:
        return [str(ensure_lf_venv())], dict(os.environ)
    env = dict(os.environ)
    if options.lf_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (options.lf_path, env.get("PYTHONPATH")) if p)
    return [options.lf_python, "-m", "llamafactory.cli"], env


def run_lf(command: list[str], env: dict, config: dict, work: Path, warmup: int, steps: int) -> dict:
    path = work / "lf.yaml"
    path.write_text(yaml.safe_dump(lf_config(config, work, warmup + steps)))
    log = work / "lf.log"
    with log.open("w") as out:
        done = subprocess.run([*command, "train", str(path)], stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"llamafactory-cli failed (exit {done.returncode}); see the end of {log}:\n"
                         + "\n".join(log.read_text().splitlines()[-20:]))
    records = [json.loads(line) for line in (work / "lf-out" / "trainer_log.jsonl").read_text().splitlines()]
    by_step = {r["current_steps"]: r for r in records if "loss" in r and r.get("throughput")}
    start, end = by_step[warmup], by_step[warmup + steps]

    def elapsed(r: dict) -> float:
        return r["total_tokens"] / r["throughput"]

    seconds = elapsed(end) - elapsed(start)
    return {
        "real_tokens_per_s": round((end["total_tokens"] - start["total_tokens"]) / seconds, 2),
        "seconds_per_step": round(seconds / steps, 3),
        "losses": {str(k): v["loss"] for k, v in sorted(by_step.items())},
    }


def mean_loss(losses: dict, first: int) -> float:
    values = [v for k, v in losses.items() if int(k) > first]
    return sum(values) / len(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG))
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=str(BENCH / "results" / "compare_llamafactory.json"))
    parser.add_argument("--lf-python", help="a Python that imports llamafactory (skips installing bench/.venv-lf)")
    parser.add_argument("--lf-path", help="a folder put first on --lf-python's PYTHONPATH (LF's pinned packages)")
    options = parser.parse_args()

    config = yaml.safe_load(Path(options.config).read_text())
    for item in options.overrides:
        key, _, value = item.partition("=")
        config[key] = yaml.safe_load(value)
    config.setdefault("template", "smollm2" if config.get("template") in (None, "auto") else config["template"])
    if config["template"] in (None, "auto"):
        config["template"] = "smollm2"
    command, lf_env = lf_command(options)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tuneforge-vs-lf-") as tmp:
        work = Path(tmp)
        lf = run_lf(command, lf_env, config, work, options.warmup, options.steps)
        ours_path = work / "tuneforge.json"
        (work / "tf.yaml").write_text(yaml.safe_dump({**config, "dataset_dir": str((REPO / config.get("dataset_dir", "data")).resolve())}))
        subprocess.run([sys.executable, "-m", "tuneforge", "bench", str(work / "tf.yaml"), "--steps", str(options.steps),
                        "--warmup", str(options.warmup), "--out", str(ours_path)], check=True, stdout=subprocess.DEVNULL)
        ours = json.loads(ours_path.read_text())
    ratio = ours["real_tokens_per_s"] / lf["real_tokens_per_s"]
    rows = [
        ("real tokens/s", f"{ours['real_tokens_per_s']:.1f}", f"{lf['real_tokens_per_s']:.1f}"),
        ("s/step", f"{ours['seconds_per_step']:.2f}", f"{lf['seconds_per_step']:.2f}"),
        (f"mean loss, steps {options.warmup + 1}-{options.warmup + options.steps}",
         f"{mean_loss(ours['losses'], options.warmup):.4f}", f"{mean_loss(lf['losses'], options.warmup):.4f}"),
    ]
    print(f"\n{'':<28}{'tuneforge':>12}{'LLaMA-Factory ' + LF_VERSION:>22}")
    for name, a, b in rows:
        print(f"{name:<28}{a:>12}{b:>22}")
    print(f"{'speed-up (real tokens/s)':<28}{ratio:>11.2f}x")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {ours['threads']} threads")
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(json.dumps({"tuneforge": ours, "llamafactory": lf, "ratio": round(ratio, 3),
                                             "config": options.config, "overrides": options.overrides}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
