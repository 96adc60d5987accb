"""A lean one-token decode step for Llama-style decoders (Llama, Qwen2, Mistral).

At batch size 1 a small model's decode step is dominated by Python: transformers' forward makes
~100 module calls and checks per layer (about 15 ms per token for 30 layers on this CPU, the whole
budget for 60 tokens/s). This step runs the same arithmetic with the model's own weights, as flat
tensor ops: the same op sequence as transformers' SDPA code, so float32 logits are bit-identical.
(bf16/fp16 weights on a CPU: attention runs in float32, see ``attn_dtype``.)

Anything unusual (LoRA layers not merged, quantized linears, sliding windows, other attention
backends, offload hooks) makes ``LeanDecodeStep.try_create`` return None and the engine uses the
model's own forward.

With ``weights_dtype`` the matrix-vector products read fused half-size copies of the weights
(``auto_decode_weights_dtype``: float16 for a float32 model on a CPU, 2x the tokens/s).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tuneforge.infer.decoding import GrowableLayer
from tuneforge.infer.slot_cache import SlotKVCache
from tuneforge.model.attention import PACKED_SDPA

_SUPPORTED = {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"}


@dataclass
class _Layer:
    in_norm: torch.Tensor
    post_norm: torch.Tensor
    q: tuple[torch.Tensor, torch.Tensor | None]
    k: tuple[torch.Tensor, torch.Tensor | None] | None  # None: fused into q
    v: tuple[torch.Tensor, torch.Tensor | None] | None
    o: tuple[torch.Tensor, torch.Tensor | None]
    gate: tuple[torch.Tensor, torch.Tensor | None]
    up: tuple[torch.Tensor, torch.Tensor | None] | None  # None: fused into gate
    down: tuple[torch.Tensor, torch.Tensor | None]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Same ops as LlamaRMSNorm / Qwen2RMSNorm (fp32 statistics, cast back, then the weight).
    dtype = x.dtype
    x = x.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    return weight * x.to(dtype)


def _plain_linear(x: torch.Tensor, weight_and_bias) -> torch.Tensor:
    return F.linear(x, *weight_and_bias)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LeanDecodeStep:
    """``step(token_id_tensor[1,1], cache, position) -> logits[vocab]`` for one new token."""

    def __init__(self, model, *, weights_dtype: torch.dtype | None = None, batch_weights_dtype: torch.dtype | None = None):
        config = model.config
        self.model = model
        self.rotary = model.model.rotary_emb
        self.embed = model.model.embed_tokens.weight
        self.final_norm = model.model.norm.weight
        # Decode reads every linear weight once per token, so its speed is memory bandwidth: with
        # `weights_dtype` (fp16 for a float32 model on a CPU) the step keeps half-size copies of the
        # linear weights and runs only the matrix-vector products in it; the residual stream,
        # norms, RoPE and attention stay in the model's dtype (prefill uses the model itself).
        self.weights_dtype = weights_dtype if weights_dtype not in (None, self.embed.dtype) else None
        self.lm_head = self._weights(model.lm_head, dtype=self.weights_dtype)
        self.eps = float(config.rms_norm_eps)
        first = model.model.layers[0].self_attn
        self.head_dim = first.head_dim
        self.scaling = float(first.scaling)
        self.gqa = config.num_attention_heads != config.num_key_value_heads
        self.qkv_widths = [first.q_proj.out_features, first.k_proj.out_features, first.v_proj.out_features]
        decoder_layers = model.model.layers[: config.num_hidden_layers]
        self.layers = [self._layer(layer, self.weights_dtype) for layer in decoder_layers]
        # Several sequences at once (`step_batch`) are matrix products, not matrix-vector ones, still bound by
        # reading the weights: with `batch_weights_dtype` (bf16 under `auto` on a CPU: oneDNN has bf16 matrix
        # products, fp16 ones are slow on AVX2) they read half-size copies, made at the first batch; without,
        # the model's own weights (float32: batched greedy answers are those of float32).
        self.batch_weights_dtype = batch_weights_dtype if batch_weights_dtype not in (None, self.embed.dtype) else None
        self._decoder_layers = decoder_layers
        self._batch_weights: tuple | None = None
        self.kv_heads = config.num_key_value_heads
        self._position = torch.zeros((1, 1), dtype=torch.long, device=self.embed.device)
        # On a CPU, SDPA in bf16/fp16 is 4-6x slower than in float32 (no native half kernels on
        # AVX2): for long answers it would cost more than the weights. There the KV cache is kept in
        # float32 and attention runs in float32, a little more precise than the model's own forward.
        half_on_cpu = self.embed.device.type == "cpu" and self.embed.dtype in (torch.bfloat16, torch.float16)
        self.attn_dtype = torch.float32 if half_on_cpu else self.embed.dtype

    @staticmethod
    def _weights(*linears, dtype: torch.dtype | None):
        """(weight, bias) of a linear layer; with `dtype`, one half-size copy of several
        layers that read the same input stacked (q|k|v, gate|up: one matrix-vector product)."""
        if dtype is None:
            return linears[0].weight, linears[0].bias
        weights = [lin.weight.detach() for lin in linears]
        weight = (torch.cat(weights) if len(weights) > 1 else weights[0]).to(dtype)
        biases = [lin.bias for lin in linears]
        if all(b is None for b in biases):
            return weight, None
        bias = torch.cat([b.detach() if b is not None else torch.zeros(lin.out_features, dtype=lin.weight.dtype,
                          device=lin.weight.device) for b, lin in zip(biases, linears)])
        return weight, bias.to(dtype)

    def _layer(self, layer, dtype: torch.dtype | None) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp

        def wb(*linears):
            return self._weights(*linears, dtype=dtype)

        if dtype is None:
            return _Layer(layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                          wb(attn.q_proj), wb(attn.k_proj), wb(attn.v_proj), wb(attn.o_proj),
                          wb(mlp.gate_proj), wb(mlp.up_proj), wb(mlp.down_proj))
        # fused: `q` holds q|k|v and `gate` holds gate|up; `k`, `v`, `up` stay None
        return _Layer(layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                      wb(attn.q_proj, attn.k_proj, attn.v_proj), None, None, wb(attn.o_proj),
                      wb(mlp.gate_proj, mlp.up_proj), None, wb(mlp.down_proj))

    @staticmethod
    def _linear(x: torch.Tensor, weight_and_bias) -> torch.Tensor:
        weight, bias = weight_and_bias
        return F.linear(x.to(weight.dtype), weight, bias).to(x.dtype)

    @classmethod
    def try_create(cls, model, *, weights_dtype: torch.dtype | None = None,
                   batch_weights_dtype: torch.dtype | None = None) -> "LeanDecodeStep | None":
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
        return cls(model, weights_dtype=weights_dtype, batch_weights_dtype=batch_weights_dtype)

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
        linear = self._linear if self.weights_dtype is not None else _plain_linear

        def attend(index, q, k, v):
            keys, values = cache.layers[index].update(k, v)
            return q, keys, values, None

        return self._forward(token, self._position, self.layers, self.lm_head, linear, attend)[0, -1]

    def step_batch(self, tokens: torch.Tensor, cache) -> torch.Tensor:
        """Logits ``[n, vocab]`` for the next token ``tokens[i]`` of each of the n sequences of ``cache``
        (a ``SlotKVCache``, slot i), each at its own position; appends their keys/values."""
        positions, mask = cache.begin_step()
        alone = cache.count == 1  # one sequence: the matrix-vector step of `step` (its weights, no mask)

        def attend(index, q, k, v):
            keys, values = cache.write(index, k, v)
            return q, keys, values, None if alone else mask

        if alone and self.weights_dtype is not None:
            layers, lm_head, linear = self.layers, self.lm_head, self._linear
        else:
            if self._batch_weights is None:
                self._batch_weights = self._make_batch_weights()
            layers, lm_head, linear = self._batch_weights
        logits = self._forward(tokens.view(-1, 1), positions.view(-1, 1), layers, lm_head, linear, attend)
        cache.end_step()
        return logits[:, -1]

    def _make_batch_weights(self) -> tuple:
        """(layers, lm_head, linear) for `step_batch`: the model's weights, or `batch_weights_dtype` copies --
        bf16 ones on a CPU in oneDNN's own blocked layout when it gives F.linear's exact results (checked on the
        first layer): unpacked, every product lays the weight out again (8 streams: 28.8 -> 15.0 ms of products
        per step on the demo model)."""
        dtype = self.batch_weights_dtype
        layers = [self._layer(layer, dtype) for layer in self._decoder_layers]
        lm_head = self._weights(self.model.lm_head, dtype=dtype)
        if dtype is None:
            return layers, lm_head, _plain_linear
        if dtype == torch.bfloat16 and self.embed.device.type == "cpu" and _prepacking_is_exact(layers[0].q):
            pack = _prepacked
            layers = [_Layer(layer.in_norm, layer.post_norm, *(pack(w) if w is not None else None for w in
                             (layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down)))
                      for layer in layers]
            return layers, pack(lm_head), _packed_linear
        return layers, lm_head, self._linear

    def _forward(self, tokens, positions, layers, lm_head, linear, attend) -> torch.Tensor:
        """The decoder on ``tokens [n, 1]``; ``attend(layer index, q, k, v)`` stores k/v in the cache and returns
        what attention reads: (q, keys, values, mask or None)."""
        hidden = F.embedding(tokens, self.embed)
        n = hidden.shape[0]
        cos, sin = self.rotary(hidden, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        eps, head_dim = self.eps, self.head_dim
        sdpa_kwargs = {"enable_gqa": True} if self.gqa else {}
        attn_dtype = self.attn_dtype
        cast = attn_dtype != hidden.dtype
        for index, layer in enumerate(layers):
            x = _rms_norm(hidden, layer.in_norm, eps)
            if layer.k is None:
                q, k, v = linear(x, layer.q).split(self.qkv_widths, dim=-1)
            else:
                q, k, v = linear(x, layer.q), linear(x, layer.k), linear(x, layer.v)
            q = q.view(n, 1, -1, head_dim).transpose(1, 2)
            k = k.view(n, 1, -1, head_dim).transpose(1, 2)
            v = v.view(n, 1, -1, head_dim).transpose(1, 2)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            if cast:
                q, k, v = q.to(attn_dtype), k.to(attn_dtype), v.to(attn_dtype)
            q, keys, values, mask = attend(index, q, k, v)
            attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=0.0,
                                                  scale=self.scaling, is_causal=False, **sdpa_kwargs)
            attn = attn.transpose(1, 2).contiguous().reshape(n, 1, -1)
            if cast:
                attn = attn.to(hidden.dtype)
            hidden = hidden + linear(attn, layer.o)
            x = _rms_norm(hidden, layer.post_norm, eps)
            if layer.up is None:
                gate, up = linear(x, layer.gate).chunk(2, dim=-1)
            else:
                gate, up = linear(x, layer.gate), linear(x, layer.up)
            hidden = hidden + linear(F.silu(gate) * up, layer.down)
        hidden = _rms_norm(hidden, self.final_norm, eps)
        return linear(hidden, lm_head)

    def new_slot_cache(self) -> SlotKVCache:
        return SlotKVCache(len(self.layers), self.kv_heads, self.head_dim, self.attn_dtype, self.embed.device)


def _prepacked(weight_and_bias):
    weight, bias = weight_and_bias
    return torch.ops.mkldnn._reorder_linear_weight(weight, PACK_BATCH_HINT), bias


def _packed_linear(x: torch.Tensor, packed_and_bias) -> torch.Tensor:
    packed, bias = packed_and_bias
    return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), packed, bias, "none", [], "").to(x.dtype)


PACK_BATCH_HINT = 8  # oneDNN lays the weight out for about this many rows; any count works (same results)


def _prepacking_is_exact(weight_and_bias) -> bool:
    """oneDNN's prepacked bf16 product gives `F.linear`'s results on this weight for 1, 3 and 8 rows (private ops:
    absent or different in another torch, the plain copies are used)."""
    try:
        packed = _prepacked(weight_and_bias)
        probe = torch.randn(8, 1, weight_and_bias[0].shape[1], generator=torch.Generator().manual_seed(0))
        return all(torch.equal(_packed_linear(probe[:n], packed), LeanDecodeStep._linear(probe[:n], weight_and_bias))
                   for n in (1, 3, 8))
    except (AttributeError, RuntimeError):
        return False


def auto_batch_weights_dtype(model, infer_dtype: str | None = "auto") -> torch.dtype | None:
    """bfloat16 weights for batched decode steps of a float32 model on a CPU under `infer_dtype: auto` (when
    copies fit, as for `auto_decode_weights_dtype`), else None. Measured on the demo model, 8 streams: 83 tokens/s
    with float32 weights, 116 with bfloat16 copies (bench/bench_batch_decode.py)."""
    if auto_decode_weights_dtype(model, infer_dtype) is None or not torch.backends.mkldnn.is_available():
        return None
    return torch.bfloat16


def auto_decode_weights_dtype(model, infer_dtype: str | None = "auto") -> torch.dtype | None:
    """float16 decode weights for a float32 model on a CPU under `infer_dtype: auto`, else None.

    Measured on the demo model (2-core AVX2 CPU, bench/bench_generate.py): 20.8 tokens/s with
    float32 weights, 42.8 with float16 copies (38.4 with bfloat16 weights, whose 8-bit mantissa
    also changes greedy answers sooner). The copies cost half the model's size, so they are made
    only while that is under a quarter of the free RAM. `infer_dtype: float32` keeps exact fp32.
    """
    if infer_dtype not in (None, "auto"):
        return None
    params = list(model.parameters())
    if not params or params[0].device.type != "cpu" or params[0].dtype != torch.float32:
        return None
    import psutil

    copy_bytes = sum(p.numel() for p in params) * 2
    return torch.float16 if copy_bytes < 0.25 * psutil.virtual_memory().available else None
