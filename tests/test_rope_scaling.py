"""`rope_scaling` (LF's model_utils/rope.py): the loaded model's RoPE is scaled by ceil(cutoff_len / its
positions) in training runs, by 2 at inference, and left alone when cutoff_len fits."""

from __future__ import annotations

import pytest
import torch

from tuneforge.config.args import ModelArguments
from tuneforge.model.loader import load_base_model

TINY_POSITIONS = 512  # conftest's tiny llama


def _load(model_dir, rope_scaling=None, model_max_length=None):
    args = ModelArguments(model_name_or_path=str(model_dir), rope_scaling=rope_scaling,
                          model_max_length=model_max_length, flash_attn="sdpa")
    return load_base_model(args, is_trainable=False, compute_dtype=torch.float32)


def _logits(model, spacing):
    """8 tokens `spacing` positions apart: RoPE only sees relative distances, up to 7 * spacing here."""
    ids = torch.arange(5, 13)[None]
    with torch.no_grad():
        return model(input_ids=ids, position_ids=(torch.arange(8) * spacing)[None]).logits


def _rotation(model, spacing):
    """(cos, sin) of the model's rotary embedding at positions 0, spacing, ..., 7 * spacing."""
    x = torch.zeros(1, 8, model.config.hidden_size)
    with torch.no_grad():
        return model.model.rotary_emb(x, (torch.arange(8) * spacing)[None])


@pytest.fixture(scope="module")
def plain(tiny_llama_dir):
    return _load(tiny_llama_dir)


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn", "llama3"])
def test_training_run_scales_rope_by_cutoff_len(tiny_llama_dir, plain, kind):
    model = _load(tiny_llama_dir, kind, model_max_length=1100)  # ceil(1100 / 512) = 3
    rope = model.config.rope_parameters
    assert (rope["rope_type"], rope["factor"]) == (kind, 3.0)
    assert rope["rope_theta"] == plain.config.rope_parameters["rope_theta"]
    assert model.config.max_position_embeddings == 3 * TINY_POSITIONS
    if kind in ("yarn", "llama3"):
        assert rope["original_max_position_embeddings"] == TINY_POSITIONS
    if kind == "llama3":
        assert (rope["low_freq_factor"], rope["high_freq_factor"]) == (1.0, 4.0)
    assert model.model.rotary_emb.rope_type == kind
    # long positions (past the enlarged length: dynamic NTK only rescales there, as in LF) get another rotation
    cos, sin = _rotation(model, 300)
    plain_cos, plain_sin = _rotation(plain, 300)
    assert (cos - plain_cos).abs().max() > 0.1 and (sin - plain_sin).abs().max() > 0.1
    assert (_logits(model, 300) - _logits(plain, 300)).abs().max() > 1e-4  # and the forward sees it
    if kind == "dynamic":  # short sequences keep the original rotation
        torch.testing.assert_close(_rotation(model, 1), _rotation(plain, 1))


def test_no_scaling_when_cutoff_len_fits(tiny_llama_dir, plain):
    model = _load(tiny_llama_dir, "linear", model_max_length=TINY_POSITIONS)
    assert model.config.rope_parameters["rope_type"] == "default"
    assert model.config.max_position_embeddings == TINY_POSITIONS
    torch.testing.assert_close(_logits(model, 300), _logits(plain, 300))


def test_inference_scales_by_two(tiny_llama_dir, plain):
    model = _load(tiny_llama_dir, "linear")  # chat / export: no model_max_length
    assert (model.config.rope_parameters["rope_type"], model.config.rope_parameters["factor"]) == ("linear", 2.0)
    assert model.config.max_position_embeddings == 2 * TINY_POSITIONS
    # linear scaling: position p of the scaled model is position p / 2 of the plain one
    ids = torch.arange(5, 13)[None]
    with torch.no_grad():
        scaled = model(input_ids=ids, position_ids=(torch.arange(8) * 2)[None]).logits
        reference = plain(input_ids=ids, position_ids=torch.arange(8)[None]).logits
    torch.testing.assert_close(scaled, reference, atol=1e-5, rtol=1e-4)


def test_training_runs_load_for_cutoff_len(monkeypatch):
    from tuneforge.config import load_config_dict, validate
    from tuneforge.errors import ConfigError
    from tuneforge.train.tuner import training_config

    monkeypatch.setattr(validate, "cuda_available", lambda: False)
    base = {"model_name_or_path": "some/model", "output_dir": "out", "dataset": "d", "rope_scaling": "yarn"}
    cfg = load_config_dict({**base, "cutoff_len": 4096})
    assert cfg.model.rope_scaling == "yarn" and cfg.model.model_max_length is None  # chat / export: inference
    assert training_config(cfg).model.model_max_length == 4096
    with pytest.raises(ConfigError, match="model_max_length"):  # derived, not a key (LF neither)
        load_config_dict({**base, "model_max_length": 4096})
