"""Streaming decode speed of the built-in demo model (SmolLM2-135M) through ChatEngine.

    .venv/bin/python bench/bench_generate.py                      # auto: fp32 model, fp16 decode weights on CPU
    .venv/bin/python bench/bench_generate.py --dtype float32      # exact fp32 decode
    .venv/bin/python bench/bench_generate.py --dtype bfloat16     # LF key infer_dtype
    .venv/bin/python bench/bench_generate.py --no-fast            # the model's own forward per step

Prints prompt/answer sizes and decode tokens/s (best of --repeats). Greedy, 128 new tokens, no stop
token, so every run decodes exactly the same tokens. Leave OMP_NUM_THREADS unset to use all cores.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="auto", help="infer_dtype: auto | float32 | bfloat16 | float16")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    parser.add_argument("--no-fast", action="store_true", help="disable the lean decode step")
    parser.add_argument("--question", default="Write a short story about a robot who learns to paint.")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from tuneforge.config import load_config
    from tuneforge.infer.engine import ChatEngine

    cfg = load_config(None, ["model_name_or_path=builtin:smollm2", f"infer_dtype={args.dtype}"], require_output_dir=False)
    t0 = time.perf_counter()
    engine = ChatEngine.from_config(cfg)
    if args.no_fast:
        engine.fast_step = None
    load_s = time.perf_counter() - t0
    engine.stop_ids = ()  # decode exactly --tokens tokens every run
    messages = [{"role": "user", "content": args.question}]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
          f"dtype {next(engine.model.parameters()).dtype}, lean step {'on' if engine.fast_step else 'off'} "
          f"(decode weights {getattr(engine.fast_step, 'weights_dtype', None) or 'as loaded'}), load {load_s:.1f}s")
    rates = []
    for i in range(args.repeats):
        text = "".join(engine.stream_chat(messages, do_sample=False, max_new_tokens=args.tokens))
        stats = engine.last_stats
        rates.append(stats.tokens_per_second)
        print(f"run {i + 1}: {stats}")
    print(f"answer starts: {text[:120]!r}")
    print(f"decode tokens/s: best {max(rates):.1f}, median {sorted(rates)[len(rates) // 2]:.1f}")


if __name__ == "__main__":
    main()
