"""Fine-tuning methods: LoRA target sets and flags, freeze layers, full, adapter round trips, LoRA+."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tuneforge.config.args import FinetuningArguments, ModelArguments
from tuneforge.errors import ConfigError, ModelError
from tuneforge.model.adapters import apply_finetuning
from tuneforge.model.loader import load_base_model, load_model

PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def model_args(path, **overrides):
    return ModelArguments(model_name_or_path=str(path), **overrides)


def ft_args(**overrides):
    return FinetuningArguments(**overrides)


def trainable_names(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def randomize_lora_b(model, seed=1) -> None:
    """LoRA B starts at zero (adapter = identity); give it values so adapters change the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)


IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_lora_all_targets_the_seven_projections(fixture, request):
    model = load_model(model_args(request.getfixturevalue(fixture)), ft_args(), is_trainable=True)
    config = model.peft_config["default"]
    assert set(config.target_modules) == PROJECTIONS
    assert config.lora_alpha == 16 and config.r == 8
    assert config.use_rslora is False and config.use_dora is False and config.init_lora_weights is True
    names = trainable_names(model)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert {n.split(".lora_")[0].split(".")[-1] for n in names} == PROJECTIONS


def test_lora_flags_reach_peft_config(tiny_llama_dir):
    args = ft_args(lora_rank=4, lora_alpha=32, lora_dropout=0.1, lora_target="q_proj,v_proj", use_rslora=True,
                   use_dora=True, additional_target="embed_tokens", pissa_init=True, pissa_iter=-1)
    model = load_model(model_args(tiny_llama_dir), args, is_trainable=True)
    config = model.peft_config["default"]
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 32, 0.1)
    assert config.use_rslora is True and config.use_dora is True
    assert config.init_lora_weights == "pissa" and set(config.modules_to_save) == {"embed_tokens"}
    assert any("lora_magnitude_vector" in n for n in trainable_names(model))
    args = ft_args(pissa_init=True, pissa_iter=4)
    model = load_model(model_args(tiny_llama_dir), args, is_trainable=True)
    assert model.peft_config["default"].init_lora_weights == "pissa_niter_4"


def test_bad_lora_target(tiny_llama_dir):
    with pytest.raises(ConfigError, match=r"^lora_target: query_key_value not found in LlamaForCausalLM; expected `all` or some of "
                                          r"down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj$"):
        load_model(model_args(tiny_llama_dir), ft_args(lora_target="q_proj,query_key_value"), is_trainable=True)


def test_trainable_params_fp32_on_bf16_base(tiny_llama_dir):
    base = load_base_model(model_args(tiny_llama_dir), is_trainable=True, compute_dtype=torch.bfloat16)
    model = apply_finetuning(base, ft_args(), model_args(tiny_llama_dir), is_trainable=True)
    dtypes = {(p.requires_grad, p.dtype) for p in model.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}


def test_full_trains_everything_in_fp32(tiny_llama_dir):
    base = load_base_model(model_args(tiny_llama_dir), is_trainable=True, compute_dtype=torch.bfloat16)
    model = apply_finetuning(base, ft_args(finetuning_type="full"), model_args(tiny_llama_dir), is_trainable=True)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())


def test_freeze_last_and_first_layers(tiny_llama_dir):
    last = load_model(model_args(tiny_llama_dir), ft_args(finetuning_type="freeze", freeze_trainable_layers=1), is_trainable=True)
    names = trainable_names(last)
    assert names and all(n.startswith("model.layers.1.") for n in names)
    assert len(names) == sum(1 for n, _ in last.named_parameters() if n.startswith("model.layers.1."))
    first = load_model(model_args(tiny_llama_dir), ft_args(finetuning_type="freeze", freeze_trainable_layers=-1), is_trainable=True)
    assert trainable_names(first) == {n for n, _ in first.named_parameters() if n.startswith("model.layers.0.")}


