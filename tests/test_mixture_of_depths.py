"""`mixture_of_depths: convert | load` (model/mixture_of_depths.py): the routing against a per-row reference, the
capacity schedule, gradients (with gradient checkpointing too), the saved layout and its reload, generation."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import _save_tiny_model, _tiny_config_kwargs
from tuneforge.config.args import FinetuningArguments, ModelArguments
from tuneforge.errors import ConfigError, NotSupportedError
from tuneforge.model.loader import load_model
from tuneforge.model.mixture_of_depths import (CAPACITY, MixtureOfDepthsLayer, convert_to_mixture_of_depths)

FULL = FinetuningArguments(finetuning_type="full")


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def four_layer_dir(request, tmp_path_factory, tiny_tokenizer_dir, tiny_tokenizer):
    from transformers import LlamaConfig, Qwen2Config

    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[request.param]
    config = config_class(**{**_tiny_config_kwargs(tiny_tokenizer), "num_hidden_layers": 4})
    return _save_tiny_model(config, tiny_tokenizer_dir, tmp_path_factory.mktemp(f"tiny_{request.param}_4"))


def _load(folder, *, is_trainable=True, **keys):
    return load_model(ModelArguments(model_name_or_path=str(folder), **keys), FULL, is_trainable=is_trainable)


def _layer_io(model, layer, **inputs):
    """The routed layer's input and output in one forward."""
    seen = {}
    handle = layer.register_forward_hook(lambda module, args, output: seen.update(x=args[0], y=output))
    model(**inputs)
    handle.remove()
    return seen["x"], seen["y"]


def _reference_row(model, layer, x, valid, capacity):
    """The package's routing for one row, written as a loop over rows: the top-k tokens by router score go through
    the plain layer alone (their own positions; pad keys hidden), scaled by the score; the rest pass unchanged."""
    scores = layer.router(x[None])[0]
    k = max(1, int(capacity * x.shape[0]))
    chosen = scores.topk(k).indices.sort().values
    positions = (torch.cumsum(valid, 0) - 1).clamp(min=0)[chosen][None]
    rotary = model.model.rotary_emb(x[None], positions)
    allowed = torch.ones(k, k, dtype=torch.bool).tril() & valid[chosen].bool()[None, :]
    out = layer.block(x[chosen][None], attention_mask=allowed[None, None], position_ids=positions,
                      position_embeddings=rotary)
    result = x.clone()
    result[chosen] = out[0] * scores[chosen, None]
    return result


def test_routing_matches_a_per_row_reference(four_layer_dir):
    torch.manual_seed(0)
    model = _load(four_layer_dir, mixture_of_depths="convert").eval()
    layer = model.model.layers[1]
    assert [type(m) is MixtureOfDepthsLayer for m in model.model.layers] == [False, True, False, True]
    assert type(model).__name__.endswith("MoDForCausalLM") and model.config._attn_implementation == "sdpa"
    ids = torch.randint(5, 200, (2, 24))
    mask = torch.ones_like(ids)
    mask[0, :6] = 0  # left padding: the routed tokens must not see the pad keys
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    for capacity in (0.25, 0.5):
        for routed in model.model.layers[1::2]:
            routed.capacity = capacity
        with torch.no_grad():
            x, y = _layer_io(model, layer, input_ids=ids, attention_mask=mask, position_ids=positions,
                             use_cache=False)
            for row in range(2):
                expected = _reference_row(model, layer, x[row], mask[row], capacity)
                valid = mask[row].bool()
                torch.testing.assert_close(y[row][valid], expected[valid], atol=1e-5, rtol=1e-5)
            skipped = (y[1] == x[1]).all(-1).sum().item()
            assert skipped == 24 - int(capacity * 24)  # exactly k tokens routed (the package keeps k - 1)


