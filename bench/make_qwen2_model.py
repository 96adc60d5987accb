"""Build a randomly initialised Qwen2-architecture model of ~0.5B parameters for benchmarks.

    python bench/make_qwen2_model.py [out_dir]      # default: $TUNEFORGE_CACHE/models/qwen2-0.5b-random
    python bench/make_qwen2_model.py out_dir --tokenizer DIR [--tiny]

The shape is Qwen2.5-0.5B's published config (hidden 896, 24 layers, 14 heads / 2 KV heads,
intermediate 4864, vocabulary 151936, tied embeddings); the weights are random (speed and memory
do not depend on them). The tokenizer is the demo model's (its ids fit in the larger vocabulary),
so the model trains on the same data as the demo model without any download; `--tokenizer DIR` takes
the tokenizer files from DIR instead (a machine without the demo model: bench/gpu_check.sh), and
`--tiny` builds a 2-layer model of the same architecture (a quick check of a script's logic).
"""

from __future__ import annotations

import shutil
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
TINY_CONFIG = {**QWEN2_05B_CONFIG, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def default_dir() -> Path:
    from tuneforge.model.demo import cache_root

    return cache_root() / "models" / "qwen2-0.5b-random"


def build_random_qwen2(out_dir: Path | None = None, seed: int = 0, *, tokenizer_dir: Path | None = None,
                       tiny: bool = False) -> Path:
    """Create the model folder once (config, random fp32 weights, the demo's or `tokenizer_dir`'s
    tokenizer); return its path."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from tuneforge.model.demo import ensure_demo_model

    out = Path(out_dir) if out_dir else default_dir()
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    demo = Path(tokenizer_dir) if tokenizer_dir else ensure_demo_model()
    shape = TINY_CONFIG if tiny else QWEN2_05B_CONFIG
    config = Qwen2Config(**{k: v for k, v in shape.items() if k not in ("architectures", "model_type")})
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
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=None)
    parser.add_argument("--tokenizer", type=Path, default=None, help="folder with the tokenizer files")
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 64 (logic checks only)")
    cli = parser.parse_args()
    print(build_random_qwen2(cli.out_dir, tokenizer_dir=cli.tokenizer, tiny=cli.tiny))
