"""tuneforge's GGUF export against llama.cpp's own converter, tensor by tensor, and next-token agreement on probes.

    pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all: -d /tmp/lcpp   # the sdist vendors llama.cpp
    tar xzf /tmp/lcpp/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcpp
    pip install --target /tmp/spkg sentencepiece     # convert_hf_to_gguf.py imports it for Llama models
    .venv/bin/python bench/check_gguf_reference.py \
        --llama-cpp /tmp/lcpp/llama_cpp_python-0.3.36/vendor/llama.cpp --pythonpath /tmp/spkg

For each --gguf-type: `tuneforge export` of the demo model and llama.cpp's `convert_hf_to_gguf.py --outtype T` of
the same Hugging Face folder (no compiler needed: the converter is Python, with llama.cpp's own gguf-py). Then:
every tensor's name, type, shape and bytes compared; the metadata keys only one side writes listed; and the
next-token agreement of tuneforge's file (read back by transformers, float32) with the float32 source on four
probe texts of different kinds, with the source model's perplexity on each (how hard the text is for it).
`--model DIR` runs the tensor comparison on another folder (e.g. a small Qwen2 or Qwen3 built from a config).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OWN_ANSWER_PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how photosynthesis works.",
                      "What are the benefits of regular exercise?", "Describe the history of the bicycle."]

PATCHED_CONVERTER = """
import runpy, sys
sys.argv = sys.argv[1:]
sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "{pre}"
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def compare_files(ours: Path, theirs: Path) -> dict:
    import numpy as np
    from gguf import GGUFReader

    a, b = GGUFReader(str(ours)), GGUFReader(str(theirs))
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    differing = []
    for name in sorted(set(ta) & set(tb)):
        x, y = ta[name], tb[name]
        same = (x.tensor_type == y.tensor_type and list(x.shape) == list(y.shape)
                and np.array_equal(np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8)))
        if not same:
            differing.append(f"{name}: {x.tensor_type.name} {list(x.shape)} vs {y.tensor_type.name} {list(y.shape)}")
    return {"tensors": [len(ta), len(tb)], "only_tuneforge": sorted(set(ta) - set(tb)),
            "only_llama_cpp": sorted(set(tb) - set(ta)), "differing": differing,
            "identical": len(set(ta) & set(tb)) - len(differing),
            "metadata_only_tuneforge": sorted(set(a.fields) - set(b.fields)),
            "metadata_only_llama_cpp": sorted(set(b.fields) - set(a.fields))}


def probes(tokenizer, source_model) -> dict[str, list[int]]:
    import torch

    def first_1024(text: str) -> list[int]:
        return tokenizer(text).input_ids[:1024]

    corpus = json.loads((REPO / "data" / "demo_pt_corpus.json").read_text(encoding="utf-8"))
    chats = json.loads((REPO / "data" / "demo_bilingual_alpaca.json").read_text(encoding="utf-8"))
    rendered = "".join(tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{r['instruction']}\n{r.get('input', '')}".strip()},
         {"role": "assistant", "content": r["output"]}], tokenize=False) for r in chats)
    own: list[int] = []  # what the model itself writes: greedy answers to four prompts
    with torch.inference_mode():
        for prompt in OWN_ANSWER_PROMPTS:
            x = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                              return_tensors="pt", return_dict=True)
            own += source_model.generate(**x, max_new_tokens=240, do_sample=False)[0].tolist()
    return {"README opening (tests/data/gguf_probe.txt, the test's probe)":
            first_1024((REPO / "tests" / "data" / "gguf_probe.txt").read_text(encoding="utf-8")),
            "demo_pt_corpus.json (English and Chinese prose)": first_1024("\n\n".join(r["text"] for r in corpus)),
            "demo_bilingual_alpaca.json rendered with the chat template": first_1024(rendered),
            "the model's own greedy answers": own[:1024]}


def agreement(source: str, files: dict[str, Path]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    exported = {t: AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32).eval()
                for t, p in files.items()}
    rows = {}
    with torch.inference_mode():
        for name, ids in probes(tokenizer, base).items():
            x = torch.tensor([ids])
            want = base(input_ids=x).logits[0]
            row = {"tokens": len(ids), "source_perplexity":
                   round(torch.nn.functional.cross_entropy(want[:-1], x[0, 1:]).exp().item(), 1)}
            for t, model in exported.items():
                got = model(input_ids=x).logits[0]
                row[f"{t}_top1_agreement_pct"] = round((got.argmax(-1) == want.argmax(-1)).float().mean().item() * 100, 2)
            rows[name] = row
            print(f"  {name}: {row}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-cpp", required=True, type=Path, help="a llama.cpp tree (convert_hf_to_gguf.py, gguf-py)")
    parser.add_argument("--pythonpath", default="", help="extra import path for the converter (sentencepiece)")
    parser.add_argument("--gguf-type", nargs="+", default=["f16", "q8_0"])
    parser.add_argument("--model", help="another Hugging Face folder (Qwen2, Qwen3): tensors compared, no probes")
    parser.add_argument("--pre-tokenizer", help="tell the converter the tokenizer's pre-tokenizer (its hash check "
                        "fails for a config-built Qwen2 carrying the demo's tokenizer; tensors do not depend on it)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "gguf_reference_check.json"))
    args = parser.parse_args()

    from tuneforge.model import ensure_demo_model

    source = args.model or str(ensure_demo_model())
    report: dict = {"source": source, "llama_cpp": str(args.llama_cpp), "files": {}}
    ours: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as work:
        for gguf_type in args.gguf_type:
            out = Path(work) / f"tuneforge_{gguf_type}"
            subprocess.run([sys.executable, "-m", "tuneforge", "export", f"model_name_or_path={source}",
                            f"export_dir={out}", "export_format=gguf", f"gguf_type={gguf_type}"], check=True)
            ours[gguf_type] = next(out.glob("*.gguf"))
            theirs = Path(work) / f"llama_cpp_{gguf_type}.gguf"
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(args.llama_cpp / "gguf-py"),
                                                                          args.pythonpath) if p))
            convert = [str(args.llama_cpp / "convert_hf_to_gguf.py"), source, "--outtype", gguf_type, "--outfile",
                       str(theirs)]
            launcher = ["-c", PATCHED_CONVERTER.format(pre=args.pre_tokenizer)] if args.pre_tokenizer else []
            subprocess.run([sys.executable, *launcher, *convert], check=True, env=env, stdout=subprocess.DEVNULL)
            cmp = compare_files(ours[gguf_type], theirs)
            report["files"][gguf_type] = cmp
            print(f"{gguf_type}: {cmp['identical']} of {cmp['tensors'][0]} tensors byte-identical to llama.cpp's; "
                  f"differing {cmp['differing'] or 'none'}; metadata only in tuneforge's "
                  f"{cmp['metadata_only_tuneforge']}, only in llama.cpp's {cmp['metadata_only_llama_cpp']}", flush=True)
        if not args.model:
            print("next-token agreement of tuneforge's files with the float32 source:")
            report["agreement"] = agreement(source, ours)
    Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
