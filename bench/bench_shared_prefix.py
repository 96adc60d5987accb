"""Shared prompt prefixes, side by side: the same sft batches with the prefix computed once and per sample.

    .venv/bin/python bench/bench_shared_prefix.py examples/memorize_facts.yaml --steps 8
    .venv/bin/python bench/bench_shared_prefix.py examples/demo_lora_sft.yaml --steps 8
    .venv/bin/python bench/bench_shared_prefix.py examples/demo_dpo.yaml --steps 8   # chosen + rejected rows

Builds the config's data and model once (sft: as `tuneforge train` does), takes `--steps` batches, and runs
forward + backward on each with the prefix shared and with plain packing, alternating the two (so both see the
same machine state); sft: the label-only LM loss; dpo / rm configs: the summed log-probs of the chosen and
rejected sequences (`sequence_logps`, what their losses are made of); kto: of the rated and the KL answers. Prints s/step, tokens run per step, the largest loss difference (they
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

    with tempfile.TemporaryDirectory() as scratch:
        cfg = load_config(options.config, bench_overrides(options.overrides, steps=options.steps, warmup=0,
                                                          output_dir=scratch))
        if cfg.finetuning.stage == "sft":
            trainer, bundle = build_bench_trainer(cfg)
            model = trainer.model
        else:
            model, bundle = _pairwise_setup(cfg)
    model.train()
    collators, run = _collators_and_step(cfg.finetuning.stage)
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
            loss = run(model, batch)
            loss.backward()
            model.zero_grad(set_to_none=True)
            if index:  # the first batch warms up
                seconds[name] += time.perf_counter() - started
                tokens[name] += batch["input_ids"].numel() + batch.get("kl_input_ids", batch["input_ids"][:, :0]).numel()
            losses[name] = float(loss)
        worst = max(worst, abs(losses["shared"] - losses["plain"]))
    steps = options.steps
    print(f"{options.config} {' '.join(options.overrides)}  batch {size}, {steps} steps (forward + backward)")
    for name in collators:
        print(f"  {name:<7} {seconds[name] / steps:7.3f} s/step   {tokens[name] / steps:7.0f} tokens run per step")
    print(f"  speed-up {seconds['plain'] / seconds['shared']:.2f}x, largest loss difference {worst:.2e}")


def _pairwise_setup(cfg):
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.model.loader import load_model
    from tuneforge.train import workflow

    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    bundle = build_datasets(cfg, tokenizer, template, stage=cfg.finetuning.stage)
    model = load_model(cfg.model, cfg.finetuning, is_trainable=True, compute_dtype=workflow.compute_dtype(cfg))
    return model, bundle


def _collators_and_step(stage: str):
    """{"shared": collator, "plain": collator} and the forward that gives a scalar to backpropagate."""
    if stage == "sft":
        from tuneforge.data.collate import PackedCollator
        from tuneforge.model.lm_parts import resolve_lm_parts
        from tuneforge.train.loss import chunked_causal_lm_loss

        return ({"shared": PackedCollator(share_prefix=True), "plain": PackedCollator()},
                lambda model, batch: chunked_causal_lm_loss(resolve_lm_parts(model, batch)[0], batch))
    from tuneforge.train.preference import FeedbackPackedCollator, PairwisePackedCollator, sequence_logps

    if stage == "kto":  # the rated answers and the mismatched KL answers: two rows
        return ({"shared": FeedbackPackedCollator(share_prefix=True), "plain": FeedbackPackedCollator()},
                lambda model, batch: (sequence_logps(model, batch)[0].sum()
                                      + sequence_logps(model, batch, prefix="kl_")[0].sum()) / 100)
    return ({"shared": PairwisePackedCollator(share_prefix=True), "plain": PairwisePackedCollator()},
            lambda model, batch: sequence_logps(model, batch)[0].sum() / 100)


if __name__ == "__main__":
    main()
