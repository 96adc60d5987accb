"""QLoRA on a CPU (bitsandbytes' CPU backend): memory and step time of LoRA on a float32, 8-bit and 4-bit base.

    .venv/bin/python bench/bench_qlora_cpu.py                      # a random Llama-3.2-1B-shaped model (1.5B)
    .venv/bin/python bench/bench_qlora_cpu.py --model builtin:smollm2

The default model is built once into --workdir: Llama 3.2 1B's shape (hidden 2048, 16 layers, 128,256-token
vocabulary, tied embeddings), random bfloat16 weights as a real checkpoint stores them (2.8 GB). Each setting
runs in a fresh process, one after the other: `load_model` as training loads it (LoRA r=8 on every linear
layer), then forward + backward of one 128-token sequence, 3 times (the fastest is reported). RSS is the
process's resident memory after the load; its peak includes the checkpoint's pages mapped while loading.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MEASURE = r"""
import json, resource, sys, time
import psutil, torch
from tuneforge.config.args import FinetuningArguments, ModelArguments
from tuneforge.model.loader import load_model
from tuneforge.model import ensure_demo_model

path, bits = sys.argv[1], (None if sys.argv[2] == "none" else int(sys.argv[2]))
path = ensure_demo_model() if path == "builtin:smollm2" else path
start = time.perf_counter()
model = load_model(ModelArguments(model_name_or_path=path, quantization_bit=bits),
                   FinetuningArguments(finetuning_type="lora", lora_target="all", lora_rank=8), is_trainable=True)
load_s = time.perf_counter() - start
rss = psutil.Process().memory_info().rss
ids = torch.randint(0, model.config.vocab_size, (1, 128), generator=torch.Generator().manual_seed(0))
steps = []
for _ in range(3):
    start = time.perf_counter()
    model(input_ids=ids, labels=ids).loss.backward()
    steps.append(time.perf_counter() - start)
print(json.dumps({"load_s": load_s, "rss_gib": rss / 2**30, "step_s": min(steps),
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def build_model(folder: Path) -> None:
    """Random weights in Llama 3.2 1B's shape, saved in bfloat16."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True,
                         max_position_embeddings=2048)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    model.save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model folder or builtin:smollm2 (default: build one)")
    parser.add_argument("--workdir", default="bench/.qlora_model")
    args = parser.parse_args()
    model = args.model
    if model is None:
        model = str(Path(args.workdir).resolve())
        if not (Path(model) / "config.json").is_file():
            print(f"building a random Llama-3.2-1B-shaped model in {model} ...", flush=True)
            build_model(Path(model))
    print("| base weights | load | RSS after load | peak RSS | forward + backward, 128 tokens |")
    print("|---|---:|---:|---:|---:|")
    for bits in ("none", "8", "4"):
        out = subprocess.run([sys.executable, "-c", MEASURE, model, bits], capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{bits}: {out.stderr[-2000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        name = "float32 (LoRA)" if bits == "none" else f"{bits}-bit (QLoRA)"
        print(f"| {name} | {row['load_s']:.1f} s | {row['rss_gib']:.2f} GiB | {row['peak_rss_gib']:.2f} GiB | "
              f"{row['step_s']:.2f} s |", flush=True)


if __name__ == "__main__":
    main()
