"""Config layer: loading, overrides, errors with file/key/value, support table, immutability, help."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import pytest

from tuneforge.config import (
    FinetuningArguments,
    RunConfig,
    effective_lora_alpha,
    format_key_help,
    load_config,
    load_config_dict,
    parse_overrides,
)
from tuneforge.config import validate
from tuneforge.errors import ConfigError, NotSupportedError

LF_SFT_YAML = """\
### model
model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct

### method
stage: sft
do_train: true
finetuning_type: lora
lora_target: all

### dataset
dataset: identity,alpaca_en_demo
template: qwen
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16

### output
output_dir: saves/x
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null
"""

BASE = {"model_name_or_path": "some/model"}


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    """Make hardware detection deterministic: a machine without CUDA, MPS or bitsandbytes."""
    monkeypatch.setattr(validate, "cuda_available", lambda: False)
    monkeypatch.setattr(validate, "mps_available", lambda: False)
    monkeypatch.setattr(validate, "bitsandbytes_version", lambda: None)


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_realistic_llamafactory_sft_yaml_loads(tmp_path):
    path = write(tmp_path, LF_SFT_YAML)
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.config_path == path.resolve()
    assert cfg.config_dir == tmp_path.resolve()
    assert cfg.model.model_name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert cfg.finetuning.stage == "sft"
    assert cfg.finetuning.finetuning_type == "lora"
    assert cfg.finetuning.lora_target == ("all",)
    assert cfg.finetuning.plot_loss is True
    assert cfg.data.dataset == ("identity", "alpaca_en_demo")
    assert cfg.data.template == "qwen"
    assert (cfg.data.cutoff_len, cfg.data.max_samples, cfg.data.preprocessing_num_workers) == (2048, 1000, 16)
    assert cfg.data.overwrite_cache is True
    t = cfg.training
    assert t.do_train is True and t.output_dir == "saves/x"
    assert t.overwrite_output_dir is True and t.save_only_model is False
    assert t.report_to == []
    assert t.learning_rate == pytest.approx(1e-4)
    assert t.num_train_epochs == 3.0 and t.per_device_train_batch_size == 1
    assert t.gradient_accumulation_steps == 8
    assert t.lr_scheduler_type.value == "cosine"
    assert t.warmup_steps == pytest.approx(0.1)  # transformers 5: warmup_steps < 1 is a fraction
    assert t.bf16 is True and t.use_cpu is True  # bf16 allowed on CPU
    assert (t.logging_steps, t.save_steps, t.ddp_timeout) == (10, 500, 180000000)
    assert t.resume_from_checkpoint is None
    assert cfg.raw["warmup_ratio"] == 0.1 and cfg.raw["dataset"] == "identity,alpaca_en_demo"


def test_json_config_loads(tmp_path):
    path = write(tmp_path, json.dumps({**BASE, "lora_rank": 4, "stage": "pt"}), "cfg.json")
    cfg = load_config(path, require_output_dir=False)
    assert cfg.finetuning.lora_rank == 4 and cfg.finetuning.stage == "pt"


def test_overrides_take_precedence_over_the_file(tmp_path):
    path = write(tmp_path, "model_name_or_path: m\nlora_rank: 8\nlearning_rate: 1.0e-4\nbf16: true\n")
    cfg = load_config(
        path,
        ["lora_rank=16", "--learning_rate", "2e-4", "--bf16=false", "--plot_loss", "lora_target=[q_proj, v_proj]"],
    )
    assert cfg.finetuning.lora_rank == 16
    assert cfg.training.learning_rate == pytest.approx(2e-4)
    assert cfg.training.bf16 is False
    assert cfg.finetuning.plot_loss is True
    assert cfg.finetuning.lora_target == ("q_proj", "v_proj")
    assert cfg.raw["lora_rank"] == 16


def test_override_forms():
    parsed = parse_overrides(
        ["--do_train", "lora_rank=32", "--template", "qwen", "--default_system=Note: be brief", "--max_samples="],
        ["do_train", "lora_rank", "template", "default_system", "max_samples"],
    )
    assert parsed == {
        "do_train": True,
        "lora_rank": 32,
        "template": "qwen",
        "default_system": "Note: be brief",
        "max_samples": None,
    }
    with pytest.raises(ConfigError, match="expected `key=value`, `--key value` or `--key=value`"):
        parse_overrides(["lora_rank"])


def test_unknown_key_suggests_the_closest_name(tmp_path):
    path = write(tmp_path, "model_name_or_path: m\nlora_rnak: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: unknown key `lora_rnak`; did you mean `lora_rank`?"


def test_unknown_training_key_and_override_origin():
    with pytest.raises(ConfigError) as err:
        load_config_dict(BASE, overrides=["--learnig_rate=1e-3"])
    assert str(err.value) == "command-line override: unknown key `learnig_rate`; did you mean `learning_rate`?"


def test_several_problems_are_reported_together():
    with pytest.raises(ConfigError) as err:
        load_config_dict({**BASE, "lora_rnak": 8, "cutoff_len": "long"}, source="my.yaml")
    assert str(err.value) == (
        "2 problems in the configuration:\n"
        "  - my.yaml: unknown key `lora_rnak`; did you mean `lora_rank`?\n"
        "  - my.yaml: `cutoff_len` expects an integer, got 'long' (str)"
    )


def test_wrong_type_names_key_value_and_expected_type():
    with pytest.raises(ConfigError) as err:
        load_config_dict({**BASE, "lora_rank": "eight"}, source="a.yaml")
    assert str(err.value) == "a.yaml: `lora_rank` expects an integer, got 'eight' (str)"
    with pytest.raises(ConfigError) as err:
        load_config_dict({**BASE, "plot_loss": 3}, source="a.yaml")
    assert str(err.value) == "a.yaml: `plot_loss` expects true or false, got 3 (int)"
    with pytest.raises(ConfigError, match=r"`lr_scheduler_type` expects one of: linear, cosine, .*got 'cosin'"):
        load_config_dict({**BASE, "lr_scheduler_type": "cosin"})
    with pytest.raises(ConfigError, match=r"`truncation` expects one of: keep_prompt, drop, got 'cut' \(str\)"):
        load_config_dict({**BASE, "truncation": "cut"})


def test_harmless_yaml_type_quirks_are_converted(tmp_path):
    # PyYAML reads `1e-4` (no dot) as a string; quoted booleans and integral floats are common too.
    path = write(tmp_path, "model_name_or_path: m\nlearning_rate: 1e-4\nplot_loss: 'true'\ncutoff_len: 1024.0\n")
    cfg = load_config(path)
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    assert cfg.finetuning.plot_loss is True
    assert cfg.data.cutoff_len == 1024 and isinstance(cfg.data.cutoff_len, int)


def test_bare_yaml_no_means_the_choice_no(tmp_path):
    # YAML 1.1 reads `save_strategy: no` as false; "no" is the only thing it can mean there.
    path = write(tmp_path, "model_name_or_path: m\nsave_strategy: no\neval_strategy: no\ndo_train: no\n")
    cfg = load_config(path)
    assert cfg.training.save_strategy == "no" and cfg.training.eval_strategy == "no"
    assert cfg.training.do_train is False  # a real boolean stays one
    with pytest.raises(ConfigError, match=r"`lr_scheduler_type` expects one of: linear, .*got False \(bool\)"):
        load_config_dict({**BASE, "lr_scheduler_type": False})  # no "no" among its choices


def test_malformed_yaml_names_file_line_and_column(tmp_path):
    path = write(tmp_path, "model_name_or_path: m\nlora_rank: [8\nstage: sft\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert re.fullmatch(rf"{re.escape(str(path))}: invalid YAML at line \d+, column \d+: .+", str(err.value))
    assert str(err.value).startswith(f"{path}: invalid YAML at line 3, column 6:")


def test_malformed_json_names_file_line_and_column(tmp_path):
    path = write(tmp_path, '{"model_name_or_path": "m",\n "lora_rank": 8,\n}', "cfg.json")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: invalid JSON at line 3, column 1: Expecting property name enclosed in double quotes"


def test_duplicate_yaml_key_and_missing_file_and_top_level_list(tmp_path):
    path = write(tmp_path, "model_name_or_path: m\nlora_rank: 8\nlora_rank: 16\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: key `lora_rank` appears twice (lines 2 and 3); keep one"
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected `key: value` lines at the top level, got a list"):
        load_config(write(tmp_path, "- a\n- b\n", "list.yaml"))


def test_unsupported_key_with_non_default_value(tmp_path):
    path = write(tmp_path, "model_name_or_path: m\nuse_unsloth: true\n")
    with pytest.raises(NotSupportedError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: `use_unsloth` is not supported yet by tuneforge (")
    assert str(err.value).endswith("remove it or set it to its default `False`")
    # The default value of a known-but-unimplemented key is fine (LF files often spell defaults out).
    cfg = load_config_dict({**BASE, "use_unsloth": False, "streaming": False})
    assert cfg.model.use_unsloth is False


def test_unsupported_values_and_stages():
    with pytest.raises(NotSupportedError, match=r"`infer_backend: vllm` is not supported yet .*supported: huggingface"):
        load_config_dict({**BASE, "infer_backend": "vllm"})
    assert load_config_dict({**BASE, "stage": "dpo"}, source="d.yaml").finetuning.stage == "dpo"
    with pytest.raises(ConfigError, match=r"unknown stage `sftt`; expected one of: sft, pt, rm, dpo, kto, ppo"):
        load_config_dict({**BASE, "stage": "sftt"})
    with pytest.raises(ConfigError) as err:
        load_config_dict({**BASE, "finetuning_type": "qlora"}, source="f.yaml")
    assert str(err.value) == "f.yaml: `finetuning_type` must be one of: lora, freeze, full, oft; got 'qlora'"
    assert load_config_dict({**BASE, "finetuning_type": "oft"}).finetuning.finetuning_type == "oft"
    # Ray training (tests/test_ray.py) is checked against the machine: LF's default GPU workers here on CPU
    ray_installed = importlib.util.find_spec("ray") is not None
    with pytest.raises(NotSupportedError, match=r"`resources_per_worker: \{\"GPU\": 1\}` \(LF's default\) gives each"
                       if ray_installed else r"needs Ray Train, which is not installed: pip install 'tuneforge\[ray\]'"):
        load_config_dict({**BASE, "do_train": True, "output_dir": "out", "ray_num_workers": 4})


def test_fp16_on_cpu_is_refused_and_bf16_is_allowed():
    with pytest.raises(ConfigError) as err:
        load_config_dict({**BASE, "fp16": True}, source="x.yaml")
    assert str(err.value) == "x.yaml: fp16 training needs a CUDA GPU; use bf16: true or fp32 on CPU"
    cfg = load_config_dict({**BASE, "bf16": True})
    assert cfg.training.bf16 is True and cfg.training.use_cpu is True


def test_qlora_needs_bitsandbytes_and_its_cpu_backend_without_cuda(monkeypatch):
    with pytest.raises(NotSupportedError) as err:
        load_config_dict({**BASE, "quantization_bit": 4}, source="q.yaml")
    assert str(err.value) == (
        "q.yaml: `quantization_bit: 4` (QLoRA) needs bitsandbytes, which is not installed: pip install tuneforge[qlora]"
    )
    monkeypatch.setattr(validate, "bitsandbytes_version", lambda: (0, 45))
    with pytest.raises(NotSupportedError) as err:
        load_config_dict({**BASE, "quantization_bit": 8}, source="q.yaml")
    assert str(err.value) == ("q.yaml: `quantization_bit: 8` (QLoRA) without a CUDA GPU needs bitsandbytes >= 0.49 "
                              "(its CPU backend); 0.45 is installed: pip install -U tuneforge[qlora]")
    monkeypatch.setattr(validate, "cuda_available", lambda: True)
    assert load_config_dict({**BASE, "quantization_bit": 4}).model.quantization_bit == 4
    monkeypatch.setattr(validate, "cuda_available", lambda: False)
    monkeypatch.setattr(validate, "bitsandbytes_version", lambda: (0, 50))
    assert load_config_dict({**BASE, "quantization_bit": 4}).model.quantization_bit == 4
    with pytest.raises(ConfigError, match="`quantization_bit` must be 4 or 8, got 3"):
        load_config_dict({**BASE, "quantization_bit": 3})


@pytest.mark.parametrize("extra, message", [
    ({"adapter_name_or_path": "a1,a2"}, "a quantized model takes one adapter, got 2; merge them into the unquantized "
                                        "model first (`tuneforge export`)"),
    ({"adapter_name_or_path": "a1", "create_new_adapter": True, "do_train": True, "dataset": "d", "output_dir": "o"},
     "`create_new_adapter` would merge the adapter into the quantized model; merge it into the unquantized model "
     "first"),
    ({"quantization_device_map": "auto", "do_train": True, "dataset": "d", "output_dir": "o"},
     "`quantization_device_map: auto` is for inference; a training run keeps each process's model on its own "
     "device"),
    ({"finetuning_type": "freeze"}, "`quantization_bit` (QLoRA) only works with `finetuning_type: lora` (or oft)"),
])
def test_qlora_rules_of_llamafactory(monkeypatch, extra, message):
    monkeypatch.setattr(validate, "bitsandbytes_version", lambda: (0, 50))
    with pytest.raises(ConfigError) as err:
        load_config_dict({**BASE, "quantization_bit": 4, **extra}, source="q.yaml")
    assert str(err.value).endswith(message)


@pytest.mark.parametrize("settings, message", [
    ({"ref_model_quantization_bit": 4}, "without `ref_model` the reference is the policy's starting point, loaded as "
                                        "the policy is: set `ref_model` or remove the key"),
    ({"reward_model_quantization_bit": 8}, "with `lora` there is no separate model to quantize: remove the key"),
    ({"offload_folder": "spill"}, "without that device map nothing is offloaded: remove the key or set "
                                  "`quantization_device_map: auto`"),
])
def test_keys_for_a_model_the_run_does_not_have_are_refused(monkeypatch, settings, message):
    """LF ignores these where there is no such model or device map; here they would be accepted and do nothing."""
    monkeypatch.setattr(validate, "bitsandbytes_version", lambda: (0, 50))
    with pytest.raises(ConfigError) as err:
        load_config_dict({**BASE, **settings}, source="q.yaml")
    assert str(err.value).endswith(message)
    load_config_dict({**BASE, "ref_model": "r", "reward_model_type": "full", "quantization_device_map": "auto",
                      **settings})  # where the model / device map exists: accepted (and used: tests/test_qlora.py)


def test_training_requires_dataset_and_output_dir():
    with pytest.raises(ConfigError) as err:
        load_config_dict({**BASE, "do_train": True, "output_dir": "o"}, source="t.yaml")
    assert str(err.value).startswith("t.yaml: `dataset` is required when `do_train` is true")
    with pytest.raises(ConfigError) as err:
        load_config_dict({**BASE, "do_train": True, "dataset": "a"}, source="t.yaml")
    assert str(err.value) == "t.yaml: `output_dir` is required when `do_train` is true"
    cfg = load_config_dict({**BASE, "do_train": True, "dataset": "a"}, require_output_dir=False)
    assert cfg.data.dataset == ("a",)
    with pytest.raises(ConfigError, match="`model_name_or_path` is required"):
        load_config_dict({"stage": "sft"})


def test_cross_key_checks():
    with pytest.raises(ConfigError, match="`mask_history` and `train_on_prompt` cannot both be true"):
        load_config_dict({**BASE, "mask_history": True, "train_on_prompt": True})
    with pytest.raises(ConfigError, match=r"`use_dora` only applies to `finetuning_type: lora` \(got `full`\)"):
        load_config_dict({**BASE, "finetuning_type": "full", "use_dora": True})
    with pytest.raises(ConfigError, match="set either `warmup_ratio` \\(0.1\\) or `warmup_steps` \\(10.0\\), not both"):
        load_config_dict({**BASE, "warmup_ratio": 0.1, "warmup_steps": 10})
    with pytest.raises(ConfigError, match="`interleave_probs` has 1 values but `dataset` names 2 datasets"):
        load_config_dict({**BASE, "dataset": "a,b", "mix_strategy": "interleave_under", "interleave_probs": "1.0"})


def test_legacy_transformers4_keys():
    cfg = load_config_dict({**BASE, "evaluation_strategy": "steps", "eval_steps": 5, "group_by_length": True})
    assert cfg.training.eval_strategy.value == "steps" and cfg.training.eval_steps == 5
    assert cfg.training.train_sampling_strategy == "group_by_length"
    assert load_config_dict({**BASE, "save_safetensors": True}).training.save_only_model is False
    with pytest.raises(NotSupportedError, match=r"`save_safetensors: False` is not supported by tuneforge"):
        load_config_dict({**BASE, "save_safetensors": False})
    cfg = load_config_dict({**BASE, "disable_shuffling": True})
    assert cfg.training.train_sampling_strategy == "sequential"


def test_lora_alpha_is_derived_not_stored():
    cfg = load_config_dict(BASE)
    assert cfg.finetuning.lora_alpha is None
    assert effective_lora_alpha(cfg.finetuning) == 16
    assert cfg.finetuning.effective_lora_alpha == 16
    assert effective_lora_alpha(FinetuningArguments(lora_rank=32)) == 64
    assert effective_lora_alpha(FinetuningArguments(lora_rank=32, lora_alpha=7)) == 7


def test_name_lists_are_normalised_to_tuples():
    cfg = load_config_dict(
        {
            **BASE,
            "dataset": " identity, alpaca_en_demo ,",
            "eval_dataset": ["dev_a", "dev_b"],
            "lora_target": "q_proj,v_proj",
            "adapter_name_or_path": "saves/a,saves/b",
        }
    )
    assert cfg.data.dataset == ("identity", "alpaca_en_demo")
    assert cfg.data.eval_dataset == ("dev_a", "dev_b")
    assert cfg.finetuning.lora_target == ("q_proj", "v_proj")
    assert cfg.finetuning.freeze_trainable_modules == ("all",)
    assert cfg.model.adapter_name_or_path == ("saves/a", "saves/b")
    assert load_config_dict(BASE).data.dataset is None


def test_config_is_immutable():
    cfg = load_config_dict({**BASE, "template": "auto"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.finetuning.lora_rank = 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.template = "qwen"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = None
    with pytest.raises(TypeError):
        cfg.raw["lora_rank"] = 64
    changed = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, template="qwen"))
    assert changed.data.template == "qwen" and cfg.data.template == "auto"


def test_format_key_help_lists_every_section_with_defaults():
    text = format_key_help()
    for title in ("model:", "data:", "finetuning:", "generating:", "training (HF"):
        assert f"\n{title}" in text
    assert re.search(r"^  lora_rank +8 +LoRA rank\.$", text, re.M)
    assert re.search(r"^  learning_rate +5e-05 +", text, re.M)
    assert re.search(r"^  template +null +.*auto", text, re.M)
    assert re.search(r"^  use_unsloth +false +.*\[not supported yet\]$", text, re.M)
    assert re.search(r"^  warmup_ratio +0\.0 +", text, re.M)


def test_llamafactory_webui_style_file_with_spelled_out_defaults(tmp_path):
    # LF's web UI writes many keys at their default value, including ones tuneforge does not implement.
    text = LF_SFT_YAML + (
        "enable_thinking: true\nimage_max_pixels: 589824\nvideo_max_pixels: 65536\nfreeze_vision_tower: true\n"
        "freeze_multi_modal_projector: true\nfreeze_language_model: false\nquantization_method: bnb\n"
        "double_quantization: true\ninclude_num_input_tokens_seen: true\noptim: adamw_torch\npacking: false\n"
        "lora_dropout: 0\nlora_rank: 8\nlora_alpha: 16\nmax_grad_norm: 1.0\nwarmup_steps: 0\n"
        "trust_remote_code: true\nflash_attn: auto\ndataset_dir: data\nval_size: 0\nuse_swanlab: false\n"
        "streaming: false\ndeepspeed: null\n"
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.data.packing is False and cfg.finetuning.lora_dropout == 0.0
    assert cfg.finetuning.lora_alpha == 16 and cfg.training.include_num_input_tokens_seen == "all"
    assert cfg.training.optim.value == "adamw_torch" and cfg.model.trust_remote_code is True


def test_hf_training_argument_errors_become_config_errors():
    with pytest.raises(ConfigError) as err:
        load_config_dict(
            {**BASE, "load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "epoch"},
            source="h.yaml",
        )
    assert str(err.value).startswith("h.yaml: invalid training arguments: --load_best_model_at_end requires")


def test_support_tables_only_name_known_keys():
    from tuneforge.config import support
    from tuneforge.config.catalogue import field_default, key_catalogue

    catalogue = key_catalogue()
    assert set(support.UNSUPPORTED_KEYS) <= set(catalogue)
    for key, (accepted, _) in support.UNSUPPORTED_VALUES.items():
        assert field_default(catalogue[key][0][1]) in accepted, key
    for legacy in support.LEGACY_TRAINING_KEYS.values():
        assert legacy.target is None or legacy.target in catalogue
    assert not set(support.LEGACY_TRAINING_KEYS) & set(catalogue)
    assert support.supported_stages() == ("sft", "pt", "rm", "dpo", "kto", "ppo", "grpo")


def test_predict_with_generate_rules():
    train = {**BASE, "do_train": True, "dataset": "a", "output_dir": "o", "predict_with_generate": True}
    # LF 0.9.5: allowed while training (prediction after training generates); evaluation would generate too
    cfg = load_config_dict({**train, "do_predict": True, "eval_dataset": "a"})
    assert cfg.training.do_train and cfg.training.do_predict and cfg.training.predict_with_generate
    with pytest.raises(NotSupportedError, match="`predict_with_generate` in a training run with evaluation"):
        load_config_dict({**train, "eval_dataset": "a", "eval_strategy": "steps"})
    with pytest.raises(ConfigError, match="`predict_with_generate` needs `stage: sft`"):
        load_config_dict({**train, "stage": "dpo"})
    cfg = load_config_dict({**BASE, "do_predict": True, "predict_with_generate": True, "eval_dataset": "a"})
    assert cfg.training.predict_with_generate is True


# ------------------------------------------------------------------ validation without transformers (issue 17)
def test_training_key_snapshot_matches_the_installed_transformers():
    """config/training_fields.json is what the installed transformers says; regenerate it after an upgrade:
    python -m tuneforge.config.training_fields --write"""
    import json

    from tuneforge.config.training_fields import SNAPSHOT, live_snapshot

    assert json.loads(SNAPSHOT.read_text(encoding="utf-8"))["fields"] == live_snapshot()


def test_a_config_error_is_reported_without_importing_torch_or_transformers(repo_root):
    import subprocess
    import sys

    code = ("import sys; from tuneforge.cli.main import main; "
            "rc = main(['train', 'examples/demo_lora_sft.yaml', 'lerning_rate=1']); "
            "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules, 'datasets' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["2", "False", "False", "False"], result.stdout + result.stderr
    assert "unknown key `lerning_rate`; did you mean `learning_rate`?" in result.stderr
