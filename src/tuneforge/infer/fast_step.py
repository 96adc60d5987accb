"""A lean one-token decode step for Llama-style decoders (Llama, Qwen2, Mistral).

At batch size 1 a small model's decode step is dominated by Python: transformers' forward makes
~100 module calls and checks per layer (about 15 ms per token for 30 layers on this CPU, the whole
budget for 60 tokens/s). This step runs the same arithmetic with the model's own weights, as flat
tensor ops: the same op sequence as transformers' SDPA code, so float32 logits are bit-identical.
(bf16/fp16 weights on a CPU: attention runs in float32, see ``attn_dtype``.)

Anything unusual (LoRA layers not merged, quantized linears, sliding windows, other attention
backends, offload hooks) makes ``LeanDecodeStep.try_create`` return None and the engine uses the
model's own forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tuneforge.infer.decoding import GrowableLayer
from tuneforge.model.attention import PACKED_SDPA

_SUPPORTED = {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"}


@dataclass
class _Layer:
    in_norm: torch.Tensor
    post_norm: torch.Tensor
    q: tuple[torch.Tensor, torch.Tensor | None]
    k: tuple[torch.Tensor, torch.Tensor | None]
    v: tuple[torch.Tensor, torch.Tensor | None]
    o: tuple[torch.Tensor, torch.Tensor | None]
    gate: tuple[torch.Tensor, torch.Tensor | None]
    up: tuple[torch.Tensor, torch.Tensor | None]
    down: tuple[torch.Tensor, torch.Tensor | None]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Same ops as LlamaRMSNorm / Qwen2RMSNorm (fp32 statistics, cast back, then the weight).
    dtype = x.dtype
    x = x.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    return weight * x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LeanDecodeStep:
    """``step(token_id_tensor[1,1], cache, position) -> logits[vocab]`` for one new token."""

    def __init__(self, model):
        config = model.config
        self.model = model
        self.rotary = model.model.rotary_emb
        self.embed = model.model.embed_tokens.weight
        self.final_norm = model.model.norm.weight
        self.lm_head = (model.lm_head.weight, model.lm_head.bias)
        self.eps = float(config.rms_norm_eps)
        self.head_dim = model.model.layers[0].self_attn.head_dim
        self.scaling = float(model.model.layers[0].self_attn.scaling)
        self.gqa = config.num_attention_heads != config.num_key_value_heads
        self.layers = [self._layer(layer) for layer in model.model.layers[: config.num_hidden_layers]]
        self._position = torch.zeros((1, 1), dtype=torch.long, device=self.embed.device)
        # On a CPU, SDPA in bf16/fp16 is 4-6x slower than in float32 (no native half kernels on
        # AVX2): for long answers it would cost more than the weights. There the KV cache is kept in
        # float32 and attention runs in float32, a little more precise than the model's own forward.
        half_on_cpu = self.embed.device.type == "cpu" and self.embed.dtype in (torch.bfloat16, torch.float16)
        self.attn_dtype = torch.float32 if half_on_cpu else self.embed.dtype

    @staticmethod
    def _layer(layer) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp

        def wb(linear):
            return linear.weight, linear.bias

        return _Layer(layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                      wb(attn.q_proj), wb(attn.k_proj), wb(attn.v_proj), wb(attn.o_proj),
                      wb(mlp.gate_proj), wb(mlp.up_proj), wb(mlp.down_proj))

    @classmethod
    def try_create(cls, model) -> "LeanDecodeStep | None":
        """The lean step when ``model`` is a plain supported architecture, else None."""
        if type(model).__name__ not in _SUPPORTED or model.training:
            return None
        config = model.config
        if getattr(config, "_attn_implementation", None) not in ("sdpa", PACKED_SDPA) or config.hidden_act != "silu":
            return None
        if getattr(config, "pretraining_tp", 1) != 1 or getattr(model, "hf_quantizer", None) is not None:
            return None
        layer_types = getattr(config, "layer_types", None) or ["full_attention"]
        if any(t != "full_attention" for t in layer_types):
            return None
        if type(model).__name__ == "MistralForCausalLM" and getattr(config, "sliding_window", None):
            return None
        for module in model.modules():
            if hasattr(module, "_hf_hook") or module._forward_hooks or module._forward_pre_hooks:
                return None  # accelerate offload / user hooks expect the module to be called
        if type(model.lm_head) is not torch.nn.Linear or type(model.model.embed_tokens) is not torch.nn.Embedding:
            return None
        for layer in model.model.layers:
            if {n for n, _ in layer.named_children()} != {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}:
                return None
            attn, mlp = layer.self_attn, layer.mlp
            projections = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
            projections += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
            # Exactly nn.Linear: a LoRA / quantized layer (PEFT's are not nn.Linear subclasses but do
            # expose .weight) must run its own forward, or its contribution would be silently lost.
            if any(type(p) is not torch.nn.Linear for p in projections):
                return None
            if {n for n, _ in attn.named_children()} != {"q_proj", "k_proj", "v_proj", "o_proj"}:
                return None
        return cls(model)

    def prepare_cache(self, cache) -> bool:
        """After the prefill: True when ``cache`` can be used (cast to the attention dtype if needed)."""
        if len(cache.layers) != len(self.layers) or any(type(layer) is not GrowableLayer for layer in cache.layers):
            return False
        for layer in cache.layers:
            layer.cast_(self.attn_dtype)
        return True

    def step(self, token: torch.Tensor, cache, position: int) -> torch.Tensor:
        """Logits ``[vocab]`` for ``token`` at ``position``; appends its keys/values to ``cache``."""
        self._position.fill_(position)
        hidden = F.embedding(token, self.embed)
        cos, sin = self.rotary(hidden, self._position)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        eps, head_dim = self.eps, self.head_dim
        sdpa_kwargs = {"enable_gqa": True} if self.gqa else {}
        attn_dtype = self.attn_dtype
        cast = attn_dtype != hidden.dtype
        for layer, kv in zip(self.layers, cache.layers):
            x = _rms_norm(hidden, layer.in_norm, eps)
            q = F.linear(x, *layer.q).view(1, 1, -1, head_dim).transpose(1, 2)
            k = F.linear(x, *layer.k).view(1, 1, -1, head_dim).transpose(1, 2)
            v = F.linear(x, *layer.v).view(1, 1, -1, head_dim).transpose(1, 2)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            if cast:
                q, k, v = q.to(attn_dtype), k.to(attn_dtype), v.to(attn_dtype)
            keys, values = kv.update(k, v)
            attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=None, dropout_p=0.0,
                                                  scale=self.scaling, is_causal=False, **sdpa_kwargs)
            attn = attn.transpose(1, 2).contiguous().reshape(1, 1, -1)
            if cast:
                attn = attn.to(hidden.dtype)
            hidden = hidden + F.linear(attn, *layer.o)
            x = _rms_norm(hidden, layer.post_norm, eps)
            hidden = hidden + F.linear(F.silu(F.linear(x, *layer.gate)) * F.linear(x, *layer.up), *layer.down)
        hidden = _rms_norm(hidden, self.final_norm, eps)
        return F.linear(hidden, *self.lm_head)[0, -1]
