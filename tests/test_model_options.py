"""LLaMA-Factory's smaller model keys, each with its effect: `train_from_scratch`, `upcast_layernorm`,
`upcast_lmhead_output`, `print_param_status`, `moe_aux_loss_coef`."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import _save_tiny_model, _tiny_config_kwargs
from tuneforge.config.args import FinetuningArguments, ModelArguments
from tuneforge.errors import ConfigError
from tuneforge.model.loader import load_model

FULL = FinetuningArguments(finetuning_type="full")


def _load(model_dir, finetuning=FULL, *, is_trainable=True, compute_dtype=None, **model_keys):
    return load_model(ModelArguments(model_name_or_path=str(model_dir), **model_keys), finetuning,
                      is_trainable=is_trainable, compute_dtype=compute_dtype)


def test_train_from_scratch_keeps_the_architecture_and_draws_new_weights(tiny_llama_dir):
    saved = load_file(tiny_llama_dir / "model.safetensors")
    torch.manual_seed(1)
    scratch = _load(tiny_llama_dir, train_from_scratch=True).state_dict()
    assert {name: t.shape for name, t in scratch.items()} == {name: t.shape for name, t in saved.items()}
    weight = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(scratch[weight], saved[weight])
    torch.manual_seed(1)  # the run's seed decides them, as LF's from_config does
    assert torch.equal(_load(tiny_llama_dir, train_from_scratch=True).state_dict()[weight], scratch[weight])
    assert torch.equal(_load(tiny_llama_dir).state_dict()[weight], saved[weight])


def test_train_from_scratch_with_quantization_is_refused():
    from tuneforge.config.parser import load_config_dict

    with pytest.raises(ConfigError, match="nothing to quantize; remove `quantization_bit`"):
        load_config_dict({"model_name_or_path": "m", "train_from_scratch": True, "quantization_bit": 4})


def test_upcast_layernorm_and_lmhead_output_on_a_bfloat16_model(tiny_llama_dir):
    lora = FinetuningArguments(finetuning_type="lora", lora_target="all")
    plain = _load(tiny_llama_dir, lora, compute_dtype=torch.bfloat16, infer_dtype="bfloat16")
    model = _load(tiny_llama_dir, lora, compute_dtype=torch.bfloat16, infer_dtype="bfloat16", upcast_layernorm=True,
                  upcast_lmhead_output=True)
    norms = {n: p.dtype for n, p in model.named_parameters() if p.ndim == 1 and "norm" in n}
    assert len(norms) == 2 * 2 + 1 and set(norms.values()) == {torch.float32}  # 2 per layer + the final norm
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16  # nothing else cast
    assert {p.dtype for n, p in plain.named_parameters() if "norm" in n} == {torch.bfloat16}
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # as a bf16 training step runs
        assert model(ids).logits.dtype == torch.float32 and plain(ids).logits.dtype == torch.bfloat16


def test_print_param_status_prints_lf_lines(tiny_llama_dir, capsys):
    _load(tiny_llama_dir, print_param_status=True)
    lines = capsys.readouterr().out.splitlines()
    assert "name: model.embed_tokens.weight, dtype: torch.float32, device: cpu, trainable: True" in lines
    assert len(lines) == len(list(_load(tiny_llama_dir).named_parameters()))


@pytest.fixture(scope="module")
def tiny_moe_dir(tmp_path_factory, tiny_tokenizer_dir, tiny_tokenizer):
    from transformers import Qwen3MoeConfig

    config = Qwen3MoeConfig(**_tiny_config_kwargs(tiny_tokenizer), num_experts=4, num_experts_per_tok=2,
                            moe_intermediate_size=32, decoder_sparse_step=1)
    return _save_tiny_model(config, tiny_tokenizer_dir, tmp_path_factory.mktemp("tiny_qwen3_moe"))


def test_moe_aux_loss_coef_adds_the_weighted_router_loss(tiny_moe_dir):
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    base = _load(tiny_moe_dir)
    weighted = _load(tiny_moe_dir, moe_aux_loss_coef=0.5)
    assert not base.config.output_router_logits
    assert weighted.config.output_router_logits and weighted.config.router_aux_loss_coef == 0.5
    out = weighted(input_ids=ids, labels=ids)
    cross_entropy = base(input_ids=ids, labels=ids).loss
    assert out.aux_loss > 0
    torch.testing.assert_close(out.loss, cross_entropy + 0.5 * out.aux_loss)
    # inference never turns it on (LF: training only)
    assert not _load(tiny_moe_dir, is_trainable=False, moe_aux_loss_coef=0.5).config.output_router_logits


def test_moe_aux_loss_coef_on_a_dense_model_is_refused(tiny_llama_dir):
    from tuneforge.errors import NotSupportedError

    with pytest.raises(NotSupportedError, match="moe_aux_loss_coef: llama is not a mixture-of-experts model with a "
                                                "router loss, so the key would do nothing; remove it"):
        _load(tiny_llama_dir, moe_aux_loss_coef=0.01)
