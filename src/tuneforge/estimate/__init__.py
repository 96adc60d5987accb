"""`tuneforge estimate`: predict the training memory of a run before starting it (inference memory for a
config that does not train).

    tuneforge estimate x.yaml [key=value ...]
    tuneforge estimate --model builtin:smollm2 --method lora --precision fp32 --batch 4 --cutoff 512
    tuneforge estimate --table        # LLaMA-Factory's hardware table, computed
"""

from __future__ import annotations

import argparse

from tuneforge.errors import ConfigError
from tuneforge.estimate.memory import (
    GIB,
    METHODS,
    PRECISION_BYTES,
    RUNTIME_BYTES,
    EstimateSpec,
    MemoryEstimate,
    estimate_memory,
    format_estimate,
)
from tuneforge.estimate.shapes import PUBLISHED_SHAPES, DecoderShape, load_shape, shape_from_config

__all__ = [
    "DecoderShape", "EstimateSpec", "MemoryEstimate", "PUBLISHED_SHAPES", "estimate_memory",
    "format_estimate", "hardware_table", "load_shape", "main_estimate", "shape_from_config", "spec_from_config",
]  # fmt: skip

# (method, bits) rows of LLaMA-Factory's hardware requirement table.
# (method, precision, pure_bf16, label of the bits column); "16p" = full fine-tuning with pure_bf16.
TABLE_ROWS = (
    ("full", "fp32", False, "32"), ("full", "bf16", False, "16"), ("full", "bf16", True, "16p"),
    ("freeze", "bf16", False, "16"), ("lora", "bf16", False, "16"), ("qlora", "int8", False, "8"),
    ("qlora", "int4", False, "4"),
)


def spec_from_config(cfg, device: str | None = None) -> EstimateSpec:
    """The estimate for a run config: its model, method, precision, batch and cutoff_len."""
    bits = getattr(cfg.model, "quantization_bit", None)
    method = cfg.finetuning.finetuning_type
    if bits is not None:
        method, precision = "qlora", f"int{bits}"
    elif cfg.training.bf16:
        precision = "bf16"
    elif cfg.training.fp16:
        precision = "fp16"
    else:
        precision = "fp32"
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return EstimateSpec(
        shape=load_shape(cfg.model.model_name_or_path),
        method=method,
        precision=precision,
        batch=int(cfg.training.per_device_train_batch_size),
        cutoff=int(cfg.data.cutoff_len),
        lora_rank=int(cfg.finetuning.lora_rank),
        grad_ckpt=bool(cfg.training.gradient_checkpointing),
        freeze_trainable_layers=int(cfg.finetuning.freeze_trainable_layers),
        pure_bf16=bool(cfg.finetuning.pure_bf16),
        device=device,
    )


def hardware_table(batch: int = 1, cutoff: int = 1024, *, grad_ckpt: bool = True, chunked_logits: bool = True,
                   device: str = "cuda") -> str:
    """LLaMA-Factory's table (sizes x methods x bits), computed from the published shapes."""
    sizes = list(PUBLISHED_SHAPES)
    header = f"{'method':<8}{'bits':>5}" + "".join(f"{s:>9}" for s in sizes)
    lines = [
        f"estimated GiB per device: batch {batch} x {cutoff} tokens, gradient checkpointing "
        f"{'on' if grad_ckpt else 'off'}, {'chunked' if chunked_logits else 'full'} logits, LoRA r=8, freeze 2 layers, AdamW",
        header,
        "-" * len(header),
    ]
    for method, precision, pure, bits in TABLE_ROWS:
        cells = []
        for size in sizes:
            spec = EstimateSpec(PUBLISHED_SHAPES[size], method, precision, batch, cutoff, grad_ckpt=grad_ckpt,
                                chunked_logits=chunked_logits, pure_bf16=pure, device=device)
            cells.append(f"{round(estimate_memory(spec).total / GIB):>9d}")
        lines.append(f"{method:<8}{bits:>5}" + "".join(cells))
    lines.append("16p = full with pure_bf16 (no fp32 master weights). shapes: " + ", ".join(f"{k} = {v.name}" for k, v in PUBLISHED_SHAPES.items()))
    return "\n".join(lines)


def inference_estimate(cfg) -> str:
    """A config that does not train (chat, predict): the weights plus one row's KV cache, in the
    precision inference loads (float32 unless bf16/fp16/infer_dtype say otherwise)."""
    shape = load_shape(cfg.model.model_name_or_path)
    dtype = str(getattr(cfg.model, "infer_dtype", "auto") or "auto")
    precision = "bf16" if cfg.training.bf16 or dtype == "bfloat16" else "fp16" if cfg.training.fp16 or dtype == "float16" else "fp32"
    width = PRECISION_BYTES[precision]
    tokens = int(cfg.data.cutoff_len) + int(getattr(cfg.generating, "max_new_tokens", 0) or 0)
    parts = {
        "weights": shape.total_params * width,
        "KV cache, one row": 2 * shape.layers * shape.kv_width * tokens * width,
        "runtime": RUNTIME_BYTES["cpu"],
    }
    import torch

    if dtype == "auto" and precision == "fp32" and not torch.cuda.is_available():
        # infer/fast_step.py decodes from float16 copies of the linear weights and the LM head
        parts["float16 decode copies"] = (shape.layers * shape.layer_linear_params() + shape.vocab * shape.hidden) * 2
    lines = [f"this config does not train (do_train is false): inference memory for {shape.name} "
             f"({shape.total_params / 1e9:.3f}B params, {precision}; KV cache for {tokens} tokens = "
             f"cutoff_len + max_new_tokens)"]
    lines += [f"  {name:<26} {size / GIB:6.2f} GiB" for name, size in parts.items()]
    lines.append(f"  {'total':<26} {sum(parts.values()) / GIB:6.2f} GiB")
    return "\n".join(lines)


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
    p.add_argument("--table", action="store_true")
    return p


USAGE = __doc__.split("\n\n", 1)[1]


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
            pure_bf16=options.pure_bf16, device=options.device or "cpu",
        )
    else:
        from tuneforge.config.parser import split_config_and_overrides
        from tuneforge.config.parser import load_config

        path, overrides = split_config_and_overrides(rest)
        if path is None and not overrides:
            raise ConfigError("tuneforge estimate needs a config file, --model ..., or --table; see `tuneforge estimate -h`")
        import dataclasses

        cfg = load_config(path, overrides, require_output_dir=False)
        if not cfg.training.do_train:
            print(inference_estimate(cfg))
            return 0
        spec = spec_from_config(cfg, device=options.device)
        if options.full_logits:
            spec = dataclasses.replace(spec, chunked_logits=False)
    print(format_estimate(estimate_memory(spec)))
    return 0