def test_freeze_modules_and_extra_modules(tiny_qwen2_dir):
    args = ft_args(finetuning_type="freeze", freeze_trainable_layers=1, freeze_trainable_modules="mlp,self_attn",
                   freeze_extra_modules="embed_tokens,norm")
    model = load_model(model_args(tiny_qwen2_dir), args, is_trainable=True)
    expected = {n for n, _ in model.named_parameters()
                if n.startswith(("model.layers.1.mlp.", "model.layers.1.self_attn."))} | {"model.embed_tokens.weight", "model.norm.weight"}
    assert trainable_names(model) == expected
    assert "model.layers.1.input_layernorm.weight" not in expected
    with pytest.raises(ConfigError, match=r"^freeze_trainable_modules: `attn` is not a module of the decoder layers; expected `all` "
                                          r"or some of input_layernorm, mlp, post_attention_layernorm, self_attn$"):
        load_model(model_args(tiny_qwen2_dir), ft_args(finetuning_type="freeze", freeze_trainable_modules="attn"), is_trainable=True)
    with pytest.raises(ConfigError, match=r"^freeze_extra_modules: `wte` is not a module outside the decoder layers; expected some of embed_tokens, lm_head, norm$"):
        load_model(model_args(tiny_qwen2_dir), ft_args(finetuning_type="freeze", freeze_extra_modules="wte"), is_trainable=True)


@pytest.fixture(scope="module")
def saved_adapters(tiny_llama_dir, tmp_path_factory):
    """Two LoRA adapters saved from the tiny llama; returns (dir_a, dir_b)."""
    out = []
    for seed, target in ((1, "all"), (2, "q_proj,v_proj")):
        model = load_model(model_args(tiny_llama_dir), ft_args(lora_target=target), is_trainable=True)
        randomize_lora_b(model, seed)
        path = tmp_path_factory.mktemp(f"adapter{seed}")
        model.save_pretrained(path)
        out.append(path)
    return out


def test_adapter_save_load_for_inference_gives_identical_logits(tiny_llama_dir, saved_adapters):
    from peft import PeftModel

    reference = PeftModel.from_pretrained(load_base_model(model_args(tiny_llama_dir), is_trainable=False), saved_adapters[0])
    expected = logits(reference)
    assert not torch.allclose(expected, logits(load_base_model(model_args(tiny_llama_dir), is_trainable=False)))
    loaded = load_model(model_args(tiny_llama_dir, adapter_name_or_path=str(saved_adapters[0])), ft_args(), is_trainable=False)
    assert not hasattr(loaded, "peft_config")  # merged for inference
    torch.testing.assert_close(logits(loaded), expected, atol=1e-5, rtol=0)


def test_two_adapters_for_inference_are_both_merged(tiny_llama_dir, saved_adapters):
    from peft import PeftModel

    base = load_base_model(model_args(tiny_llama_dir), is_trainable=False)
    step = PeftModel.from_pretrained(base, saved_adapters[0]).merge_and_unload()
    expected = logits(PeftModel.from_pretrained(step, saved_adapters[1]))
    both = ",".join(str(p) for p in saved_adapters)
    loaded = load_model(model_args(tiny_llama_dir, adapter_name_or_path=both), ft_args(), is_trainable=False)
    torch.testing.assert_close(logits(loaded), expected, atol=1e-5, rtol=0)


def test_training_resumes_last_adapter_or_creates_new(tiny_llama_dir, saved_adapters):
    both = ",".join(str(p) for p in saved_adapters)
    resumed = load_model(model_args(tiny_llama_dir, adapter_name_or_path=both), ft_args(), is_trainable=True)
    assert set(resumed.peft_config["default"].target_modules) == {"q_proj", "v_proj"}  # adapter 2 resumed
    names = trainable_names(resumed)
    assert names and all("lora_" in n for n in names)
    assert any(p.abs().sum() > 0 for n, p in resumed.named_parameters() if "lora_B" in n)
    fresh = load_model(model_args(tiny_llama_dir, adapter_name_or_path=both), ft_args(create_new_adapter=True), is_trainable=True)
    assert set(fresh.peft_config["default"].target_modules) == PROJECTIONS
    assert all(p.abs().sum() == 0 for n, p in fresh.named_parameters() if "lora_B" in n)


