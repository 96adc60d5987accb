"""DeepSpeed ZeRO through the HF Trainer (issue 14): `deepspeed:` checked before any process starts, LF's
examples/deepspeed/*.json shipped as they are, and 2 gloo CPU processes (DeepSpeed's CPU accelerator) with ZeRO-2 /
ZeRO-3 training exactly as DDP does and saving an adapter / a whole model that plain peft / transformers load.

The first DeepSpeed run on a machine compiles DeepSpeed's CPU shared-memory op (about 80 s on 2 cores, then cached
in ~/.cache/torch_extensions)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from multiproc import losses, max_diff, tiny_run_workspace, train
from tuneforge.config import validate, validate_parallel
from tuneforge.config.parser import load_config_dict
from tuneforge.errors import ConfigError, NotSupportedError

REPO = Path(__file__).resolve().parent.parent
DS_EXAMPLES = REPO / "examples" / "deepspeed"
HAVE_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(
    not HAVE_DEEPSPEED, reason="deepspeed is not installed (pip install 'tuneforge[deepspeed]'); its runs are skipped")

BASE = {"model_name_or_path": "some/model"}


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(validate, "cuda_available", lambda: False)
    monkeypatch.setattr(validate, "mps_available", lambda: False)
    monkeypatch.setattr(validate, "deepspeed_available", lambda: True)  # the checks below come before the import


# ------------------------------------------------------------------ one clear error before any process starts
def test_a_missing_unparsable_or_unknown_stage_config_is_one_config_error(tmp_path, monkeypatch, cpu_only):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"x.yaml: `deepspeed: nope.json`: no such file \(a relative path is read "
                                          r"from the working directory"):
        load_config_dict({**BASE, "deepspeed": "nope.json"}, source="x.yaml")
    (tmp_path / "bad.json").write_text('{"zero_optimization": {"stage": 2},}')
    with pytest.raises(ConfigError, match=r"`deepspeed: bad.json` is not valid JSON: Expecting property name .*"
                                          r"\(line 1, column 36\)"):
        load_config_dict({**BASE, "deepspeed": "bad.json"})
    (tmp_path / "z4.json").write_text('{"zero_optimization": {"stage": 4}}')
    with pytest.raises(ConfigError, match=r"`deepspeed: z4.json`: `zero_optimization.stage` is 4; DeepSpeed's ZeRO "
                                          r"stages are 0, 1, 2, 3"):
        load_config_dict({**BASE, "deepspeed": "z4.json"})
    (tmp_path / "z3.json").write_text('{"zero_optimization": {"stage": 3}}')
    with pytest.raises(ConfigError, match=r"ZeRO-3 \(`deepspeed: z3.json`\) would save each process's shard of the "
                                          r"weights.*set `\"stage3_gather_16bit_weights_on_model_save\": true`"):
        load_config_dict({**BASE, "deepspeed": "z3.json"})
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"must hold a JSON object of DeepSpeed settings, got list"):
        load_config_dict({**BASE, "deepspeed": "list.json"})


def test_deepspeed_with_fsdp_or_ppo_is_refused(cpu_only):
    ds = str(DS_EXAMPLES / "ds_z3_config.json")
    with pytest.raises(ConfigError, match=r"`deepspeed` and `fsdp` both shard the model across processes; set one"):
        load_config_dict({**BASE, "deepspeed": ds, "fsdp": "full_shard auto_wrap"})
    with pytest.raises(NotSupportedError, match=r"`deepspeed` with `stage: ppo` is not supported yet: tuneforge's PPO "
                                                r"runs its own training loop"):
        load_config_dict({**BASE, "deepspeed": ds, "stage": "ppo", "reward_model": "rm"})


def test_without_the_package_the_message_names_the_extra(monkeypatch, cpu_only):
    monkeypatch.setattr(validate, "deepspeed_available", lambda: False)
    with pytest.raises(NotSupportedError) as err:
        load_config_dict({**BASE, "deepspeed": str(DS_EXAMPLES / "ds_z2_config.json")}, source="x.yaml")
    assert str(err.value) == ("x.yaml: `deepspeed` needs the deepspeed package, which is not installed: "
                              "pip install 'tuneforge[deepspeed]'")


def test_shipped_configs_are_llama_factorys():
    lf = json.loads((REPO / "tests" / "data" / "lf_examples_v0_9_5.json").read_text(encoding="utf-8"))
    lf_configs = {Path(e["path"]).name: e["settings"] for e in lf["deepspeed_configs"]}
    shipped = sorted(p.name for p in DS_EXAMPLES.glob("*.json"))
    assert shipped == ["ds_z0_config.json", "ds_z2_config.json", "ds_z2_offload_config.json", "ds_z3_config.json",
                       "ds_z3_offload_config.json"]
    for name in shipped:
        settings = validate_parallel.read_deepspeed_config(str(DS_EXAMPLES / name))
        assert settings == lf_configs[name], name
        assert settings["train_micro_batch_size_per_gpu"] == "auto"  # filled in from the run's keys by HF


@needs_deepspeed
def test_a_deepspeed_config_loads_and_does_not_switch_on_zero3_loading_for_other_commands(cpu_only):
    from transformers.integrations import is_deepspeed_zero3_enabled

    cfg = load_config_dict({**BASE, "deepspeed": str(DS_EXAMPLES / "ds_z3_config.json")})
    assert cfg.training.deepspeed.endswith("ds_z3_config.json")
    assert not is_deepspeed_zero3_enabled()  # chat / export / prediction load whole models (train/sharding.py)


# ------------------------------------------------------------------ 2 CPU processes: ZeRO-2 / ZeRO-3 = DDP
@pytest.fixture
def workspace(tmp_path, tiny_llama_dir, monkeypatch):
    return tiny_run_workspace(tmp_path, tiny_llama_dir, monkeypatch)


@needs_deepspeed
def test_zero3_lora_trains_as_ddp_and_saves_an_adapter_peft_loads(workspace, tiny_llama_dir, one_process_runs):
    """ZeRO-3 in 2 processes (ZeRO-2 the same way: bench/RESULTS.md section 18; in one process below)."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    one_process_runs(workspace, "one")
    output = train(workspace, "output_dir=z3", "per_device_train_batch_size=4",
                   f"deepspeed={DS_EXAMPLES / 'ds_z3_config.json'}", processes=2)
    assert "distributed: world size 2, backend gloo" in output
    assert "Chunked LM loss not used" not in output  # the label-only loss runs through the DeepSpeed engine
    # ZeRO-3 loads the model already partitioned; the count is still the whole model's
    assert "trainable params: 8,192 || all params: 52,384" in output
    one = load_file(workspace / "one" / "adapter_model.safetensors")
    folder = workspace / "z3"
    assert losses(folder) == pytest.approx(losses(workspace / "one"), abs=1e-5)
    assert max_diff(one, load_file(folder / "adapter_model.safetensors")) < 1e-5
    assert not list(folder.glob("global_step*"))  # the final save is the adapter, not a DeepSpeed checkpoint
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), folder)
    merged = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(merged) == len(one) and merged  # every LoRA matrix is in the loaded model


