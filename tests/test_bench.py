"""`tuneforge bench`: FLOPs model by hand, step timing, GEMM cache, and one real run on a tiny model."""

from __future__ import annotations

import json

import pytest
import yaml

from tuneforge.bench import flops
from tuneforge.bench.gemm import CACHE_FILE, cache_key, gemm_peak_gflops
from tuneforge.bench.runner import StepTimer, _weights_dtype, bench_overrides
from tuneforge.errors import NotSupportedError

SHAPE = flops.ModelFlopsShape(linear_params=1000, trainable_linear_params=100, head_params=50,
                              head_trainable=False, num_layers=2, attention_width=8)


def test_flops_by_hand():
    # 2N forward + 2N backward through activations + 2 N_trainable weight gradients
    assert flops.linear_flops_per_token(SHAPE) == 4 * 1000 + 2 * 100
    assert flops.head_flops_per_label(SHAPE) == 4 * 50
    # causal attention, length 3: 2 matmuls x 2 x (3*4/2) x 8 wide x 2 layers, x3 for fwd + bwd
    assert flops.attention_flops_per_sample(SHAPE, 3) == 3 * 2 * 2 * 6 * 8 * 2
    per_token = flops.attention_flops_per_token(SHAPE, [3, 1])
    assert per_token == (flops.attention_flops_per_sample(SHAPE, 3) + flops.attention_flops_per_sample(SHAPE, 1)) / 4
    assert flops.step_flops(SHAPE, 10, 4, 7.0) == 10 * (4200 + 7.0) + 4 * 200


