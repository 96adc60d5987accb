"""Run a tuneforge GGUF export in real llama.cpp and compare its greedy answers with tuneforge's chat.

    python3 -m venv /tmp/lcpp-venv && /tmp/lcpp-venv/bin/pip install llama-cpp-python   # compiles llama.cpp
    .venv/bin/python bench/check_gguf_llamacpp.py --llama-python /tmp/lcpp-venv/bin/python

For each --gguf-type: `tuneforge export` of the demo model (export_format gguf) into a temporary folder; then
each prompt is rendered with the model's chat template (the tokenizer's own, as the export writes it) and answered
greedily (--tokens new tokens, no repetition penalty) by tuneforge (`infer_dtype: float32`) and by llama.cpp
(llama-cpp-python in its own venv, reading the .gguf). Prints both answers and whether they are identical.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "请用一句话介绍北京。",
           "List three fruits.", "How do I boil an egg?"]
LLAMA_SCRIPT = """
import json, sys
from llama_cpp import Llama
args = json.loads(sys.argv[1])
llm = Llama(model_path=args["gguf"], n_ctx=1024, n_threads=2, verbose=False)
answers = []
for prompt in args["prompts"]:
    out = llm(prompt, max_tokens=args["tokens"], temperature=0.0, top_k=1, repeat_penalty=1.0)
    answers.append(out["choices"][0]["text"])
print(json.dumps(answers))
"""


def tuneforge_answers(prompts: list[str], tokens: int) -> tuple[list[str], list[str]]:
    from tuneforge.config import load_config
    from tuneforge.infer.engine import ChatEngine

    cfg = load_config(None, ["model_name_or_path=builtin:smollm2", "infer_dtype=float32", "do_sample=false",
                             f"max_new_tokens={tokens}"], require_output_dir=False)
    engine = ChatEngine.from_config(cfg)
    rendered = [engine.tokenizer.decode(engine.encode_prompt([{"role": "user", "content": p}])) for p in prompts]
    return rendered, [engine.chat([{"role": "user", "content": p}]) for p in prompts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-python", required=True, help="python of a venv with llama-cpp-python")
    parser.add_argument("--gguf-type", nargs="+", default=["f16", "q8_0"])
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    rendered, ours = tuneforge_answers(PROMPTS, args.tokens)
    repo = Path(__file__).resolve().parent.parent
    for gguf_type in args.gguf_type:
        out = Path(tempfile.mkdtemp()) / "gguf"
        subprocess.run([sys.executable, "-m", "tuneforge", "export", f"model_name_or_path=builtin:smollm2",
                        f"export_dir={out}", "export_format=gguf", f"gguf_type={gguf_type}"], check=True, cwd=repo)
        gguf = next(out.glob("*.gguf"))
        result = subprocess.run([args.llama_python, "-c", LLAMA_SCRIPT, json.dumps(
            {"gguf": str(gguf), "prompts": rendered, "tokens": args.tokens})], check=True, capture_output=True, text=True)
        theirs = json.loads(result.stdout.strip().splitlines()[-1])
        same = 0
        for prompt, mine, llama in zip(PROMPTS, ours, theirs):
            llama = llama.split("<|im_end|>")[0]
            same += mine.strip() == llama.strip()
            print(f"[{gguf_type}] {prompt}\n  tuneforge: {mine.strip()!r}\n  llama.cpp: {llama.strip()!r}", flush=True)
        print(f"[{gguf_type}] {gguf.name}: {same}/{len(PROMPTS)} answers identical to tuneforge's float32 greedy answers",
              flush=True)


if __name__ == "__main__":
    main()