@needs_deepspeed
def test_zero3_full_fine_tuning_saves_a_whole_model_transformers_loads(workspace, one_process_runs):
    from transformers import AutoModelForCausalLM

    full = ("finetuning_type=full", "learning_rate=1e-3")
    one_process_runs(workspace, "one", *full)
    output = train(workspace, "output_dir=z3", *full, "per_device_train_batch_size=4",
                    f"deepspeed={DS_EXAMPLES / 'ds_z3_config.json'}", processes=2)
    assert "trainable params: 44,192 || all params: 44,192" in output
    assert losses(workspace / "z3") == pytest.approx(losses(workspace / "one"), abs=1e-5)
    a = dict(AutoModelForCausalLM.from_pretrained(workspace / "one").state_dict())
    b = dict(AutoModelForCausalLM.from_pretrained(workspace / "z3").state_dict())
    assert max_diff(a, b) < 1e-5


@needs_deepspeed
def test_zero2_in_one_process_without_a_launcher(workspace, one_process_runs):
    """`tuneforge train` with `deepspeed:` and no torchrun: a process group of one (no MPI needed). ZeRO-2 here, ZeRO-3
    in one process in the QLoRA test below and in 2 processes above."""
    one_process_runs(workspace, "one")
    train(workspace, "output_dir=single", f"deepspeed={DS_EXAMPLES / 'ds_z2_config.json'}")
    assert losses(workspace / "single") == pytest.approx(losses(workspace / "one"), abs=1e-5)


@needs_deepspeed
@pytest.mark.skipif(not importlib.util.find_spec("bitsandbytes"), reason="QLoRA needs the qlora extra")
def test_zero3_qlora_loads_without_a_device_map_and_trains_as_without_deepspeed(workspace):
    """LF: under ZeRO-3 the 4-bit model is loaded without a device_map (transformers refuses one with ZeRO-3) and
    8-bit weights are refused (they do not shard)."""
    zero3 = f"deepspeed={DS_EXAMPLES / 'ds_z3_config.json'}"
    train(workspace, "output_dir=one", "quantization_bit=4")
    train(workspace, "output_dir=z3", "quantization_bit=4", zero3)
    assert losses(workspace / "z3") == pytest.approx(losses(workspace / "one"), abs=1e-5)


def test_quantized_loading_under_weight_sharding(monkeypatch):
    import transformers.integrations

    from tuneforge.config.args import ModelArguments
    from tuneforge.errors import NotSupportedError
    from tuneforge.model.quantization import quantization_kwargs

    monkeypatch.setattr(transformers.integrations, "is_deepspeed_zero3_enabled", lambda: True)
    assert "device_map" not in quantization_kwargs(ModelArguments(model_name_or_path="m", quantization_bit=4), None)
    with pytest.raises(NotSupportedError, match="8-bit weights cannot be sharded by DeepSpeed ZeRO-3 or FSDP"):
        quantization_kwargs(ModelArguments(model_name_or_path="m", quantization_bit=8), None)
