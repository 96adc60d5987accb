"""Continuous batching on the built-in demo model (SmolLM2-135M): aggregate tokens/s for 1, 4, 8, 16 streams,
and batch prediction (100 rows) one row at a time vs batched, with the greedy answers compared.

    .venv/bin/python bench/bench_batch_decode.py                    # streams 1 4 8 16, then predict
    .venv/bin/python bench/bench_batch_decode.py --skip-predict --streams 1 8

Streams: N different questions decoded together by one BatchDecoder (max_batch N), greedy, exactly --tokens
new tokens each (stop tokens off), prefill included in the wall time; "today" is the single-stream engine
(`ChatEngine.generate_ids`, the lean step with float16 weight copies under `infer_dtype: auto`).
Predict: --rows prompts, --predict-tokens new tokens at most (stop tokens on), one at a time (`generate_ids`,
as predict decoded before) vs `generate_batch` with --batch, under each of --predict-dtypes: `auto` (float16
copies for one stream, bfloat16 copies for batches) and `float32` (exact: the answers must be identical).
Run on a quiet machine: one benchmark at a time.
"""

from __future__ import annotations

import argparse
import json
import time

QUESTIONS = [
    "Write a short story about a robot who learns to paint.", "Explain how a rainbow forms.",
    "Give me three tips for learning a new language.", "What is the capital of France and why is it famous?",
    "Describe the water cycle in simple words.", "Why do cats purr?", "How does a bicycle stay upright?",
    "Write a haiku about autumn.", "What are the planets of the solar system?", "How do I boil an egg?",
    "Summarise the plot of Romeo and Juliet.", "What is photosynthesis?", "Tell me a fun fact about octopuses.",
    "How does the internet work?", "What should I pack for a weekend hike?", "Explain gravity to a child.",
]


def load_engine(dtype: str):
    from tuneforge.config import load_config
    from tuneforge.infer.engine import ChatEngine

    cfg = load_config(None, ["model_name_or_path=builtin:smollm2", f"infer_dtype={dtype}"], require_output_dir=False)
    return ChatEngine.from_config(cfg)


def bench_streams(engine, counts: list[int], tokens: int) -> list[dict]:
    from tuneforge.infer.batching import BatchDecoder

    saved, engine.stop_ids = engine.stop_ids, ()  # exactly `tokens` tokens per stream
    prompts = [engine.encode_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]
    settings = engine.settings.with_overrides(do_sample=False, max_new_tokens=tokens)
    started = time.perf_counter()
    engine.generate_ids(prompts[0], do_sample=False, max_new_tokens=tokens)
    single = tokens / (time.perf_counter() - started)
    rows = [{"streams": "today (ChatEngine.generate_ids)", "tokens_per_s": round(single, 1)}]
    print(f"today, one stream: {single:.1f} tokens/s (prefill included)", flush=True)
    for count in counts:
        decoder = BatchDecoder(engine, max_batch=count)
        started = time.perf_counter()
        answers = decoder.generate([prompts[i % len(prompts)] for i in range(count)], settings)
        seconds = time.perf_counter() - started
        total = sum(len(a) for a in answers)
        rate = total / seconds
        rows.append({"streams": count, "tokens": total, "seconds": round(seconds, 2), "tokens_per_s": round(rate, 1),
                     "per_stream": round(rate / count, 1), "x_today": round(rate / single, 2)})
        print(f"{count:>2} streams: {total} tokens in {seconds:.1f}s = {rate:.1f} tokens/s "
              f"({rate / count:.1f} per stream, {rate / single:.2f}x one stream today)", flush=True)
    engine.stop_ids = saved
    return rows


def _predict_pair(dtype: str, prompts, tokens: int, batch: int) -> tuple[float, float, int]:
    """(seconds one row at a time, seconds batched, answers identical) with `infer_dtype: dtype`."""
    engine = load_engine(dtype)
    started = time.perf_counter()
    alone = [engine.generate_ids(p, do_sample=False, max_new_tokens=tokens) for p in prompts]
    one_at_a_time = time.perf_counter() - started
    started = time.perf_counter()
    together = engine.generate_batch(prompts, max_batch=batch, do_sample=False, max_new_tokens=tokens)
    batched = time.perf_counter() - started
    same = sum(a == b for a, b in zip(alone, together))
    print(f"predict {len(prompts)} rows, infer_dtype {dtype}: one at a time {one_at_a_time:.1f}s, batched ({batch} at "
          f"a time) {batched:.1f}s = {one_at_a_time / batched:.2f}x faster; identical greedy answers: "
          f"{same}/{len(prompts)}", flush=True)
    return one_at_a_time, batched, same


def bench_predict(rows: int, tokens: int, batch: int, dtypes: list[str]) -> dict:
    engine = load_engine("float32")
    prompts = [engine.encode_prompt([{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"}])
               for i in range(rows)]
    del engine
    result = {"rows": rows, "max_new_tokens": tokens, "batch": batch}
    for dtype in dtypes:
        alone, together, same = _predict_pair(dtype, prompts, tokens, batch)
        result[dtype] = {"one_at_a_time_s": round(alone, 1), "batched_s": round(together, 1), "identical": same}
    if "auto" in dtypes:  # "today": one row at a time under the default infer_dtype
        today = result["auto"]["one_at_a_time_s"]
        for dtype in dtypes:
            print(f"batched, infer_dtype {dtype}: {today / result[dtype]['batched_s']:.2f}x faster than one row at a "
                  "time as before (infer_dtype auto)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto", help="infer_dtype of the streams benchmark")
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--predict-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument("--skip-streams", action="store_true")
    parser.add_argument("--predict-dtypes", nargs="+", default=["auto", "float32"])
    parser.add_argument("--out", default=None, help="write the numbers as JSON")
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    result = {}
    if not args.skip_streams:
        result["streams"] = bench_streams(load_engine(args.dtype), args.streams, args.tokens)
    if not args.skip_predict:
        result["predict"] = bench_predict(args.rows, args.predict_tokens, args.batch, args.predict_dtypes)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
