"""`tuneforge estimate`: the command line over the memory model (estimate/__init__.py, memory.py, shapes.py)."""

from __future__ import annotations

import argparse
import dataclasses

from tuneforge.errors import ConfigError
from tuneforge.estimate import (PRECISION_BYTES, EstimateSpec, estimate_memory, format_estimate, hardware_table,
                                inference_estimate, spec_from_config)
from tuneforge.estimate import __doc__ as ESTIMATE_DOC
from tuneforge.estimate.memory import METHODS
from tuneforge.estimate.shapes import load_shape


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneforge estimate", add_help=False)
    p.add_argument("--model")
    p.add_argument("--method", choices=METHODS, default="lora")
    p.add_argument("--precision", choices=list(PRECISION_BYTES), default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--cutoff", type=int, default=1024)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--freeze-layers", type=int, default=2)
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--full-logits", action="store_true", help="plain HF forward instead of the chunked loss")
    p.add_argument("--pure-bf16", action="store_true")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--world-size", type=int, default=1, help="data-parallel processes (per-device numbers)")
    p.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=0, help="DeepSpeed ZeRO stage")
    p.add_argument("--fsdp", action="store_true", help="FSDP full sharding")
    p.add_argument("--offload", action="store_true", help="ZeRO/FSDP CPU offload")
    p.add_argument("--table", action="store_true")
    return p


USAGE = ESTIMATE_DOC.split("\n\n", 1)[1]


def main_estimate(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print("usage:\n" + USAGE)
        return 0
    options, rest = _parser().parse_known_args(args)
    if options.table:
        print(hardware_table(options.batch, options.cutoff, grad_ckpt=True, chunked_logits=not options.full_logits,
                             device=options.device or "cuda"))
        return 0
    if options.model:
        if rest:
            raise ConfigError(f"tuneforge estimate --model: unexpected arguments {' '.join(rest)}")
        precision = options.precision or ("int4" if options.method == "qlora" else "fp32")
        spec = EstimateSpec(
            shape=load_shape(options.model), method=options.method, precision=precision, batch=options.batch,
            cutoff=options.cutoff, lora_rank=options.lora_rank, grad_ckpt=options.grad_ckpt,
            freeze_trainable_layers=options.freeze_layers, chunked_logits=not options.full_logits,
            pure_bf16=options.pure_bf16, device=options.device or "cpu", world_size=options.world_size,
            sharding="fsdp" if options.fsdp else (f"zero{options.zero}" if options.zero else "none"),
            offload=options.offload,
        )
    else:
        from tuneforge.config.parser import load_config, split_config_and_overrides

        path, overrides = split_config_and_overrides(rest)
        if path is None and not overrides:
            raise ConfigError("tuneforge estimate needs a config file, --model ..., or --table; see `tuneforge estimate -h`")
        cfg = load_config(path, overrides, require_output_dir=False)
        if not cfg.training.do_train:
            print(inference_estimate(cfg))
            return 0
        spec = spec_from_config(cfg, device=options.device)
        if options.full_logits:
            spec = dataclasses.replace(spec, chunked_logits=False)
    print(format_estimate(estimate_memory(spec)))
    return 0
