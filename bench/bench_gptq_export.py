"""GPTQ export of the built-in demo model: time, file size, and held-out perplexity against float32 and against plain
round-to-nearest with the same grid (what GPTQ's error compensation buys).

    .venv/bin/python bench/bench_gptq_export.py [--bits 4] [--nsamples 64] [--maxlen 512]

Calibration text: this repository's docs/*.md, held-out text: its README.md, both as of commit TEXTS_COMMIT (read
with `git show`, so later edits do not move the numbers; windows of --maxlen tokens). The
export is written by `tuneforge export` (export_quantization_bit), then read back layer by layer
(`read_gptq_layer`) into a float32 model; round-to-nearest quantizes each layer with an identity Hessian
(GPTQ without error compensation).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
TEXTS_COMMIT = "71d8480"


def _git(*args: str) -> str:
    import subprocess

    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout


def _text_at_commit(path: str) -> str:
    return _git("show", f"{TEXTS_COMMIT}:{path}")


def _docs_at_commit() -> list[str]:
    names = _git("ls-tree", "--name-only", TEXTS_COMMIT, "docs/").split()
    return [_text_at_commit(name) for name in sorted(names) if name.endswith(".md")]


def _windows(tokenizer, text: str, length: int, count: int) -> list[torch.Tensor]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    step = max(length, (len(ids) - length) // max(count, 1))
    return [torch.tensor([ids[s:s + length]]) for s in range(0, len(ids) - length, step)][:count]


def _evaluate(model, windows, reference_top1=None):
    losses, top1 = [], []
    with torch.no_grad():
        for ids in windows:
            out = model(input_ids=ids, labels=ids, use_cache=False)
            losses.append(out.loss.item())
            top1.append(out.logits[0, :-1].argmax(-1))
    agreement = None
    if reference_top1 is not None:
        same = sum((a == b).sum().item() for a, b in zip(top1, reference_top1))
        agreement = same / sum(a.numel() for a in top1)
    return math.exp(sum(losses) / len(losses)), top1, agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--maxlen", type=int, default=512)
    parser.add_argument("--heldout-windows", type=int, default=16)
    args = parser.parse_args()

    import yaml
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.cli.main import main as cli
    from tuneforge.export_gptq import quantize_linear, read_gptq_layer
    from tuneforge.model.demo import ensure_demo_model

    source = ensure_demo_model()
    work = Path(tempfile.mkdtemp(prefix="gptq_bench_"))
    calibration = work / "calibration.jsonl"
    with calibration.open("w", encoding="utf-8") as out:
        for text in _docs_at_commit():
            for start in range(0, len(text), 6000):
                out.write(json.dumps({"text": text[start:start + 6000]}) + "\n")
    config = {"model_name_or_path": "builtin:smollm2", "export_dir": str(work / "export"),
              "export_quantization_bit": args.bits, "export_quantization_dataset": str(calibration),
              "export_quantization_nsamples": args.nsamples, "export_quantization_maxlen": args.maxlen}
    (work / "export.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    started = time.perf_counter()
    if cli(["export", str(work / "export.yaml")]) != 0:
        sys.exit("export failed")
    export_seconds = time.perf_counter() - started
    files = sorted((work / "export").glob("*.safetensors"))
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    source_mb = sum(f.stat().st_size for f in Path(source).glob("*.safetensors")) / 1e6

    tokenizer = AutoTokenizer.from_pretrained(source)
    windows = _windows(tokenizer, _text_at_commit("README.md"), args.maxlen, args.heldout_windows)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    ppl_float, top1, _ = _evaluate(model, windows)

    written = {}
    for f in files:
        written.update(load_file(f))
    gptq = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    rounded = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, module in gptq.named_modules():
            if isinstance(module, torch.nn.Linear) and f"{name}.qweight" in written:
                module.weight.copy_(read_gptq_layer(written, name, args.bits))
                rounded_layer = rounded.get_submodule(name)
                quantize_linear(rounded_layer, torch.eye(rounded_layer.in_features), args.bits)
        for name, param in gptq.named_parameters():  # what the export keeps in float16
            if name in written:
                param.copy_(written[name].float())
                rounded.get_parameter(name).copy_(written[name].float())
    ppl_gptq, _, agree_gptq = _evaluate(gptq, windows, top1)
    ppl_round, _, agree_round = _evaluate(rounded, windows, top1)
    tokens = sum(w.numel() for w in windows)
    print(f"demo model, {args.bits}-bit, calibration {args.nsamples} x {args.maxlen} tokens (docs/*.md), held-out "
          f"{len(windows)} x {args.maxlen} = {tokens} tokens of README.md (both as of {TEXTS_COMMIT})")
    print(f"export: {export_seconds:.1f} s, weights {size_mb:.1f} MB (float32 source {source_mb:.1f} MB)")
    print("| weights | held-out perplexity | next-token agreement with float32 |")
    print("|---|---:|---:|")
    print(f"| float32 | {ppl_float:.3f} | -- |")
    print(f"| GPTQ {args.bits}-bit (the export, read back) | {ppl_gptq:.3f} | {agree_gptq:.1%} |")
    print(f"| round-to-nearest {args.bits}-bit, same grid | {ppl_round:.3f} | {agree_round:.1%} |")


if __name__ == "__main__":
    main()
