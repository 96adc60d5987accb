"""GGUF export (`export_format: gguf`, `gguf_type: f16 | bf16 | q8_0 | f32`): one .gguf file that llama.cpp,
Ollama and LM Studio load, written with the `gguf` package (no llama.cpp checkout, no compiler).

Architectures: Llama (the demo model), Qwen2 / Qwen2.5, Qwen3, with byte-level BPE tokenizers (SmolLM, Qwen,
Llama 3). Tensor names and layouts are llama.cpp's: `token_embd`, `blk.N.attn_q` ..., `output_norm`, `output`
(left out when the embeddings are tied); Llama's q/k rows are permuted from Hugging Face's rotate-half order to
llama.cpp's interleaved one (Qwen uses NEOX rotary in llama.cpp: no permutation). 1-D tensors (norms, biases)
stay float32, as llama.cpp's converter writes them. Metadata: hyper-parameters, tokens, merges, token types,
special ids and the chat template.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from tuneforge.errors import NotSupportedError

logger = logging.getLogger(__name__)

GGUF_TYPES = ("f16", "bf16", "q8_0", "f32")
_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}  # HF model_type -> GGUF architecture
_LAYER_TENSORS = {  # HF name inside `model.layers.N.` -> llama.cpp name inside `blk.N.`
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}  # fmt: skip
_GLOBAL_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                   "lm_head.weight": "output.weight"}


def gguf_file_name(model_source: str, gguf_type: str) -> str:
    """`<model folder name>-<gguf_type>.gguf`, with only letters, digits, `.`, `_` and `-` in it."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(model_source).rstrip("/")).name).strip("-.") or "model"
    return f"{stem}-{gguf_type}.gguf"


def check_gguf_support(config, tokenizer, bpe_model: dict | None = None) -> str:
    """The GGUF architecture name, or NotSupportedError naming what is missing (`bpe_model`: `tokenizer_model`,
    when the caller has it already)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _ARCHITECTURES:
        raise NotSupportedError(f"GGUF export supports the Llama, Qwen2 and Qwen3 architectures; this model is "
                                f"`{model_type}`. Export safetensors (export_format: safetensors) and convert it "
                                "with llama.cpp's convert_hf_to_gguf.py")
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
    if kind not in (None, "default", "linear"):
        raise NotSupportedError(f"GGUF export of a model with rope_scaling type `{kind}` is not supported yet "
                                "(linear scaling is); convert with llama.cpp's convert_hf_to_gguf.py")
    vocab = tokenizer.get_vocab()
    byte_level = "Ġ" in vocab or "Ġthe" in vocab  # GPT-2's byte alphabet
    bpe_model = tokenizer_model(tokenizer) if bpe_model is None else bpe_model
    if bpe_model.get("type") != "BPE" or not byte_level:
        raise NotSupportedError("GGUF export supports byte-level BPE tokenizers (Qwen, SmolLM, Llama 3); this "
                                "tokenizer is not one (SentencePiece?); convert with llama.cpp's convert_hf_to_gguf.py")
    return _ARCHITECTURES[model_type]


def tokenizer_model(tokenizer) -> dict:
    """The `model` part of a fast tokenizer's tokenizer.json (type, vocab, merges); {} for a slow tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str())["model"] if backend is not None else {}


def _pre_tokenizer(model_type: str, vocab_size: int) -> str:
    """llama.cpp's pre-tokenizer name (it picks the regex that splits text before BPE)."""
    if model_type in ("qwen2", "qwen3"):
        return "qwen2"
    if vocab_size == 49152:
        return "smollm"
    if vocab_size >= 128000:
        return "llama-bpe"
    logger.warning("GGUF export: unknown BPE tokenizer family; llama.cpp will use its default pre-tokenizer")
    return "default"


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rotate-half q/k rows -> llama.cpp's interleaved pairs (its convert_hf_to_gguf `permute`)."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _tensor_names(state: dict, tied: bool):
    for name in state:
        if name in _GLOBAL_TENSORS:
            if not (name == "lm_head.weight" and tied):
                yield name, _GLOBAL_TENSORS[name]
            continue
        parts = name.split(".", 3)  # model, layers, N, rest
        if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER_TENSORS:
            yield name, f"blk.{parts[2]}.{_LAYER_TENSORS[parts[3]]}"
        elif not name.endswith("rotary_emb.inv_freq"):
            raise NotSupportedError(f"GGUF export: no llama.cpp name for tensor `{name}`")


def _add_tokenizer(writer, tokenizer, model_type: str, vocab_size: int, chat_template: str | None,
                   merges: list) -> None:
    import gguf

    vocab = tokenizer.get_vocab()
    by_id = {i: token for token, i in vocab.items()}
    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(vocab_size):  # the embedding may have more rows than the tokenizer has tokens (Qwen)
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            spec = added.get(token)
            types.append(gguf.TokenType.NORMAL if spec is None else
                         gguf.TokenType.CONTROL if spec.special else gguf.TokenType.USER_DEFINED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(model_type, len(vocab)))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            add(int(token_id))
    probe = tokenizer("a").input_ids
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    if chat_template:
        writer.add_chat_template(chat_template)


def write_gguf(model, tokenizer, path: Path, gguf_type: str, *, name: str, chat_template: str | None) -> Path:
    """Write `model` (float32 weights) and `tokenizer` as one GGUF file at `path`."""
    import gguf
    import torch

    config = model.config
    bpe_model = tokenizer_model(tokenizer)  # tokenizer.json parsed once (megabytes for a 150k vocabulary)
    arch = check_gguf_support(config, tokenizer, bpe_model)
    kinds = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(heads))
    writer.add_head_count_kv(int(kv_heads))
    writer.add_key_length(int(head_dim))
    writer.add_value_length(int(head_dim))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_rope_dimension_count(int(head_dim))
    scaling = getattr(config, "rope_scaling", None) or {}
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    vocab_size = model.get_input_embeddings().weight.shape[0]
    writer.add_vocab_size(int(vocab_size))
    writer.add_file_type(file_types[gguf_type])
    _add_tokenizer(writer, tokenizer, config.model_type, vocab_size, chat_template,
                   bpe_model.get("merges", []))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    state = model.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, gguf_name in _tensor_names(state, tied):
        data = state[hf_name].detach().to(torch.float32).cpu().numpy()
        if arch == "llama" and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            data = _permute(data, heads if gguf_name.endswith("attn_q.weight") else kv_heads)
        kind = kinds[gguf_type] if data.ndim == 2 else gguf.GGMLQuantizationType.F32
        if kind == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
            kind = gguf.GGMLQuantizationType.F16  # Q8_0 blocks are 32 values along a row
        if kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gguf_name, data.astype(np.float16))
        elif kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name, np.ascontiguousarray(data))
        else:
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
