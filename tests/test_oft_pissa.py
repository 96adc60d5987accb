"""`finetuning_type: oft` (peft OFT: train, save, load for chat, merge on export) and `pissa_convert` (the
trained PiSSA adapter saved as a plain LoRA adapter of the original model), with LLaMA-Factory 0.9.5's keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import IDENTITY_ROWS, write_workspace
from tuneforge.cli.main import main
from tuneforge.config.args import FinetuningArguments, ModelArguments
from tuneforge.config.parser import load_config_dict
from tuneforge.errors import ConfigError
from tuneforge.model.loader import load_base_model, load_model

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250]])
BASE = {"model_name_or_path": "m", "dataset": "d", "output_dir": "o"}


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def losses(output_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def run_config(tiny_llama_dir, output_dir: str, **extra) -> dict:
    return {"model_name_or_path": str(tiny_llama_dir), "stage": "sft", "do_train": True, "dataset": "tiny",
            "dataset_dir": "data", "template": "chatml", "cutoff_len": 64, "output_dir": output_dir,
            "logging_steps": 1, "save_steps": 100, "per_device_train_batch_size": 4, "learning_rate": 2.0e-2,
            "max_steps": 4, "report_to": "none", **extra}


# ----------------------------------------------------------------------------------------------- OFT
def test_oft_keys_reach_peft(tiny_llama_dir):
    model_args = ModelArguments(model_name_or_path=str(tiny_llama_dir))
    args = FinetuningArguments(finetuning_type="oft", oft_block_size=16, module_dropout=0.1)
    model = load_model(model_args, args, is_trainable=True)
    config = model.peft_config["default"]
    assert type(config).__name__ == "OFTConfig"
    assert (config.r, config.oft_block_size, config.module_dropout) == (0, 16, 0.1)
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".oft_R." in name for name in trainable)
    # oft_target other than `all` wins; left at `all`, lora_target decides (what LF 0.9.5 reads for OFT)
    model = load_model(model_args, FinetuningArguments(finetuning_type="oft", oft_target="q_proj,v_proj"), is_trainable=True)
    assert set(model.peft_config["default"].target_modules) == {"q_proj", "v_proj"}
    model = load_model(model_args, FinetuningArguments(finetuning_type="oft", oft_rank=2, oft_block_size=0,
                                                       lora_target="down_proj"), is_trainable=True)
    assert set(model.peft_config["default"].target_modules) == {"down_proj"}
    assert model.peft_config["default"].r == 2
    with pytest.raises(ConfigError, match=r"^oft_target: wq not found in LlamaForCausalLM"):
        load_model(model_args, FinetuningArguments(finetuning_type="oft", oft_target="wq"), is_trainable=True)


def test_oft_config_checks():
    load_config_dict({**BASE, "finetuning_type": "oft", "oft_block_size": 16, "module_dropout": 0.1})
    with pytest.raises(ConfigError, match=r"set exactly one of `oft_rank` .* got oft_rank 8, oft_block_size 32; with "
                                          r"oft_rank set, add `oft_block_size: 0`"):
        load_config_dict({**BASE, "finetuning_type": "oft", "oft_rank": 8})
    with pytest.raises(ConfigError, match="`module_dropout` must be in"):
        load_config_dict({**BASE, "finetuning_type": "oft", "module_dropout": 1.5})
    with pytest.raises(ConfigError, match="`use_dora` only applies to `finetuning_type: lora`"):
        load_config_dict({**BASE, "finetuning_type": "oft", "use_dora": True})
    # adapters of an oft run are loaded with finetuning_type: oft (or lora)
    load_config_dict({**BASE, "finetuning_type": "oft", "adapter_name_or_path": "a"})


def test_oft_trains_saves_and_merges(tmp_path, tiny_llama_dir, monkeypatch, capsys):
    write_workspace(tmp_path, monkeypatch, IDENTITY_ROWS, "tiny",
                    run_config(tiny_llama_dir, "out/oft", finetuning_type="oft", oft_block_size=16), "train.yaml")
    assert main(["train", "train.yaml"]) == 0
    out = tmp_path / "out" / "oft"
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "OFT"
    steps = losses(out)
    assert len(steps) == 4 and steps[-1] < steps[0]
    printed = capsys.readouterr().out
    assert "OFT adapter saved in" in printed and "adapter_name_or_path=out/oft" in printed

    # the adapter on the base (peft, unmerged) == what chat loads (merged) == the exported merged model
    from peft import PeftModel

    base_args = ModelArguments(model_name_or_path=str(tiny_llama_dir))
    base = load_base_model(base_args, is_trainable=False)
    expected = logits(PeftModel.from_pretrained(base, str(out)).eval())
    assert not torch.allclose(expected, logits(load_base_model(base_args, is_trainable=False)), atol=1e-4)
    loaded = load_model(ModelArguments(model_name_or_path=str(tiny_llama_dir), adapter_name_or_path=str(out)),
                        FinetuningArguments(finetuning_type="oft"), is_trainable=False)
    assert not hasattr(loaded, "peft_config")  # merged for inference
    torch.testing.assert_close(logits(loaded), expected, atol=1e-4, rtol=0)

    assert main(["export", f"model_name_or_path={tiny_llama_dir}", "adapter_name_or_path=out/oft",
                 "finetuning_type=oft", "template=chatml", "export_dir=out/merged"]) == 0
    merged = load_base_model(ModelArguments(model_name_or_path=str(tmp_path / "out" / "merged")), is_trainable=False)
    torch.testing.assert_close(logits(merged), expected, atol=1e-4, rtol=0)

    # training on top of the OFT adapter resumes it (is_trainable), as with LoRA
    resumed = load_model(ModelArguments(model_name_or_path=str(tiny_llama_dir), adapter_name_or_path=str(out)),
                         FinetuningArguments(finetuning_type="oft"), is_trainable=True)
    assert resumed.peft_config["default"].peft_type.value == "OFT"
    assert any(p.requires_grad for name, p in resumed.named_parameters() if ".oft_R." in name)


# ----------------------------------------------------------------------------------------------- PiSSA
def test_pissa_config_checks():
    load_config_dict({**BASE, "pissa_init": True, "pissa_convert": True})
    with pytest.raises(ConfigError, match="`pissa_convert` converts a PiSSA adapter .* needs `pissa_init: true`"):
        load_config_dict({**BASE, "pissa_convert": True})
    with pytest.raises(ConfigError, match="`pissa_init` cannot be used with stage `dpo` \\(pref_loss sigmoid\\)"):
        load_config_dict({**BASE, "stage": "dpo", "pissa_init": True})
    load_config_dict({**BASE, "stage": "dpo", "pref_loss": "orpo", "pissa_init": True})  # no reference model
    with pytest.raises(ConfigError, match="`pissa_convert` only applies to `finetuning_type: lora`"):
        load_config_dict({**BASE, "finetuning_type": "full", "pissa_convert": True})


def test_pissa_convert_gives_a_lora_adapter_of_the_original_model(tmp_path, tiny_llama_dir, monkeypatch):
    # pissa_iter -1: the exact SVD, so that loading the PiSSA adapter derives the same residual weights again
    config = run_config(tiny_llama_dir, "out/pissa", finetuning_type="lora", lora_rank=4, pissa_init=True,
                        pissa_iter=-1, pissa_convert=True)
    write_workspace(tmp_path, monkeypatch, IDENTITY_ROWS, "tiny", config, "train.yaml")
    assert main(["train", "train.yaml"]) == 0
    out = tmp_path / "out" / "pissa"
    steps = losses(out)
    assert len(steps) == 4 and steps[-1] < steps[0]
    for name in ("pissa_init", "pissa_backup", "pissa_converted"):
        assert (out / name / "adapter_model.safetensors").is_file(), name
    converted_config = json.loads((out / "pissa_converted" / "adapter_config.json").read_text())
    assert converted_config["init_lora_weights"] is True and converted_config["r"] == 8  # rank 2r
    assert json.loads((out / "adapter_config.json").read_text())["init_lora_weights"] == "pissa"

    from peft import PeftModel

    base_args = ModelArguments(model_name_or_path=str(tiny_llama_dir))
    # the trained PiSSA model: peft re-derives the residual base from the original weights, then loads A and B
    trained = logits(PeftModel.from_pretrained(load_base_model(base_args, is_trainable=False), str(out)).eval())
    original = logits(load_base_model(base_args, is_trainable=False))
    assert not torch.allclose(trained, original, atol=1e-4)
    # the ORIGINAL base model + the converted plain LoRA adapter gives the same logits
    converted = load_model(ModelArguments(model_name_or_path=str(tiny_llama_dir),
                                          adapter_name_or_path=str(out / "pissa_converted")),
                           FinetuningArguments(), is_trainable=False)
    torch.testing.assert_close(logits(converted), trained, atol=1e-4, rtol=0)


def test_ppo_reward_adapter_is_of_the_policy_kind():
    ppo = {**BASE, "stage": "ppo", "reward_model": "saves/rm"}
    load_config_dict({**ppo, "finetuning_type": "oft", "reward_model_type": "oft"})
    with pytest.raises(ConfigError, match=r"`reward_model_type: oft` loads the reward model as a second adapter of the "
                                          r"policy, so it needs `finetuning_type: oft` \(got `lora`\)"):
        load_config_dict({**ppo, "reward_model_type": "oft"})
    with pytest.raises(ConfigError, match=r"`reward_model_type: lora` .* needs `finetuning_type: lora` \(got `oft`\)"):
        load_config_dict({**ppo, "finetuning_type": "oft"})
