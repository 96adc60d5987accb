"""Shared prompt prefixes, side by side: the same sft batches with the prefix computed once and per sample.

    .venv/bin/python bench/bench_shared_prefix.py examples/memorize_facts.yaml --steps 8
    .venv/bin/python bench/bench_shared_prefix.py examples/demo_lora_sft.yaml --steps 8

Builds the config's trainer once (as `tuneforge train` does), takes `--steps` batches, and runs forward +
backward on each with `PackedCollator(share_prefix=True)` and with plain packing, alternating the two (so
both see the same machine state). Prints s/step, tokens run per step, the largest loss difference (they
must agree: the computation is the same up to float summation order) and the speed-up. No optimizer step,
nothing is saved.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=8)
    options = parser.parse_args()

    from tuneforge.bench.runner import bench_overrides, build_bench_trainer
    from tuneforge.config.parser import load_config
    from tuneforge.data.collate import PackedCollator
    from tuneforge.model.lm_parts import resolve_lm_parts
    from tuneforge.train.loss import chunked_causal_lm_loss

    with tempfile.TemporaryDirectory() as scratch:
        cfg = load_config(options.config, bench_overrides(options.overrides, steps=options.steps, warmup=0,
                                                          output_dir=scratch))
        trainer, bundle = build_bench_trainer(cfg)
    model = trainer.model.train()
    collators = {"shared": PackedCollator(share_prefix=True), "plain": PackedCollator()}
    size = cfg.training.per_device_train_batch_size
    order = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(0)).tolist()
    batches = [[bundle.train[i] for i in order[k * size:(k + 1) * size]] for k in range(options.steps + 1)]
    seconds = {name: 0.0 for name in collators}
    tokens = {name: 0 for name in collators}
    worst = 0.0
    for index, samples in enumerate(batches):
        losses = {}
        for name in (("shared", "plain") if index % 2 else ("plain", "shared")):
            batch = collators[name](samples)
            started = time.perf_counter()
            loss = chunked_causal_lm_loss(resolve_lm_parts(model, batch)[0], batch)
            loss.backward()
            model.zero_grad(set_to_none=True)
            if index:  # the first batch warms up
                seconds[name] += time.perf_counter() - started
                tokens[name] += batch["input_ids"].numel()
            losses[name] = float(loss)
        worst = max(worst, abs(losses["shared"] - losses["plain"]))
    steps = options.steps
    print(f"{options.config} {' '.join(options.overrides)}  batch {size}, {steps} steps (forward + backward)")
    for name in collators:
        print(f"  {name:<7} {seconds[name] / steps:7.3f} s/step   {tokens[name] / steps:7.0f} tokens run per step")
    print(f"  speed-up {seconds['plain'] / seconds['shared']:.2f}x, largest loss difference {worst:.2e}")


if __name__ == "__main__":
    main()
