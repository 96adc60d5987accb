"""LLaMA Pro: `tuneforge expand-layers` (LF's scripts/llama_pro.py) and `use_llama_pro` for freeze and LoRA."""

from __future__ import annotations

import json

import pytest
import torch

from tuneforge.cli.main import main
from tuneforge.config.args import FinetuningArguments, ModelArguments
from tuneforge.errors import ConfigError
from tuneforge.model.expand import expanded_layer_sources
from tuneforge.model.loader import load_base_model, load_model

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])


def _logits(path) -> torch.Tensor:
    model = load_base_model(ModelArguments(model_name_or_path=str(path)), is_trainable=False)
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def expanded_llama(tiny_llama_dir, tmp_path_factory):
    """The tiny 2-layer Llama expanded by 2: layers 0, new(0), 1, new(1)."""
    folder = tmp_path_factory.mktemp("llama_pro") / "expanded"
    assert main(["expand-layers", "--model_name_or_path", str(tiny_llama_dir), "--output_dir", str(folder),
                 "--num_expand", "2"]) == 0
    return folder


def test_new_blocks_follow_each_group_of_layers():
    assert expanded_layer_sources(4, 2) == [(0, False), (1, False), (1, True), (2, False), (3, False), (3, True)]
    assert expanded_layer_sources(2, 2) == [(0, False), (0, True), (1, False), (1, True)]
    with pytest.raises(ConfigError, match="--num_expand must divide the model's 4 layers, got 3"):
        expanded_layer_sources(4, 3)


def test_expanded_model_computes_what_the_original_did(tiny_llama_dir, expanded_llama):
    config = json.loads((expanded_llama / "config.json").read_text())
    assert config["num_hidden_layers"] == 4
    assert torch.allclose(_logits(expanded_llama), _logits(tiny_llama_dir), atol=1e-5)
    original = load_base_model(ModelArguments(model_name_or_path=str(tiny_llama_dir)), is_trainable=False).state_dict()
    expanded = load_base_model(ModelArguments(model_name_or_path=str(expanded_llama)), is_trainable=False).state_dict()
    for new_index, (source, is_new) in enumerate(expanded_layer_sources(2, 2)):
        for name in ("self_attn.q_proj.weight", "mlp.up_proj.weight", "input_layernorm.weight"):
            assert torch.equal(expanded[f"model.layers.{new_index}.{name}"], original[f"model.layers.{source}.{name}"])
        for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            new, old = expanded[f"model.layers.{new_index}.{name}"], original[f"model.layers.{source}.{name}"]
            assert torch.equal(new, torch.zeros_like(old)) if is_new else torch.equal(new, old)
    assert (expanded_llama / "tokenizer.json").is_file() or (expanded_llama / "tokenizer_config.json").is_file()


def test_layer_types_grow_with_the_model(tiny_qwen2_dir, tmp_path):
    assert main(["expand-layers", "--model-name-or-path", str(tiny_qwen2_dir), "--output-dir", str(tmp_path / "o"),
                 "--num-expand", "1"]) == 0
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and len(config["layer_types"]) == 3
    assert torch.allclose(_logits(tmp_path / "o"), _logits(tiny_qwen2_dir), atol=1e-5)


def test_freeze_trains_only_the_new_blocks(expanded_llama):
    model = load_model(ModelArguments(model_name_or_path=str(expanded_llama)),
                       FinetuningArguments(finetuning_type="freeze", freeze_trainable_layers=2, use_llama_pro=True),
                       is_trainable=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(("model.layers.1.", "model.layers.3."))}


def test_lora_goes_on_the_new_blocks_only(expanded_llama):
    model = load_model(ModelArguments(model_name_or_path=str(expanded_llama)),
                       FinetuningArguments(finetuning_type="lora", freeze_trainable_layers=2, use_llama_pro=True,
                                           lora_target="q_proj,down_proj"), is_trainable=True)
    adapted = sorted(n.removeprefix("base_model.model.").removesuffix(".lora_A.default.weight")
                     for n, _ in model.named_parameters() if "lora_A" in n)
    assert adapted == ["model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj",
                       "model.layers.3.mlp.down_proj", "model.layers.3.self_attn.q_proj"]


def test_llama_pro_settings_that_cannot_work_are_refused(expanded_llama, tmp_path):
    from tuneforge.config.parser import load_config_dict

    base = {"model_name_or_path": str(expanded_llama), "stage": "sft", "do_train": True, "dataset": "identity",
            "output_dir": str(tmp_path / "out"), "use_llama_pro": True}
    with pytest.raises(ConfigError, match="`use_llama_pro` trains the expanded blocks with `finetuning_type: freeze` "
                                          "or `lora` \\(got `full`\\)"):
        load_config_dict({**base, "finetuning_type": "full"})
    with pytest.raises(ConfigError, match="with `use_llama_pro`, `freeze_trainable_layers` is the number of expanded "
                                          "blocks \\(> 0\\), got -2"):
        load_config_dict({**base, "finetuning_type": "freeze", "freeze_trainable_layers": -2})
    with pytest.raises(ConfigError, match="the model has 4 layers, which is not a multiple of freeze_trainable_layers "
                                          "\\(3, the number of expanded blocks\\)"):
        load_model(ModelArguments(model_name_or_path=str(expanded_llama)),
                   FinetuningArguments(finetuning_type="freeze", freeze_trainable_layers=3, use_llama_pro=True),
                   is_trainable=True)


def test_expand_refuses_a_folder_that_is_not_empty(tiny_llama_dir, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["expand-layers", "--model_name_or_path", str(tiny_llama_dir), "--output_dir", str(tmp_path),
                 "--num_expand", "2"]) == 2
    assert "is not empty" in capsys.readouterr().err and (tmp_path / "keep.txt").read_text() == "mine"