def test_shape_from_lora_model_counts_base_and_adapter(tiny_llama_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    base_linear = sum(m.weight.numel() for n, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
    model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shape = flops.shape_from_model(model)
    assert shape.linear_params == base_linear + lora
    assert shape.trainable_linear_params == lora
    assert shape.head_params == model.config.vocab_size * 32 and not shape.head_trainable
    assert (shape.num_layers, shape.attention_width) == (2, 32)


def test_packed_4bit_weights_count_their_real_shape_and_not_as_the_dtype(tiny_llama_dir):
    """A bitsandbytes 4-bit weight is a (n/2, 1) uint8 tensor with the real shape in `quant_state`:
    the FLOPs count the real shape, and the MFU peak is the float dtype's (no uint8 GEMM on CUDA)."""
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    before = flops.shape_from_model(model)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
            shape = module.weight.shape
            packed = torch.nn.Parameter(torch.zeros(shape.numel() // 2, 1, dtype=torch.uint8), requires_grad=False)
            packed.quant_state = SimpleNamespace(shape=shape)
            module.weight = packed
    assert flops.shape_from_model(model).linear_params == before.linear_params
    assert _weights_dtype(model) == "float32"


def test_step_timer_measures_only_after_warmup():
    counters = iter([(0, 0, 0), (100, 40, 90), (300, 100, 250), (600, 160, 480)])
    timer = StepTimer(warmup=1, steps=2, counters=lambda: next(counters))

    class State:
        global_step = 0

    class Control:
        should_training_stop = False

    state, control = State(), Control()
    timer.on_train_begin(None, state, control)
    for step in (1, 2, 3):
        state.global_step = step
        timer.on_step_end(None, state, control)
        assert control.should_training_stop == (step == 3)
    # replace the wall/CPU clocks with known values: steps 1 -> 3 took 4 s
    timer.marks = [(s, float(t), float(t) / 2, *n) for (s, _, _, *n), t in zip(timer.marks, (0, 1, 3, 5))]
    measured = timer.measured()
    assert measured["seconds"] == 4.0 and measured["seconds_per_step"] == 2.0
    assert measured["real_tokens"] == 500 and measured["label_tokens"] == 120 and measured["computed_tokens"] == 390
    assert measured["cpu_seconds"] == 2.0 and measured["first_step_seconds"] == 1.0


def test_step_timer_reports_too_few_steps():
    timer = StepTimer(warmup=2, steps=5, counters=lambda: (0, 0, 0))
    timer.marks = [(0, 0.0, 0.0, 0, 0, 0), (1, 1.0, 1.0, 5, 2, 5)]
    with pytest.raises(NotSupportedError, match=r"stopped after 1 optimizer steps.*warm-up \(2\).*\(5\)"):
        timer.measured()


def test_bench_overrides_come_after_the_users():
    out = bench_overrides(["lora_rank=4", "max_steps=999"], steps=5, warmup=2, output_dir="/tmp/x")
    assert out[:2] == ["lora_rank=4", "max_steps=999"]
    assert "max_steps=7" in out[2:] and "save_strategy='no'" in out and "output_dir=/tmp/x" in out


def test_gemm_peak_is_cached(tmp_path):
    path = tmp_path / CACHE_FILE
    path.write_text(json.dumps({cache_key("float32"): 123.5}))
    assert gemm_peak_gflops("float32", tmp_path) == 123.5  # from the cache, not measured


def test_gemm_peak_remeasured_keeps_the_higher_value(tmp_path, monkeypatch):
    import tuneforge.bench.gemm as gemm

    path = tmp_path / CACHE_FILE
    path.write_text(json.dumps({cache_key("float32"): 20.0}))  # first measured on a busy machine
    monkeypatch.setattr(gemm, "measure_gemm_gflops", lambda dtype_name: 150.04)
    assert gemm_peak_gflops("float32", tmp_path, refresh=True) == 150.0
    monkeypatch.setattr(gemm, "measure_gemm_gflops", lambda dtype_name: 60.0)  # busy again
    assert gemm_peak_gflops("float32", tmp_path, refresh=True) == 150.0
    assert json.loads(path.read_text())[cache_key("float32")] == 150.0


ROWS = [
    {"instruction": "Who are you?", "input": "", "output": "I am Forgey, made by the tuneforge team."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5."},
    {"instruction": "你是谁？", "input": "", "output": "我是 Forgey。"},
] * 6


def test_bench_runs_the_real_recipe(tmp_path, tiny_llama_dir, monkeypatch, capsys):
    from tuneforge.cli.main import main

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / CACHE_FILE).write_text(json.dumps({cache_key("float32"): 50.0}))
    data = tmp_path / "data"
    data.mkdir()
    (data / "tiny.json").write_text(json.dumps(ROWS, ensure_ascii=False))
    (data / "dataset_info.json").write_text(json.dumps({"tiny": {"file_name": "tiny.json"}}))
    config = {"model_name_or_path": str(tiny_llama_dir), "stage": "sft", "finetuning_type": "lora", "dataset": "tiny",
              "dataset_dir": str(data), "template": "chatml", "cutoff_len": 64, "output_dir": str(tmp_path / "o"),
              "per_device_train_batch_size": 3, "num_train_epochs": 10, "save_steps": 1}
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "r.json"
    assert main(["bench", str(tmp_path / "x.yaml"), "--steps", "3", "--warmup", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["steps"] == 3 and result["warmup_steps"] == 1 and result["finetuning_type"] == "lora"
    assert result["gemm_peak_gflops"] == 50.0 and 0 < result["mfu"]
    assert result["real_tokens_per_s"] > result["label_tokens_per_s"] > 0
    assert result["peak_rss_gib"] > 0.2 and len(result["losses"]) == 4
    assert not (tmp_path / "o" / "checkpoint-1").exists()  # the bench never saves
    printed = capsys.readouterr().out
    assert "real tokens/s" in printed and "MFU" in printed and "load average" in printed


def test_matmul_bound_records_and_replays_the_products_of_a_step(repo_root):
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("matmul_bound", repo_root / "bench" / "matmul_bound.py")
    bound = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bound)
    n, a, h, o = 5, 7, 11, 3
    model = torch.nn.Sequential(torch.nn.Linear(a, h, bias=False), torch.nn.Linear(h, o, bias=False))
    with bound.RecordKernels() as recorder:
        model(torch.randn(n, a)).sum().backward()
    # forward 2 products; backward: both weight gradients + the hidden gradient (not the input's)
    assert len(recorder.calls) == 5
    assert bound.matmul_flops(recorder.calls) == 2 * n * (2 * a * h + 3 * h * o)
    assert bound.replay(recorder.calls) > 0
