"""How close a training step is to the speed of its own matrix products.

MFU compares a step with the peak of one large square GEMM; this script compares it with the
GEMMs the step really runs. It records every matrix product (mm/addmm/bmm/baddbmm, with shapes
and strides) of one forward+backward on real batches of a config, replays those products alone
on random data, and prints the step time next to the products-only time:

    .venv/bin/python bench/matmul_bound.py bench/configs/demo_lora_bilingual.yaml

"products only" is the speed the step would have if attention, element-wise ops, the optimizer
and all Python overhead cost nothing: an upper bound for any implementation that does the same
matrix work in the same precision on this machine. Times are the minimum over repetitions (this
VM's neighbours steal cycles), measured alternately so drift hits both alike.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tuneforge.bench.runner import build_bench_trainer
from tuneforge.config.parser import load_config

aten = torch.ops.aten
MATMULS = {aten.mm.default, aten.addmm.default, aten.addmm_.default, aten.bmm.default, aten.baddbmm.default}
# the fused attention kernels of SDPA on CPU (their GEMMs are inside, invisible as mm calls)
ATTENTION = {aten._scaled_dot_product_flash_attention_for_cpu.default,
             aten._scaled_dot_product_flash_attention_for_cpu_backward.default}


class RecordKernels(TorchDispatchMode):
    """Records (op, [(shape, stride, dtype) of each tensor argument], kwargs) of every matmul and
    attention kernel."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATMULS or func in ATTENTION:
            specs = [(tuple(a.shape), tuple(a.stride()), a.dtype) if isinstance(a, torch.Tensor) else a for a in args]
            self.calls.append((func, specs, dict(kwargs)))
        return func(*args, **kwargs)


def matmul_flops(calls) -> float:
    total = 0.0
    for func, specs, _ in calls:
        if func not in MATMULS:
            continue
        a, b = (specs[0], specs[1]) if func in (aten.mm.default, aten.bmm.default) else (specs[1], specs[2])
        batch = a[0][0] if len(a[0]) == 3 else 1
        total += 2.0 * batch * a[0][-2] * a[0][-1] * b[0][-1]
    return total


def replay(calls) -> float:
    """Seconds to run the recorded kernels alone, on random tensors of the same layout."""
    cache: dict[tuple, torch.Tensor] = {}

    def tensor(spec):
        if not isinstance(spec, tuple) or len(spec) != 3:
            return spec
        if spec not in cache:
            shape, stride, dtype = spec
            # fill the storage, then view it: a broadcast gradient has stride 0
            storage = 1 + sum(max(size - 1, 0) * step for size, step in zip(shape, stride))
            cache[spec] = torch.empty(storage, dtype=dtype).normal_().as_strided(shape, stride)
        return cache[spec]

    prepared = [(func, [tensor(s) for s in specs], kwargs) for func, specs, kwargs in calls]
    start = time.perf_counter()
    for func, args, kwargs in prepared:
        if func is aten.addmm_.default:  # in place: write into a private copy of the output
            args = [args[0].clone(), *args[1:]]
        func(*args, **kwargs)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--batches", type=int, default=4, help="real batches to measure (after 2 warm-up)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="write the numbers as JSON")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, ["output_dir=saves/bench/matmul_bound", "overwrite_output_dir=true",
                                    "report_to=none", *args.overrides])
    trainer, _ = build_bench_trainer(cfg)
    model = trainer.model
    model.train()
    loader = iter(trainer.get_train_dataloader())
    batches = [next(loader) for _ in range(args.batches + 2)]

    def step(batch):
        trainer.compute_loss(model, batch).backward()
        model.zero_grad(set_to_none=True)

    for batch in batches[:2]:
        step(batch)
    batches = batches[2:]
    recorded = []
    for batch in batches:
        with RecordKernels() as recorder:
            step(batch)
        recorded.append(recorder.calls)
    products = [[c for c in calls if c[0] in MATMULS] for calls in recorded]

    step_s, bound_s, with_attention_s = ([float("inf")] * len(batches) for _ in range(3))
    for _ in range(args.repeats):
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            step(batch)
            step_s[i] = min(step_s[i], time.perf_counter() - start)
            bound_s[i] = min(bound_s[i], replay(products[i]))
            with_attention_s[i] = min(with_attention_s[i], replay(recorded[i]))

    tokens = sum(int((b["attention_mask"] if "attention_mask" in b else torch.ones_like(b["input_ids"])).sum())
                 for b in batches)
    flops = sum(matmul_flops(calls) for calls in products)
    result = {
        "config": args.config, "batches": len(batches), "real_tokens": tokens,
        "matmul_calls_per_step": round(sum(len(c) for c in products) / len(batches)),
        "matmul_gflop": round(flops / 1e9, 2),
        "step_s": round(sum(step_s), 3), "matmul_only_s": round(sum(bound_s), 3),
        "step_tokens_per_s": round(tokens / sum(step_s), 1),
        "matmul_only_tokens_per_s": round(tokens / sum(bound_s), 1),
        "matmul_gflops_in_replay": round(flops / sum(bound_s) / 1e9, 1),
        "matmul_and_attention_s": round(sum(with_attention_s), 3),
        "matmul_and_attention_tokens_per_s": round(tokens / sum(with_attention_s), 1),
        "step_fraction_of_bound": round(sum(bound_s) / sum(step_s), 3),
        "threads": torch.get_num_threads(),
    }
    print(f"{len(batches)} batches, {tokens} real tokens, {result['matmul_calls_per_step']} matrix products a step")
    print(f"  forward+backward        {result['step_s']:.3f} s  = {result['step_tokens_per_s']:7.1f} tokens/s")
    print(f"  the products alone      {result['matmul_only_s']:.3f} s  = {result['matmul_only_tokens_per_s']:7.1f} tokens/s"
          f"  ({result['matmul_gflop']} GFLOP at {result['matmul_gflops_in_replay']} GFLOP/s)")
    print(f"  products + attention    {result['matmul_and_attention_s']:.3f} s  = "
          f"{result['matmul_and_attention_tokens_per_s']:7.1f} tokens/s")
    print(f"  step at {100 * result['step_fraction_of_bound']:.1f}% of the products-only speed")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
        print(f"saved {args.out}")


if __name__ == "__main__":
    main()
