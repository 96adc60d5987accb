"""GGUF export (export_gguf.py): the file transformers reads back (`gguf_file=`) gives the source model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tuneforge.errors import NotSupportedError

REPO = Path(__file__).resolve().parent.parent
PROBE = "The quick brown fox jumps over the lazy dog. 1234 + 5678 = 6912! Über café naïve."


def _export(tmp_path, model_dir, gguf_type, name="gguf"):
    from tuneforge.cli.main import main

    out = tmp_path / name
    assert main(["export", f"model_name_or_path={model_dir}", "template=chatml", f"export_dir={out}",
                 "export_format=gguf", f"gguf_type={gguf_type}"]) == 0
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    gguf_files = [f for f in files if f.endswith(".gguf")]
    assert len(gguf_files) == 1 and "Modelfile" in files
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{gguf_files[0]}\n") and "<|im_start|>" in modelfile
    return out, gguf_files[0]


def _logits(model, tokenizer):
    ids = tokenizer(PROBE, return_tensors="pt").input_ids
    with torch.inference_mode():
        return model(input_ids=ids).logits[0].float()


def _qwen3_dir(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=128, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tiny_tokenizer.bos_token_id,
                         eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id)
    torch.manual_seed(0)
    out = tmp_path / "tiny_qwen3"
    Qwen3ForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_tokenizer_dir).save_pretrained(out)
    return out


@pytest.mark.parametrize("fixture_dir", ["tiny_llama_dir", "tiny_qwen2_dir", "qwen3"])
@pytest.mark.parametrize("gguf_type", ["f32", "f16", "q8_0"])
def test_gguf_reloads_with_the_source_logits(request, tmp_path, fixture_dir, gguf_type, tiny_tokenizer_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = (_qwen3_dir(tmp_path, tiny_tokenizer_dir, tiny_tokenizer) if fixture_dir == "qwen3"
              else request.getfixturevalue(fixture_dir))
    out, name = _export(tmp_path, source, gguf_type)
    original = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    if fixture_dir == "tiny_llama_dir":  # transformers reads a qwen GGUF's tokens with Qwen's own pre-tokenizer
        assert AutoTokenizer.from_pretrained(out, gguf_file=name)(PROBE).input_ids == tokenizer(PROBE).input_ids
    want, got = _logits(original, tokenizer), _logits(reloaded, tokenizer)
    scale = want.abs().max().item()
    if gguf_type == "f32":
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * scale)
    elif gguf_type == "f16":
        torch.testing.assert_close(got, want, rtol=0, atol=5e-3 * scale)
    else:
        assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.95  # q8_0: random tiny logits are near-ties


def test_gguf_metadata_and_names(tmp_path, tiny_llama_dir):
    from gguf import GGUFReader

    out, name = _export(tmp_path, tiny_llama_dir, "q8_0")
    reader = GGUFReader(out / name)
    fields = {key: field.contents() for key, field in reader.fields.items()
              if key not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")}
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == config["num_hidden_layers"]
    assert fields["llama.attention.head_count_kv"] == config["num_key_value_heads"]
    assert fields["tokenizer.ggml.model"] == "gpt2" and "<|im_start|>" in fields["tokenizer.chat_template"]
    names = {t.name: t.tensor_type.name for t in reader.tensors}
    assert names["token_embd.weight"] == "Q8_0" and names["blk.0.attn_q.weight"] == "Q8_0"
    assert names["blk.1.ffn_norm.weight"] == "F32" and "output.weight" in names  # untied head


def test_unsupported_architecture_is_named(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tuneforge.export_gguf import check_gguf_support

    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(NotSupportedError, match="supports the Llama, Qwen2 and Qwen3 architectures; this model is `gpt2`"):
        check_gguf_support(model.config, tiny_tokenizer)


@pytest.mark.demo
def test_demo_model_gguf_matches(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.model import ensure_demo_model

    source = ensure_demo_model()
    tokenizer = AutoTokenizer.from_pretrained(source)
    # the README's opening as it was when bench/RESULTS.md section 12 was measured, kept as a file so that editing
    # the README does not move the measured agreement
    text = (REPO / "tests" / "data" / "gguf_probe.txt").read_text(encoding="utf-8")
    probe = torch.tensor([tokenizer(text).input_ids[:1024]])

    def logits(model):
        with torch.inference_mode():
            return model(input_ids=probe).logits[0].float()

    want = logits(AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval())
    for gguf_type in ("f16", "q8_0"):
        out, name = _export(tmp_path, source, gguf_type, gguf_type)
        if gguf_type == "f16":  # the tokenizer's metadata does not depend on gguf_type (read back: ~9 s a file)
            assert AutoTokenizer.from_pretrained(out, gguf_file=name)(PROBE).input_ids == tokenizer(PROBE).input_ids
        got = logits(AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval())
        agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
        if gguf_type == "f16":  # float16 rounding of the weights: a few thousandths of the logits' range
            torch.testing.assert_close(got, want, rtol=0, atol=5e-3 * want.abs().max().item())
        # next-token agreement on those 1,024 tokens: f16 99.9%, q8_0 98.3% (this 135M model is more
        # sensitive to 8-bit weights than large ones; the q8_0 file is byte for byte llama.cpp's own converter's:
        # bench/check_gguf_reference.py, bench/RESULTS.md section 12)
        assert agree >= (0.995 if gguf_type == "f16" else 0.98), (gguf_type, agree)
        print(f"{gguf_type}: max |logit difference| {(got - want).abs().max().item():.4f} (logits up to "
              f"{want.abs().max().item():.1f}), top-1 agreement {agree:.4f} over {len(want)} positions")
