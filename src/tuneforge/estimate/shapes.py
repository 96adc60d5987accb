"""Decoder shapes (Llama / Qwen2 / Mistral / Mixtral family) and the parameter counts they imply.

The published shapes behind LLaMA-Factory's hardware table are data here (read-only); any other
model is read from its `config.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tuneforge.errors import ModelError


@dataclass(frozen=True)
class DecoderShape:
    name: str
    hidden: int
    intermediate: int  # per expert for MoE
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tie_embeddings: bool = False
    head_dim: int | None = None
    qkv_bias: bool = False  # Qwen2 family
    experts: int = 1  # Mixtral: 8 (all held in memory)
    experts_per_token: int = 1  # routed experts a token passes through (activations)

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_width(self) -> int:
        return self.heads * self.dim_head

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.dim_head

    # ---- parameter counts ---------------------------------------------------------------------
    def attention_linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of q, k, v, o."""
        h = self.hidden
        return [(h, self.q_width), (h, self.kv_width), (h, self.kv_width), (self.q_width, h)]

    def mlp_linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of gate, up, down of every expert."""
        h, i = self.hidden, self.intermediate
        return [(h, i), (h, i), (i, h)] * self.experts

    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.attention_linear_shapes() + self.mlp_linear_shapes())

    def layer_other_params(self) -> int:
        """Norms, q/k/v biases, the MoE router."""
        bias = self.q_width + 2 * self.kv_width if self.qkv_bias else 0
        router = self.hidden * self.experts if self.experts > 1 else 0
        return 2 * self.hidden + bias + router

    def layer_params(self) -> int:
        return self.layer_linear_params() + self.layer_other_params()

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        return 0 if self.tie_embeddings else self.vocab * self.hidden

    @property
    def total_params(self) -> int:
        return self.layers * self.layer_params() + self.embedding_params + self.head_params + self.hidden

    def lora_params(self, rank: int) -> int:
        """LoRA A + B on every linear layer of the decoder (`lora_target: all`)."""
        per_layer = sum(rank * (a + b) for a, b in self.attention_linear_shapes() + self.mlp_linear_shapes())
        return self.layers * per_layer


def shape_from_config(config: dict[str, Any], name: str = "model") -> DecoderShape:
    """A `DecoderShape` from a Hugging Face `config.json` dict of a Llama-shaped decoder."""
    config = config.get("text_config", config)
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
               if k not in config]
    if missing:
        raise ModelError(
            f"{name}: config.json has no {', '.join(missing)}; the estimator needs a Llama/Qwen2/Mistral-shaped "
            f"decoder config (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size)"
        )
    heads = int(config["num_attention_heads"])
    experts = int(config.get("num_local_experts") or config.get("num_experts") or 1)
    intermediate = int(config.get("moe_intermediate_size") or config["intermediate_size"]) if experts > 1 else int(config["intermediate_size"])
    return DecoderShape(
        name=name,
        hidden=int(config["hidden_size"]),
        intermediate=intermediate,
        layers=int(config["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        vocab=int(config["vocab_size"]),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        head_dim=config.get("head_dim"),
        qkv_bias=bool(config.get("attention_bias", False)) or config.get("model_type") in ("qwen2", "qwen2_moe"),
        experts=experts,
        experts_per_token=int(config.get("num_experts_per_tok") or 1) if experts > 1 else 1,
    )


_VARIANT_SUFFIXES = ("-instruct", "-chat", "-it", "-base")


def known_hub_shape(model: str) -> DecoderShape | None:
    """The shipped shape of a common hub model (`estimate/known_shapes.json`), found without the network."""
    table = json.loads(Path(__file__).with_name("known_shapes.json").read_text(encoding="utf-8"))["shapes"]
    key = str(model).strip().lower()
    for suffix in _VARIANT_SUFFIXES + ("",):
        base = key.removesuffix(suffix) if suffix else key
        if base in table:
            hidden, inter, layers, heads, kv, vocab, tie, head_dim, bias = table[base]
            return DecoderShape(str(model), hidden, inter, layers, heads, kv, vocab, tie, head_dim, bias)
    return None


def load_shape(model: str) -> DecoderShape:
    """`builtin:smollm2`, a model folder, a config.json path, or a hub id of the shipped table -> its shape."""
    from tuneforge.model.loader import looks_local, resolve_model_path

    path = Path(resolve_model_path(model)) if not str(model).endswith(".json") else Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        known = None if looks_local(str(model)) else known_hub_shape(model)
        if known is not None:
            return known
        raise ModelError(f"--model {model}: no config.json found at {path}, and it is not one of the hub models whose "
                         "shape ships with tuneforge (estimate/known_shapes.json); give a model folder or its "
                         "config.json (a hub model's config.json is a small download)")
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise ModelError(f"{path}: not valid JSON ({err})") from err
    return shape_from_config(config, name=str(model))


# Published configs of the model sizes in LLaMA-Factory's hardware table.
PUBLISHED_SHAPES = MappingProxyType({
    "7B": DecoderShape("Llama-2-7B", 4096, 11008, 32, 32, 32, 32000),
    "14B": DecoderShape("Qwen2.5-14B", 5120, 13824, 48, 40, 8, 152064, qkv_bias=True),
    "30B": DecoderShape("LLaMA-30B", 6656, 17920, 60, 52, 52, 32000),
    "70B": DecoderShape("Llama-2-70B", 8192, 28672, 80, 64, 8, 32000),
    "110B": DecoderShape("Qwen1.5-110B", 8192, 49152, 80, 64, 8, 152064, qkv_bias=True),
    "8x7B": DecoderShape("Mixtral-8x7B", 4096, 14336, 32, 32, 8, 32000, experts=8, experts_per_token=2),
    "8x22B": DecoderShape("Mixtral-8x22B", 6144, 16384, 56, 48, 8, 32768, experts=8, experts_per_token=2),
})  # fmt: skip
