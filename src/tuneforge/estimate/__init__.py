"""`tuneforge estimate`: predict the training memory of a run before starting it (inference memory for a
config that does not train).

    tuneforge estimate x.yaml [key=value ...]
    tuneforge estimate --model builtin:smollm2 --method lora --precision fp32 --batch 4 --cutoff 512
    tuneforge estimate --model Qwen/Qwen2.5-7B --method full --precision bf16 --device cuda --world-size 8 --zero 3
    tuneforge estimate --table        # LLaMA-Factory's hardware table, computed

Numbers are per device. A config's world size and sharding are read from the launch environment
(WORLD_SIZE, FORCE_TORCHRUN + NPROC_PER_NODE x NNODES, visible GPUs) and its `deepspeed` JSON or `fsdp`;
a hub id of a common model is sized from a shipped table without the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tuneforge.estimate.memory import (
    GIB,
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
    "format_estimate", "hardware_table", "load_shape", "shape_from_config", "spec_from_config",
]  # fmt: skip

# (method, bits) rows of LLaMA-Factory's hardware requirement table.
# (method, precision, pure_bf16, label of the bits column); "16p" = full fine-tuning with pure_bf16.
TABLE_ROWS = (
    ("full", "fp32", False, "32"), ("full", "bf16", False, "16"), ("full", "bf16", True, "16p"),
    ("freeze", "bf16", False, "16"), ("lora", "bf16", False, "16"), ("qlora", "int8", False, "8"),
    ("qlora", "int4", False, "4"),
)


def parallel_setup(cfg, environ, device: str) -> tuple[int, str, bool]:
    """(processes, sharding, offload) the run would use: WORLD_SIZE under torchrun, else what `tuneforge train`
    would launch (FORCE_TORCHRUN / NPROC_PER_NODE x NNODES, or one process per visible GPU); the ZeRO stage and
    offload of its `deepspeed` JSON, or `fsdp`."""
    if environ.get("WORLD_SIZE"):
        world = int(environ["WORLD_SIZE"])
    elif environ.get("FORCE_TORCHRUN") or environ.get("NPROC_PER_NODE"):
        world = int(environ.get("NPROC_PER_NODE", "1")) * int(environ.get("NNODES", "1"))
    else:
        import torch

        world = max(torch.cuda.device_count(), 1) if device == "cuda" else 1
    sharding, offload = "none", False
    ds = cfg.training.deepspeed
    if ds:
        config = ds if isinstance(ds, dict) else json.loads(Path(ds).read_text(encoding="utf-8"))
        zero = config.get("zero_optimization", {})
        stage = int(zero.get("stage", 0))
        sharding = f"zero{stage}" if stage else "none"
        offload = str(zero.get("offload_optimizer", {}).get("device", "none")) == "cpu"
    elif cfg.training.fsdp:
        fsdp = cfg.training.fsdp  # HF's TrainingArguments turn it into True and its options into fsdp_config
        options = fsdp if isinstance(fsdp, str) else " ".join(fsdp) if isinstance(fsdp, (list, tuple)) else ""
        fsdp_config = getattr(cfg.training, "fsdp_config", None)
        fsdp_config = fsdp_config if isinstance(fsdp_config, dict) else {}
        offload = "offload" in options or any(str(fsdp_config.get(key, "")).lower() == "true" for key in
                                               ("cpu_offload", "offload_params", "fsdp_offload_params"))
        sharding = "fsdp"
    return world, sharding, offload


def spec_from_config(cfg, device: str | None = None) -> EstimateSpec:
    """The estimate for a run config: its model, method, precision, batch and cutoff_len."""
    bits = cfg.model.quantization_bit
    method = cfg.finetuning.finetuning_type
    if method == "oft":  # a small adapter on frozen weights: estimated as LoRA
        method = "lora"
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
    world_size, sharding, offload = parallel_setup(cfg, os.environ, device)
    batch, cutoff = int(cfg.training.per_device_train_batch_size), int(cfg.data.cutoff_len)
    if cfg.finetuning.stage == "grpo":  # a micro-batch trains num_generations prompt + completion sequences per prompt
        batch, cutoff = batch * cfg.grpo.num_generations, cutoff + max(int(cfg.generating.max_new_tokens), 0)
    return EstimateSpec(
        world_size=world_size, sharding=sharding, offload=offload,
        shape=load_shape(cfg.model.model_name_or_path),
        method=method,
        precision=precision,
        batch=batch,
        cutoff=cutoff,
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
    dtype = str(cfg.model.infer_dtype or "auto")
    precision = "bf16" if cfg.training.bf16 or dtype == "bfloat16" else "fp16" if cfg.training.fp16 or dtype == "float16" else "fp32"
    width = PRECISION_BYTES[precision]
    tokens = int(cfg.data.cutoff_len) + int(cfg.generating.max_new_tokens or 0)
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