def test_capacity_schedule_and_gradients(four_layer_dir):
    torch.manual_seed(0)
    model = _load(four_layer_dir, mixture_of_depths="convert").train()
    layer = model.model.layers[1]
    ids = torch.randint(5, 200, (2, 16))
    x, y = _layer_io(model, layer, input_ids=ids)  # the first training forward routes every token
    assert layer.capacity == 1.0
    with torch.no_grad():
        everything = _reference_row(model, layer, x[0], torch.ones(16), 1.0)
    torch.testing.assert_close(y[0], everything, atol=1e-5, rtol=1e-5)
    for step in range(2, 9):
        model(input_ids=ids)
        assert layer.capacity == pytest.approx(CAPACITY + (1 - CAPACITY) / step)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    assert layer.capacity == pytest.approx(CAPACITY + (1 - CAPACITY) / 8)  # evaluation does not count

    def gradients(checkpointing: bool):
        torch.manual_seed(0)
        fresh = _load(four_layer_dir, mixture_of_depths="convert").train()
        if checkpointing:
            fresh.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for _ in range(3):  # capacity 1 -> 0.56 -> 0.42
            fresh.zero_grad()
            loss = fresh(input_ids=ids, labels=ids).loss
            loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in fresh.named_parameters() if p.grad is not None}

    loss, grads = gradients(False)
    assert grads["model.layers.1.router.weight_predictor.weight"].abs().sum() > 0
    assert grads["model.layers.1.block.mlp.down_proj.weight"].abs().sum() > 0
    checkpointed_loss, checkpointed = gradients(True)  # the schedule counts the forward once, not the recompute
    assert checkpointed_loss == pytest.approx(loss, abs=1e-6) and checkpointed.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5)


def test_train_save_and_load(four_layer_dir, tmp_path, monkeypatch, repo_root, capsys):
    from tuneforge.cli.main import main

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    config = {"model_name_or_path": str(four_layer_dir), "stage": "sft", "do_train": True, "finetuning_type": "full",
              "mixture_of_depths": "convert", "dataset": "identity", "dataset_dir": str(repo_root / "data"),
              "template": "default", "cutoff_len": 64, "max_samples": 8, "output_dir": str(out),
              "per_device_train_batch_size": 2, "max_steps": 3, "learning_rate": 1e-3, "report_to": "none"}
    (tmp_path / "mod.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train", str(tmp_path / "mod.yaml")]) == 0, capsys.readouterr().err[-2000:]
    saved = json.loads((out / "config.json").read_text())
    assert len(saved["architectures"]) == 1 and saved["architectures"][0].endswith("MoDForCausalLM")
    weights = load_file(out / "model.safetensors")
    assert {k for k in weights if ".router." in k} == {f"model.layers.{i}.router.weight_predictor.{p}"
                                                       for i in (1, 3) for p in ("weight", "bias")}
    assert "model.layers.1.block.self_attn.q_proj.weight" in weights

    with pytest.raises(ConfigError, match="holds a mixture-of-depths model .*set `mixture_of_depths: load`"):
        _load(out, is_trainable=False)
    loaded = _load(out, is_trainable=False, mixture_of_depths="load")
    assert {k: v for k, v in loaded.state_dict().items() if k in weights}.keys() == weights.keys()
    for key, tensor in weights.items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    assert all(layer.capacity == CAPACITY for layer in loaded.model.layers[1::2])

    # generation with a KV cache routes every token (scaled by its score): its first step equals a forward at
    # capacity 1 without a cache
    ids = torch.randint(5, 200, (1, 12))
    with torch.no_grad():
        generated = loaded.generate(ids, max_new_tokens=4, do_sample=False, output_logits=True,
                                    return_dict_in_generate=True)
        for layer in loaded.model.layers[1::2]:
            layer.capacity = 1.0
        full = loaded(input_ids=ids, use_cache=False).logits[:, -1]
    torch.testing.assert_close(generated.logits[0], full, atol=1e-5, rtol=1e-5)
    assert generated.sequences.shape == (1, 16)


def test_refusals(tiny_llama_dir, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tuneforge.config.parser import load_config_dict

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(NotSupportedError, match="`gpt2` models are not supported; supported: gemma, llama"):
        convert_to_mixture_of_depths(gpt2)
    with pytest.raises(ConfigError, match="holds 0 of the 2 router tensors"):
        _load(tiny_llama_dir, mixture_of_depths="load")
    with pytest.raises(ConfigError, match="`mixture_of_depths: load` reads the routers from a saved"):
        load_config_dict({"model_name_or_path": "m", "mixture_of_depths": "load", "train_from_scratch": True})
