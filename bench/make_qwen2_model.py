"""Build a randomly initialised Qwen2-architecture model of ~0.5B parameters for benchmarks.

    python bench/make_qwen2_model.py [out_dir]      # default: $TUNEFORGE_CACHE/models/qwen2-0.5b-random

The shape is Qwen2.5-0.5B's published config (hidden 896, 24 layers, 14 heads / 2 KV heads,
intermediate 4864, vocabulary 151936, tied embeddings); the weights are random (speed and memory
do not depend on them). The tokenizer is the demo model's (its ids fit in the larger vocabulary),
so the model trains on the same data as the demo model without any download.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

QWEN2_05B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def default_dir() -> Path:
    from tuneforge.model.demo import cache_root

    return cache_root() / "models" / "qwen2-0.5b-random"


def build_random_qwen2(out_dir: Path | None = None, seed: int = 0) -> Path:
    """Create the model folder once (config, random fp32 weights, demo tokenizer); return its path."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from tuneforge.model.demo import ensure_demo_model

    out = Path(out_dir) if out_dir else default_dir()
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    demo = ensure_demo_model()
    config = Qwen2Config(**{k: v for k, v in QWEN2_05B_CONFIG.items() if k not in ("architectures", "model_type")})
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name in TOKENIZER_FILES:  # keep the demo's chat template file exactly
        if (demo / name).exists() and not (tmp / name).exists():
            shutil.copy(demo / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    print(build_random_qwen2(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
