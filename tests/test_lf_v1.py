"""LLaMA-Factory v1-engine configs (`USE_V1=1 llamafactory-cli train`): read as the v0 keys they mean, with v1's
defaults; what tuneforge does not do is refused by name; a v1 LoRA file trains and its export file merges."""

from __future__ import annotations

import json

import pytest
import yaml

from tuneforge.cli.main import main
from tuneforge.config.parser import load_config_dict
from tuneforge.errors import ConfigError, NotSupportedError

DATASET_YAML = {"identity": {"path": "data/identity.json", "source": "local", "converter": "alpaca"},
                "alpaca_en_demo": {"path": "data/alpaca.json", "source": "local", "converter": "alpaca", "size": 6}}


@pytest.fixture
def v1_workspace(tmp_path, monkeypatch, tiny_llama_dir):
    """A working folder with data/v1_sft_demo.yaml over two small alpaca files (v1 reads paths from the cwd)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    rows = [{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(10)]
    (tmp_path / "data" / "identity.json").write_text(json.dumps(rows[:4]))
    (tmp_path / "data" / "alpaca.json").write_text(json.dumps(rows))
    (tmp_path / "data" / "v1_sft_demo.yaml").write_text(yaml.safe_dump(DATASET_YAML, sort_keys=False))
    return tmp_path


def v1(tiny_llama_dir, **settings):
    return {"model": str(tiny_llama_dir), "template": "qwen3_nothink", "train_dataset": "data/v1_sft_demo.yaml",
            "output_dir": "out", **settings}


def test_v1_defaults_and_lora_keys(v1_workspace, tiny_llama_dir):
    cfg = load_config_dict(v1(tiny_llama_dir, peft_config={"name": "lora", "r": 16, "target_modules": ["q_proj", "v_proj"]},
                              micro_batch_size=2, global_batch_size=8))
    t, f = cfg.training, cfg.finetuning
    assert (f.stage, f.finetuning_type, f.lora_rank, f.lora_alpha, f.lora_dropout) == ("sft", "lora", 16, 16, 0.05)
    assert f.lora_target == ("q_proj", "v_proj") and cfg.model.model_name_or_path == str(tiny_llama_dir)
    assert (t.learning_rate, t.num_train_epochs, t.weight_decay, t.max_grad_norm, t.logging_steps) == (1e-4, 3.0, 0.01, 1.0, 1)
    assert (getattr(t.lr_scheduler_type, "value", None), t.warmup_steps, getattr(t.optim, "value", None)) == (
        "constant", 0, "adamw_torch")
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps) == (2, 4)
    assert getattr(t.save_strategy, "value", None) == "no" and cfg.data.dataset == ("identity", "alpaca_en_demo")


def test_v1_freeze_full_and_dotted_overrides(v1_workspace, tiny_llama_dir):
    cfg = load_config_dict(v1(tiny_llama_dir, peft_config={"name": "freeze", "freeze_trainable_modules": "mlp"}),
                           overrides=["peft_config.freeze_trainable_layers=1", "learning_rate=2e-5"])
    assert (cfg.finetuning.finetuning_type, cfg.finetuning.freeze_trainable_layers) == ("freeze", 1)
    assert cfg.finetuning.freeze_trainable_modules == ("mlp",) and cfg.training.learning_rate == 2e-5
    assert load_config_dict(v1(tiny_llama_dir)).finetuning.finetuning_type == "full"  # no peft_config
    cfg = load_config_dict(v1(tiny_llama_dir, dist_config={"name": "fsdp2", "timeout": 600},
                              kernel_config={"name": "auto", "include_kernels": "auto"}))
    assert cfg.training.ddp_timeout == 600 and cfg.model.use_v1_kernels is True and not cfg.training.fsdp


def test_v1_bnb_quant_config_is_qlora(v1_workspace, tiny_llama_dir, monkeypatch):
    from tuneforge.config import validate

    monkeypatch.setattr(validate, "bitsandbytes_version", lambda: (0, 50))  # the CPU backend (tests/test_qlora.py)
    cfg = load_config_dict(v1(tiny_llama_dir, quant_config={"name": "bnb", "quantization_bit": 8},
                              peft_config={"name": "lora"}))
    assert cfg.model.quantization_bit == 8 and cfg.finetuning.finetuning_type == "lora"


@pytest.mark.parametrize("settings, error, message", [
    ({"peft_config": {"name": "lora", "lora_rank": 8}}, ConfigError, "`peft_config` \\(lora\\) has no key `lora_rank`"),
    ({"flash_attn": "flash_attention2"}, ConfigError, "`flash_attn: flash_attention2` is not a v1 value"),
    ({"batching_strategy": "dynamic"}, ConfigError, "`batching_strategy: dynamic` is not one of normal"),
    ({"batching_strategy": "dynamic_batching"}, ConfigError, "`dynamic_batching` needs `max_steps`"),
    ({"dist_config": {"name": "fsdp2", "cp_mode": "ulysses", "cp_size": 2}}, NotSupportedError, "context parallelism"),
    ({"micro_batch_size": 3, "global_batch_size": 8}, ConfigError, "`global_batch_size: 8` is not a multiple"),
    ({"eval_dataset": "data/v1_sft_demo.yaml"}, NotSupportedError, "never evaluates"),
    ({"lr_scheduler_config": {"name": "cosine"}}, ConfigError, "has no plugin in LLaMA-Factory v1"),
    ({"dataset": "identity"}, ConfigError, "`dataset` is a v0 key in a LLaMA-Factory v1 config"),
    ({"micro_batchsize": 2}, ConfigError, "unknown key\\(s\\) `micro_batchsize` in a LLaMA-Factory v1 config"),
    ({"train_dataset": "data/v1_sft_demo.jsonl"}, NotSupportedError, "v1's own message format"),
    ({"quant_config": {"name": "bnb", "compute_dtype": "bfloat16"}}, NotSupportedError, "`quant_config.compute_dtype`"),
    ({"dist_config": {"name": "fsdp2", "mp_shard_size": 2}}, NotSupportedError, "`dist_config.mp_shard_size`"),
    ({"kernel_config": {"name": "auto", "include_kernels": "npu_fused_rope"}}, NotSupportedError, r"\(kernel ids\)"),
])
def test_v1_settings_tuneforge_cannot_honour_are_refused(v1_workspace, tiny_llama_dir, settings, error, message):
    with pytest.raises(error, match=message):
        load_config_dict(v1(tiny_llama_dir, **settings))


def test_v1_dataset_yaml_becomes_dataset_entries(v1_workspace):
    from tuneforge.data.registry import load_dataset_specs

    identity, alpaca = load_dataset_specs("identity,alpaca_en_demo", "data/v1_sft_demo.yaml", None)
    assert identity.file_name == str(v1_workspace / "data" / "identity.json") and identity.formatting == "alpaca"
    assert alpaca.num_samples == 6 and identity.num_samples is None
    (v1_workspace / "data" / "pairs.yaml").write_text(yaml.safe_dump({"p": {"path": "x.json", "converter": "pair"}}))
    with pytest.raises(NotSupportedError, match="`converter: pair` is not supported yet"):
        load_dataset_specs("p", "data/pairs.yaml", None)


def test_v1_lora_file_trains_with_v1_schedule_and_its_export_file_merges(v1_workspace, tiny_llama_dir):
    config = v1(tiny_llama_dir, peft_config={"name": "lora", "r": 4, "target_modules": "all"}, micro_batch_size=1,
                global_batch_size=2, max_steps=2, dist_config={"name": "fsdp2", "dcp_path": None},
                kernel_config={"name": "auto", "include_kernels": "auto"})
    (v1_workspace / "train.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "train.yaml"]) == 0
    log = [json.loads(line) for line in (v1_workspace / "out" / "trainer_log.jsonl").read_text().splitlines()]
    steps = [row for row in log if "loss" in row]
    assert [row["current_steps"] for row in steps] == [1, 2] and {row["lr"] for row in steps} == {1e-4}
    assert (v1_workspace / "out" / "adapter_model.safetensors").is_file()
    export = {"model": str(tiny_llama_dir), "peft_config": {"name": "lora", "adapter_name_or_path": "out",
                                                            "export_dir": "merged", "export_size": 5}}
    (v1_workspace / "export.yaml").write_text(yaml.safe_dump(export))
    assert main(["export", "export.yaml"]) == 0
    assert (v1_workspace / "merged" / "model.safetensors").is_file()


def test_use_v1_kernels_applies_what_lf_registers_for_the_device(tiny_llama_dir, caplog):
    """v0's `use_v1_kernels`: no kernel exists for a CPU (nothing applied, as in LF); LF's only CUDA kernel changes
    MoE models of three families, which tuneforge refuses; a kernel id not registered on the device is an error."""
    from types import SimpleNamespace

    from tuneforge.model.v1_kernels import apply_v1_kernels

    dense = SimpleNamespace(config=SimpleNamespace(architectures=["LlamaForCausalLM"]))
    with caplog.at_level("INFO", logger="tuneforge.model.v1_kernels"):
        apply_v1_kernels(dense, True, "cpu")
        apply_v1_kernels(dense, "auto", "cuda")
    assert "no kernels for a cpu device" in caplog.text and "cuda_fused_moe for a cuda device" in caplog.text
    moe = SimpleNamespace(config=SimpleNamespace(architectures=["Qwen3MoeForCausalLM"]))
    apply_v1_kernels(moe, True, "cpu")
    with pytest.raises(NotSupportedError, match="fused MoE kernel \\(cuda_fused_moe, triton\\)"):
        apply_v1_kernels(moe, True, "cuda")
    with pytest.raises(ConfigError, match="kernel npu_fused_rope is not registered on a cpu device"):
        apply_v1_kernels(dense, "npu_fused_rope", "cpu")


def test_a_broken_v1_dataset_yaml_is_one_message(v1_workspace, tiny_llama_dir):
    (v1_workspace / "data" / "broken.yaml").write_text("identity: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: cannot read this v1 dataset YAML"):
        load_config_dict(v1(tiny_llama_dir, train_dataset="data/broken.yaml"))
    (v1_workspace / "data" / "list.yaml").write_text("- identity\n")
    with pytest.raises(ConfigError, match="list.yaml: a v1 dataset YAML maps dataset names to"):
        load_config_dict(v1(tiny_llama_dir, train_dataset="data/list.yaml"))
