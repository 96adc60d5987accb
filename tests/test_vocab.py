"""New tokens (`add_tokens`, `add_special_tokens`, `new_special_tokens_config`), `resize_vocab` and
`init_special_tokens` with LLaMA-Factory 0.9.5's meaning (model/vocab.py), on the tiny models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import IDENTITY_ROWS, write_workspace
from tuneforge.config.args import FinetuningArguments, ModelArguments

NEW_SPECIAL = ["<|forge|>", "<|/forge|>"]


def _args(model_dir, **kwargs) -> ModelArguments:
    return ModelArguments(model_name_or_path=str(model_dir), **kwargs)


def _load(model_dir, finetuning_type="full", is_trainable=True, **kwargs):
    from tuneforge.model.loader import load_model

    torch.manual_seed(0)
    return load_model(_args(model_dir, **kwargs), FinetuningArguments(finetuning_type=finetuning_type),
                      is_trainable=is_trainable)


def test_new_tokens_are_single_ids_after_loading(tiny_llama_dir, tiny_tokenizer):
    from tuneforge.model.tokenizer_loading import load_tokenizer

    tokenizer = load_tokenizer(_args(tiny_llama_dir, add_tokens="forgeword, zqxj", add_special_tokens=",".join(NEW_SPECIAL)))
    assert len(tokenizer) == len(tiny_tokenizer) + 4
    for token in ["forgeword", "zqxj", *NEW_SPECIAL]:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert ids == [tokenizer.convert_tokens_to_ids(token)] and ids[0] >= len(tiny_tokenizer), token
    ids = tokenizer("say <|forge|>forgeword<|/forge|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<|forge|>") in ids and tokenizer.convert_tokens_to_ids("<|/forge|>") in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "say forgeword"  # special ones are dropped


def test_embeddings_grow_to_a_multiple_of_64_with_noisy_mean_rows(tiny_llama_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model = _load(tiny_llama_dir, add_special_tokens=",".join(NEW_SPECIAL))
    old = len(tiny_tokenizer)
    rows = math.ceil((old + 2) / 64) * 64  # LF: pad_to_multiple_of=64
    assert model.get_input_embeddings().weight.shape[0] == rows == model.config.vocab_size
    assert model.get_output_embeddings().weight.shape[0] == rows
    for new, before in ((model.get_input_embeddings().weight, base.get_input_embeddings().weight),
                        (model.get_output_embeddings().weight, base.get_output_embeddings().weight)):
        assert torch.equal(new[:old], before)  # the trained rows are kept
        noise = new[old:] - before.mean(dim=0)  # noise_init: mean + N(0, 1/sqrt(hidden))
        assert abs(noise.std().item() - 1 / math.sqrt(new.shape[1])) < 0.03
        assert noise.abs().max() > 0


def test_resize_vocab_alone_changes_nothing_when_every_token_has_a_row(tiny_llama_dir, tiny_tokenizer):
    model = _load(tiny_llama_dir, resize_vocab=True)
    assert model.get_input_embeddings().weight.shape[0] == len(tiny_tokenizer)


def test_existing_tokens_are_not_new(tiny_llama_dir, tiny_tokenizer):
    model = _load(tiny_llama_dir, add_special_tokens="<|im_end|>")
    assert model.get_input_embeddings().weight.shape[0] == len(tiny_tokenizer)


@pytest.mark.parametrize("method", ["desc_init", "desc_init_w_noise"])
def test_desc_init_is_the_mean_of_the_description_tokens(tmp_path, tiny_llama_dir, tiny_tokenizer, method):
    from transformers import AutoModelForCausalLM

    from tuneforge.model.tokenizer_loading import load_tokenizer

    descriptions = {"<|tool|>": "call a tool function", "<|result|>": "the result of the function"}
    config = tmp_path / "tokens.yaml"
    config.write_text("".join(f'"{t}": "{d}"\n' for t, d in descriptions.items()))
    kwargs = {"new_special_tokens_config": str(config), "init_special_tokens": method,
              "add_special_tokens": "<|ignored|>"}  # the YAML file wins, as in LF
    tokenizer = load_tokenizer(_args(tiny_llama_dir, **kwargs))
    assert "<|ignored|>" not in tokenizer.get_vocab() and len(tokenizer) == len(tiny_tokenizer) + 2
    model = _load(tiny_llama_dir, **kwargs)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    for token, description in descriptions.items():
        ids = tiny_tokenizer(description, add_special_tokens=False)["input_ids"]
        row = tokenizer.convert_tokens_to_ids(token)
        for new, before in ((model.get_input_embeddings().weight, base.get_input_embeddings().weight),
                            (model.get_output_embeddings().weight, base.get_output_embeddings().weight)):
            expected = before[ids].mean(dim=0)
            if method == "desc_init":
                torch.testing.assert_close(new[row], expected)
            else:
                difference = new[row] - expected
                assert 0 < difference.std().item() < 3 / math.sqrt(new.shape[1])


def test_desc_init_without_descriptions_falls_back_to_noise_init(tiny_llama_dir, caplog):
    model = _load(tiny_llama_dir, add_special_tokens="<|forge|>", init_special_tokens="desc_init")
    assert model.get_input_embeddings().weight.shape[0] % 64 == 0
    assert "falling back to noise_init" in caplog.text


def test_a_bad_tokens_file_is_one_clear_error(tmp_path, tiny_llama_dir):
    from tuneforge.errors import ConfigError
    from tuneforge.model.tokenizer_loading import load_tokenizer

    with pytest.raises(ConfigError, match="new_special_tokens_config: .*does not exist"):
        load_tokenizer(_args(tiny_llama_dir, new_special_tokens_config=str(tmp_path / "missing.yaml")))
    (tmp_path / "list.yaml").write_text("- <|a|>\n- <|b|>\n")
    with pytest.raises(ConfigError, match="mapping of token -> description"):
        load_tokenizer(_args(tiny_llama_dir, new_special_tokens_config=str(tmp_path / "list.yaml")))


def test_lora_trains_the_embeddings_when_the_vocabulary_grows(tiny_llama_dir):
    model = _load(tiny_llama_dir, finetuning_type="lora", add_special_tokens="<|forge|>")
    assert set(model.peft_config["default"].modules_to_save) == {"embed_tokens", "lm_head"}  # LF additional_target
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("embed_tokens.modules_to_save" in n for n in trainable)
    assert any("lm_head.modules_to_save" in n for n in trainable)
    plain = _load(tiny_llama_dir, finetuning_type="lora")
    assert not plain.peft_config["default"].modules_to_save


def test_tied_embeddings_stay_tied_under_lora(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from conftest import _tiny_config_kwargs

    config = LlamaConfig(**{**_tiny_config_kwargs(tiny_tokenizer), "tie_word_embeddings": True})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "tied")
    AutoTokenizer.from_pretrained(tiny_tokenizer_dir).save_pretrained(tmp_path / "tied")
    model = _load(tmp_path / "tied", finetuning_type="lora", add_special_tokens="<|forge|>")
    base = model.get_base_model()
    assert base.get_input_embeddings().weight.shape[0] == 64 * math.ceil((len(tiny_tokenizer) + 1) / 64)
    embed, head = base.get_input_embeddings(), base.get_output_embeddings()
    assert embed.modules_to_save["default"].weight is head.modules_to_save["default"].weight


def _train(tmp_path, monkeypatch, model_dir, extra: dict, rows=None):
    from tuneforge.cli.main import main

    config = {"model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
              "dataset": "tiny", "dataset_dir": "data", "template": "chatml", "cutoff_len": 64, "output_dir": "out",
              "per_device_train_batch_size": 4, "max_steps": 2, "learning_rate": 1e-2, "report_to": "none",
              "save_strategy": "no", "logging_steps": 1, **extra}
    write_workspace(tmp_path, monkeypatch, rows or IDENTITY_ROWS, "tiny", config, "train.yaml")
    assert main(["train", "train.yaml"]) == 0
    return tmp_path / "out"


def test_lora_run_with_a_new_special_token_saves_adapter_and_tokenizer(tmp_path, monkeypatch, tiny_llama_dir,
                                                                         tiny_tokenizer):
    from safetensors import safe_open

    from tuneforge.model.loader import load_model
    from tuneforge.model.tokenizer_loading import load_tokenizer

    rows = [{**row, "output": f"<|forge|> {row['output']}"} for row in IDENTITY_ROWS]
    out = _train(tmp_path, monkeypatch, tiny_llama_dir, {"add_special_tokens": "<|forge|>"}, rows)
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    rows_expected = 64 * math.ceil((len(tiny_tokenizer) + 1) / 64)
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as handle:
        saved = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
    embeddings = {k: v for k, v in saved.items() if "embed_tokens" in k or "lm_head" in k}
    assert embeddings and all(shape[0] == rows_expected for shape in embeddings.values()), saved

    # chat / export config: the base model + the adapter, no token keys repeated
    args = _args(tiny_llama_dir, adapter_name_or_path=str(out))
    tokenizer = load_tokenizer(args)
    forge = tokenizer.convert_tokens_to_ids("<|forge|>")
    assert tokenizer("<|forge|> hi", add_special_tokens=False)["input_ids"][0] == forge >= len(tiny_tokenizer)
    model = load_model(args, FinetuningArguments(finetuning_type="lora"), is_trainable=False)
    embed = model.get_input_embeddings().weight
    assert embed.shape[0] == rows_expected
    key = next(k for k in embeddings if "embed_tokens" in k)
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as handle:
        torch.testing.assert_close(embed[forge], handle.get_tensor(key)[forge].to(embed.dtype))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[forge, 5, 6]])).logits
    assert logits.shape[-1] == rows_expected and torch.isfinite(logits).all()

    # the LF way (the keys repeated in the chat config) loads the same
    again = load_tokenizer(_args(tiny_llama_dir, adapter_name_or_path=str(out), add_special_tokens="<|forge|>"))
    assert again.convert_tokens_to_ids("<|forge|>") == forge and len(again) == len(tokenizer)


def test_export_of_an_adapter_with_a_new_token(tmp_path, monkeypatch, tiny_llama_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.cli.main import main

    out = _train(tmp_path, monkeypatch, tiny_llama_dir, {"add_special_tokens": "<|forge|>"})
    assert main(["export", f"model_name_or_path={tiny_llama_dir}", f"adapter_name_or_path={out}",
                 "finetuning_type=lora", "template=chatml", f"export_dir={tmp_path / 'merged'}"]) == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    forge = tokenizer.convert_tokens_to_ids("<|forge|>")
    assert tokenizer("<|forge|>", add_special_tokens=False)["input_ids"] == [forge]
    assert model.get_input_embeddings().weight.shape[0] > forge
    json.loads((tmp_path / "merged" / "config.json").read_text())  # a complete model folder


def test_full_run_with_a_new_token_saves_a_model_that_loads_with_it(tmp_path, monkeypatch, tiny_llama_dir,
                                                                     tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = _train(tmp_path, monkeypatch, tiny_llama_dir, {"finetuning_type": "full", "add_tokens": "forgeword"})
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    word = tokenizer.convert_tokens_to_ids("forgeword")
    assert tokenizer("forgeword", add_special_tokens=False)["input_ids"] == [word] and word >= len(tiny_tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == 64 * math.ceil((len(tiny_tokenizer) + 1) / 64)