def test_adapter_errors(tiny_llama_dir, tmp_path):
    with pytest.raises(ModelError, match=r"^adapter_name_or_path: adapter path ./missing-adapter does not exist$"):
        load_model(model_args(tiny_llama_dir, adapter_name_or_path="./missing-adapter"), ft_args(), is_trainable=False)
    with pytest.raises(ModelError, match=r"has no adapter_config.json; it is not a LoRA adapter folder \(it holds a full model"):
        load_model(model_args(tiny_llama_dir, adapter_name_or_path=str(tiny_llama_dir)), ft_args(), is_trainable=False)
    with pytest.raises(ConfigError, match=r"^adapter_name_or_path is set \(x\) but finetuning_type is `freeze`"):
        load_model(model_args(tiny_llama_dir, adapter_name_or_path="x"), ft_args(finetuning_type="freeze"), is_trainable=True)
    with pytest.raises(ConfigError, match="finetuning_type: `boft` is not one of full, freeze, lora, oft"):
        load_model(model_args(tiny_llama_dir), ft_args(finetuning_type="boft"), is_trainable=True)


# ---- a wrong adapter is one clear line before peft loads it (issue 10, item 11) -------------------
def _copy_adapter(source, tmp_path, name="adapter"):
    import shutil

    return Path(shutil.copytree(source, tmp_path / name))


def test_adapter_of_another_base_model_is_refused_naming_both(tiny_llama_dir, tiny_tokenizer, tiny_tokenizer_dir,
                                                              saved_adapters, tmp_path):
    from transformers import LlamaConfig

    from conftest import _save_tiny_model, _tiny_config_kwargs

    wider = _save_tiny_model(LlamaConfig(**{**_tiny_config_kwargs(tiny_tokenizer), "hidden_size": 48}),
                             tiny_tokenizer_dir, tmp_path / "wider_llama")
    with pytest.raises(ModelError) as excinfo:
        load_model(model_args(wider, adapter_name_or_path=str(saved_adapters[0])), ft_args(), is_trainable=False)
    assert str(excinfo.value) == (
        f"adapter_name_or_path: {saved_adapters[0]} was trained on {tiny_llama_dir}, not on {wider}: "
        "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight expects 32 outputs but the model's "
        "`model.layers.0.mlp.down_proj` has 48")


def test_adapter_with_a_changed_rank_is_refused(tiny_llama_dir, saved_adapters, tmp_path):
    folder = _copy_adapter(saved_adapters[0], tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 4}))
    with pytest.raises(ModelError, match=rf"^adapter_name_or_path: {folder}: adapter_config.json says rank r=4, but "
                                         r"base_model\.model\..*lora_A\.weight has rank 8; the config and the weights"):
        load_model(model_args(tiny_llama_dir, adapter_name_or_path=str(folder)), ft_args(), is_trainable=False)


def test_truncated_or_missing_adapter_weights_are_refused(tiny_llama_dir, saved_adapters, tmp_path):
    folder = _copy_adapter(saved_adapters[0], tmp_path)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelError, match=rf"^adapter_name_or_path: {weights} is damaged or truncated \(.*\); use a complete"):
        load_model(model_args(tiny_llama_dir, adapter_name_or_path=str(folder)), ft_args(), is_trainable=False)
    weights.unlink()
    with pytest.raises(ModelError, match=rf"^adapter_name_or_path: {folder} has adapter_config.json but no "
                                         "adapter_model.safetensors: the save did not finish"):
        load_model(model_args(tiny_llama_dir, adapter_name_or_path=str(folder)), ft_args(), is_trainable=False)
