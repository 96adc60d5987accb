"""Training memory of a Llama-shaped decoder, part by part, as tuneforge's training loads it.

Conventions (they follow `model/adapters.py` and the HF Trainer):
- frozen weights are stored in the run's precision; trainable weights are upcast to fp32 (unless
  `pure_bf16`), so gradients are fp32 and AdamW keeps two fp32 states per trainable weight;
- 16-bit training of fp32 trainable weights runs under autocast, which keeps a 16-bit copy of each
  trainable weight during forward/backward;
- QLoRA: decoder linear weights in 4/8 bits (+ quantization constants), embeddings/head/norms
  in bf16; LoRA weights fp32;
- activations are what autograd keeps for backward, per decoder layer (see `layer_activation_bytes`),
  for T = batch x cutoff tokens (the worst case: every sample as long as `cutoff_len`);
- logits: HF's plain forward materialises [T x V] logits plus fp32 log-softmax and its gradient;
  tuneforge's chunked loss only one chunk of label rows at a time.
The estimate is a sum of peaks (weights + gradients + optimizer + activations + logits + runtime),
which is the usual conservative bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneforge.errors import ConfigError
from tuneforge.estimate.shapes import DecoderShape

METHODS = ("full", "freeze", "lora", "qlora")
# How the training state is spread over the processes: DeepSpeed ZeRO stages, FSDP full sharding (= ZeRO-3).
SHARDING = ("none", "zero1", "zero2", "zero3", "fsdp")
PRECISION_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}
# bitsandbytes constants per quantized weight: int8 ~ one fp32 scale per row (negligible);
# nf4 with double quantization ~ 0.127 bits (LLM.int8 / QLoRA papers).
QUANT_OVERHEAD_BYTES = {"int8": 0.0, "int4": 0.127 / 8}
# Resident memory before any model exists: python + torch + transformers + datasets + peft on CPU
# (measured with this package imported: ~0.55 GiB); the CUDA context + kernels on a GPU.
RUNTIME_BYTES = {"cpu": 0.55 * 2**30, "cuda": 0.5 * 2**30}
GIB = 2**30
CPU_ALLOCATOR_SLACK = 0.5


@dataclass(frozen=True)
class EstimateSpec:
    shape: DecoderShape
    method: str = "lora"
    precision: str = "fp32"
    batch: int = 1
    cutoff: int = 1024
    lora_rank: int = 8
    grad_ckpt: bool = False
    freeze_trainable_layers: int = 2
    chunked_logits: bool = True
    loss_chunk: int = 1024
    pure_bf16: bool = False
    device: str = "cpu"
    world_size: int = 1  # data-parallel processes; the estimate is per device
    sharding: str = "none"
    offload: bool = False  # ZeRO/FSDP offload: optimizer states (and with zero3/fsdp the weights) in CPU memory

    def __post_init__(self) -> None:
        if self.sharding not in SHARDING:
            raise ConfigError(f"sharding {self.sharding}: expected one of {', '.join(SHARDING)}")
        if self.world_size < 1:
            raise ConfigError(f"--world-size must be >= 1, got {self.world_size}")
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method}: expected one of {', '.join(METHODS)}")
        if self.precision not in PRECISION_BYTES:
            raise ConfigError(f"--precision {self.precision}: expected one of {', '.join(PRECISION_BYTES)}")
        quantized = self.precision in ("int8", "int4")
        if quantized != (self.method == "qlora"):
            raise ConfigError(
                f"--method {self.method} with --precision {self.precision}: qlora needs int8 or int4, "
                f"and int8/int4 weights are only trained with qlora"
            )
        if self.batch < 1 or self.cutoff < 1:
            raise ConfigError(f"--batch and --cutoff must be >= 1, got {self.batch} and {self.cutoff}")


@dataclass(frozen=True)
class MemoryEstimate:
    spec: EstimateSpec
    parts: dict[str, float] = field(default_factory=dict)  # name -> bytes
    trainable_params: int = 0

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def activation_bytes(spec: EstimateSpec) -> int:
    """Bytes per activation element: 16-bit under autocast / 16-bit weights, else fp32."""
    return 4 if spec.precision == "fp32" else 2


def layer_activation_bytes(shape: DecoderShape, tokens: int, act: int, *, trainable_norms: bool, lora_rank: int) -> float:
    """What autograd keeps for one decoder layer (eager PyTorch, SDPA attention, SwiGLU MLP).

    - two RMSNorms: their input (upcast to fp32 inside the norm) and their output; the normalised
      input before the weight too when the norm weight trains;
    - attention: rotated q, k and v (k, v at their own GQA width: packed rows run SDPA per sample
      without a mask, model/attention.py), the SDPA output and the contiguous copy o_proj reads;
    - MLP: gate, up, silu(gate) and silu(gate)*up, per routed expert;
    - LoRA: the rank-r output of every lora_A.
    """
    h, a = shape.hidden, shape.q_width
    norm_bytes = 4  # RMSNorm computes in fp32 and keeps its fp32 input
    norms = 2 * tokens * h * (norm_bytes + act + (norm_bytes if trainable_norms else 0))
    attention = (3 * a + 2 * shape.kv_width) * tokens * act + tokens * shape.heads * 4  # + logsumexp
    mlp = 4 * tokens * shape.intermediate * act * shape.experts_per_token
    lora = 7 * tokens * lora_rank * act if lora_rank else 0
    return norms + attention + mlp + lora


def estimate_memory(spec: EstimateSpec) -> MemoryEstimate:
    shape = spec.shape
    tokens = spec.batch * spec.cutoff
    act = activation_bytes(spec)
    half = spec.precision in ("bf16", "fp16")
    store = PRECISION_BYTES[spec.precision]
    trainable_store = 2.0 if (half and spec.pure_bf16) else 4.0

    # ---- which parameters train ----------------------------------------------------------------
    lora_rank = spec.lora_rank if spec.method in ("lora", "qlora") else 0
    if spec.method == "full":
        trainable = shape.total_params
        frozen = 0
    elif spec.method == "freeze":
        n = spec.freeze_trainable_layers
        trainable = min(abs(n), shape.layers) * shape.layer_params()
        frozen = shape.total_params - trainable
    else:
        trainable = shape.lora_params(lora_rank)
        frozen = shape.total_params

    # ---- weights ------------------------------------------------------------------------------
    if spec.method == "qlora":
        linear = shape.layers * shape.layer_linear_params()
        rest = shape.total_params - linear
        weights = linear * (store + QUANT_OVERHEAD_BYTES[spec.precision]) + rest * 2.0
    else:
        weights = frozen * store
    weights += trainable * trainable_store
    parts: dict[str, float] = {"weights": weights}
    if half and not spec.pure_bf16 and spec.method in ("full", "freeze"):
        parts["autocast weight copies"] = trainable * 2.0
    parts["gradients"] = trainable * trainable_store
    parts["optimizer (AdamW)"] = 2 * trainable * trainable_store

    # ---- activations --------------------------------------------------------------------------
    if spec.method == "freeze" and spec.freeze_trainable_layers > 0:
        active_layers = min(spec.freeze_trainable_layers, shape.layers)
    else:
        active_layers = shape.layers
    per_layer = layer_activation_bytes(
        shape, tokens, act, trainable_norms=spec.method in ("full", "freeze"), lora_rank=lora_rank
    )
    if spec.grad_ckpt:
        # Each layer keeps only its input; backward recomputes one layer at a time.
        activations = active_layers * tokens * shape.hidden * act + per_layer
    else:
        activations = active_layers * per_layer
    activations += tokens * shape.hidden * (4 + act)  # final norm
    parts["activations"] = activations

    # ---- logits -------------------------------------------------------------------------------
    if spec.chunked_logits:
        # LinearCrossEntropySum (train/loss.py): one fp32 [chunk x V] buffer that becomes the
        # gradient in place (+ the head's 16-bit output and the gradient cast back to 16 bits),
        # and d hidden for every label row.
        rows = min(spec.loss_chunk, tokens)
        half_copies = 2 * rows * shape.vocab * act if act != 4 else 0
        parts["logits + loss"] = rows * shape.vocab * 4 + half_copies + tokens * shape.hidden * act
    else:
        upcast = tokens * shape.vocab * 4 if act != 4 else 0
        # logits, log-softmax, and in backward the gradients of both (measured: ~3.4 x T x V x 4 bytes)
        parts["logits + loss"] = tokens * shape.vocab * act + upcast + 2.5 * tokens * shape.vocab * 4
    if spec.device == "cpu":
        # glibc keeps the pages of freed temporaries (forward intermediates, backward gradients of
        # activations) instead of returning them; measured ~0.5 x the saved activations. Gradients
        # and optimizer state allocated later reuse those pages, so only the excess shows in RSS.
        parts["allocator slack (CPU)"] = max(0.0, CPU_ALLOCATOR_SLACK * activations - parts["gradients"] - parts["optimizer (AdamW)"])
    parts["runtime"] = RUNTIME_BYTES["cuda" if spec.device == "cuda" else "cpu"]
    _shard(parts, spec, shape.layer_params() * (store if spec.method != "qlora" else 2.0))
    return MemoryEstimate(spec=spec, parts=parts, trainable_params=int(trainable))


def _shard(parts: dict[str, float], spec: EstimateSpec, layer_weight_bytes: float) -> None:
    """Per-device parts under data parallelism: ZeRO-1 splits the optimizer states over the processes, ZeRO-2
    the gradients too, ZeRO-3 / FSDP the weights too (one layer's full weights are gathered at a time, the
    next one prefetched); offload moves them to CPU memory. Plain DDP keeps a gradient bucket copy."""
    world = spec.world_size
    if spec.sharding == "none":
        if world > 1:
            parts["DDP gradient buckets"] = parts["gradients"]
        return
    shards = {"zero1": ("optimizer (AdamW)",), "zero2": ("optimizer (AdamW)", "gradients")}.get(
        spec.sharding, ("optimizer (AdamW)", "gradients", "weights", "autocast weight copies"))
    for name in shards:
        if name in parts:
            parts[name] /= world
    if spec.sharding in ("zero3", "fsdp"):
        parts["gathered layers (2)"] = 2 * layer_weight_bytes
    if spec.offload:
        parts["optimizer (AdamW)"] = 0.0
        if spec.sharding in ("zero3", "fsdp"):
            parts["weights"] = 0.0


def format_estimate(estimate: MemoryEstimate) -> str:
    spec, shape = estimate.spec, estimate.spec.shape
    what = f"{spec.method} r={spec.lora_rank}" if spec.method in ("lora", "qlora") else spec.method
    lines = [
        f"memory estimate for {shape.name} ({shape.total_params / 1e9:.3g}B params, "
        f"{estimate.trainable_params / 1e6:,.2f}M trainable): {what}, {spec.precision}, batch {spec.batch} "
        f"x cutoff {spec.cutoff} tokens, gradient checkpointing {'on' if spec.grad_ckpt else 'off'}, "
        f"{'chunked' if spec.chunked_logits else 'full'} logits, per device"
        + (f" of {spec.world_size} processes" if spec.world_size > 1 else "")
        + (f", {'FSDP' if spec.sharding == 'fsdp' else 'ZeRO-' + spec.sharding[-1]}{' + offload' if spec.offload else ''}"
           if spec.sharding != "none" else ""),
    ]
    for name, value in estimate.parts.items():
        lines.append(f"  {name:<24}{value / GIB:>9.2f} GiB")
    lines.append(f"  {'total':<24}{estimate.total / GIB:>9.2f} GiB")
    other = estimate_memory(_replace(spec, grad_ckpt=not spec.grad_ckpt))
    lines.append(f"  (with gradient checkpointing {'off' if spec.grad_ckpt else 'on'}: activations "
                 f"{other.parts['activations'] / GIB:.2f} GiB, total {other.total / GIB:.2f} GiB)")
    if spec.chunked_logits:
        full = estimate_memory(_replace(spec, chunked_logits=False))
        lines.append(f"  (full [tokens x vocab] logits as in a plain HF forward: {full.parts['logits + loss'] / GIB:.2f} GiB)")
    return "\n".join(lines)


def _replace(spec: EstimateSpec, **changes) -> EstimateSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)
