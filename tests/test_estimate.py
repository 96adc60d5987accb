"""The memory estimator's arithmetic: parameter counts against real models, parts by hand."""

from __future__ import annotations

import json

import pytest

from tuneforge.errors import ConfigError, ModelError
from tuneforge.estimate import (
    PUBLISHED_SHAPES,
    DecoderShape,
    EstimateSpec,
    estimate_memory,
    hardware_table,
    load_shape,
    shape_from_config,
)
from tuneforge.estimate.cli import main_estimate
from tuneforge.estimate.memory import RUNTIME_BYTES

# hidden 8, 2 heads of 4 (q 8 wide), 1 KV head (k/v 4 wide), MLP 16, 2 layers, vocab 32, untied
SMALL = DecoderShape("small", hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, vocab=32)


def test_parameter_counts_by_hand():
    # attention 8*8 + 8*4 + 8*4 + 8*8 = 192, MLP 8*16*2 + 16*8 = 384, norms 2*8 -> 592 per layer
    assert SMALL.layer_params() == 592
    # 2 layers + embedding 256 + head 256 + final norm 8
    assert SMALL.total_params == 2 * 592 + 256 + 256 + 8 == 1704
    # LoRA r=2 on q,k,v,o,gate,up,down: 2*(16+12+12+16+24+24+24) = 256 per layer
    assert SMALL.lora_params(2) == 512


def test_memory_parts_by_hand_lora_fp32():
    est = estimate_memory(EstimateSpec(SMALL, "lora", "fp32", batch=1, cutoff=4, lora_rank=2))
    assert est.trainable_params == 512
    assert est.parts["weights"] == 1704 * 4 + 512 * 4
    assert est.parts["gradients"] == 512 * 4
    assert est.parts["optimizer (AdamW)"] == 2 * 512 * 4
    # per layer (T=4 tokens, fp32): norms 2*4*8*(4+4) = 512; attention q, output, o_proj input
    # 3*4*8*4 + k, v at GQA width 2*4*4*4 + logsumexp 4*2*4 = 544; MLP 4*4*16*4 = 1024;
    # LoRA 7*4*2*4 = 224 -> 2304; x2 layers + final norm 4*8*8 = 256 (no mask: packed SDPA)
    assert est.parts["activations"] == 2 * 2304 + 256
    # one chunk of 4 rows: the fp32 logits buffer 4*32*4 (it becomes the gradient in place)
    # + d hidden of the 4 label rows 4*8*4
    assert est.parts["logits + loss"] == 512 + 128
    # allocator slack: 0.5 * 4864 - gradients 2048 - optimizer 4096 < 0 -> 0
    assert est.parts["allocator slack (CPU)"] == 0
    assert est.total == 8864 + 2048 + 4096 + 4864 + 640 + RUNTIME_BYTES["cpu"]
    gpu = estimate_memory(EstimateSpec(SMALL, "lora", "fp32", batch=1, cutoff=4, lora_rank=2, device="cuda"))
    assert gpu.parts["activations"] == 2 * 2304 + 256 and "allocator slack (CPU)" not in gpu.parts
    assert gpu.parts["runtime"] == RUNTIME_BYTES["cuda"]


def test_cpu_allocator_slack_shows_only_beyond_gradient_and_optimizer_memory():
    est = estimate_memory(EstimateSpec(SMALL, "lora", "fp32", batch=4, cutoff=64, lora_rank=2))
    expected = 0.5 * est.parts["activations"] - est.parts["gradients"] - est.parts["optimizer (AdamW)"]
    assert expected > 0 and est.parts["allocator slack (CPU)"] == expected


def test_gradient_checkpointing_keeps_layer_inputs_only():
    est = estimate_memory(EstimateSpec(SMALL, "lora", "fp32", batch=1, cutoff=4, lora_rank=2, grad_ckpt=True))
    # each layer's input 4*8*4 = 128 (x2), one layer recomputed 2304, final norm 256
    assert est.parts["activations"] == 2 * 128 + 2304 + 256


def test_full_bf16_keeps_fp32_master_weights_and_autocast_copies():
    est = estimate_memory(EstimateSpec(SMALL, "full", "bf16", batch=1, cutoff=4))
    assert est.parts["weights"] == 1704 * 4
    assert est.parts["autocast weight copies"] == 1704 * 2
    assert est.parts["optimizer (AdamW)"] == 1704 * 8
    pure = estimate_memory(EstimateSpec(SMALL, "full", "bf16", batch=1, cutoff=4, pure_bf16=True))
    assert pure.parts["weights"] == 1704 * 2 and "autocast weight copies" not in pure.parts


def test_qlora_int4_weights_and_chunked_vs_full_logits():
    est = estimate_memory(EstimateSpec(SMALL, "qlora", "int4", batch=2, cutoff=8, lora_rank=2))
    linear = 2 * 576
    assert est.parts["weights"] == pytest.approx(linear * (0.5 + 0.127 / 8) + (1704 - linear) * 2 + 512 * 4)
    chunked = estimate_memory(EstimateSpec(SMALL, "lora", "fp32", batch=4, cutoff=512, loss_chunk=1024))
    full = estimate_memory(EstimateSpec(SMALL, "lora", "fp32", batch=4, cutoff=512, chunked_logits=False))
    assert chunked.parts["logits + loss"] == 1024 * 32 * 4 + 2048 * 8 * 4
    assert full.parts["logits + loss"] == 2048 * 32 * 14  # logits, log-softmax and both gradients


def test_freeze_counts_only_trainable_layers():
    est = estimate_memory(EstimateSpec(SMALL, "freeze", "fp32", batch=1, cutoff=4, freeze_trainable_layers=1))
    assert est.trainable_params == 592
    per_layer = 2 * 4 * 8 * (4 + 4 + 4) + 544 + 1024  # trainable norm weights keep their input too
    assert est.parts["activations"] == per_layer + 256


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_counts_match_real_models_and_peft(fixture, request):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = request.getfixturevalue(fixture)
    shape = load_shape(str(folder / "config.json"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert shape.total_params == sum(p.numel() for p in model.parameters())
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets))
    assert shape.lora_params(4) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_published_shapes_have_their_nominal_sizes():
    expected = {"7B": 6.74e9, "14B": 14.8e9, "30B": 32.5e9, "70B": 69.0e9, "110B": 111e9, "8x7B": 46.7e9, "8x22B": 141e9}
    for size, params in expected.items():
        assert PUBLISHED_SHAPES[size].total_params == pytest.approx(params, rel=0.02), size


def test_hardware_table_is_computed():
    table = hardware_table(1, 1024)
    lines = table.splitlines()
    assert lines[1].split() == ["method", "bits", "7B", "14B", "30B", "70B", "110B", "8x7B", "8x22B"]
    rows = {tuple(line.split()[:2]): [int(x) for x in line.split()[2:]] for line in lines[3:-1]}
    assert set(rows) == {("full", "32"), ("full", "16"), ("full", "16p"), ("freeze", "16"), ("lora", "16"),
                         ("qlora", "8"), ("qlora", "4")}
    seven = PUBLISHED_SHAPES["7B"]
    spec = EstimateSpec(seven, "lora", "bf16", 1, 1024, grad_ckpt=True, device="cuda")
    assert rows[("lora", "16")][0] == round(estimate_memory(spec).total / 2**30)
    for values in rows.values():  # every row grows with model size except the MoE columns
        assert values[:5] == sorted(values[:5])
    assert rows[("qlora", "4")][0] < rows[("qlora", "8")][0] < rows[("lora", "16")][0] < rows[("full", "32")][0]


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="qlora needs int8 or int4"):
        EstimateSpec(SMALL, "lora", "int4")
    with pytest.raises(ConfigError, match="--method"):
        EstimateSpec(SMALL, "dora", "fp32")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ModelError, match="intermediate_size"):
        load_shape(str(tmp_path / "config.json"))
    with pytest.raises(ModelError, match="nowhere does not exist"):
        load_shape(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json found at .*empty/config.json"):
        load_shape(str(tmp_path / "empty"))


def test_cli_model_and_config(tiny_llama_dir, tmp_path, capsys):
    assert main_estimate(["--model", str(tiny_llama_dir), "--method", "full", "--batch", "2", "--cutoff", "64"]) == 0
    out = capsys.readouterr().out
    assert "full, fp32, batch 2 x cutoff 64 tokens" in out and "optimizer (AdamW)" in out and "total" in out
    config = tmp_path / "x.yaml"
    config.write_text(f"model_name_or_path: {tiny_llama_dir}\nstage: sft\ndo_train: true\nfinetuning_type: lora\n"
                      "dataset: x\ncutoff_len: 128\nper_device_train_batch_size: 3\nbf16: true\n")
    assert main_estimate([str(config), "lora_rank=4"]) == 0
    out = capsys.readouterr().out
    assert "lora r=4, bf16, batch 3 x cutoff 128 tokens" in out


def test_config_that_does_not_train_gets_an_inference_estimate(tiny_llama_dir, tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = tmp_path / "predict.yaml"
    config.write_text(f"model_name_or_path: {tiny_llama_dir}\nstage: sft\ndo_predict: true\n"
                      "predict_with_generate: true\neval_dataset: x\ncutoff_len: 100\nmax_new_tokens: 28\n"
                      "infer_dtype: float32\n")
    assert main_estimate([str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("this config does not train (do_train is false): inference memory for")
    assert "KV cache for 128 tokens" in lines[0]
    gib = {line[:28].strip(): float(line.split()[-2]) for line in lines[1:]}
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_llama_dir).parameters())
    hf = AutoConfig.from_pretrained(tiny_llama_dir)
    head_dim = hf.hidden_size // hf.num_attention_heads
    assert gib["weights"] == pytest.approx(round(params * 4 / 2**30, 2))
    assert gib["KV cache, one row"] == pytest.approx(
        round(2 * hf.num_hidden_layers * hf.num_key_value_heads * head_dim * 128 * 4 / 2**30, 2))
    assert set(gib) == {"weights", "KV cache, one row", "runtime", "total"}  # exact fp32: no decode copies


def test_shape_from_moe_config():
    shape = shape_from_config({"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 32,
                               "num_local_experts": 4, "num_experts_per_tok": 2})
    assert shape.experts == 4 and shape.experts_per_token == 2
    assert shape.layer_params() == 192 + 4 * 384 + 16 + 8 * 4  # router 8 x 4


# ------------------------------------------------------------------ several processes, offline hub shapes
def test_sharding_divides_what_each_stage_shards():
    from tuneforge.estimate import EstimateSpec, PUBLISHED_SHAPES, estimate_memory

    base = dict(shape=PUBLISHED_SHAPES["7B"], method="full", precision="bf16", device="cuda", grad_ckpt=True)
    one = estimate_memory(EstimateSpec(**base)).parts
    ddp = estimate_memory(EstimateSpec(**base, world_size=8)).parts
    zero2 = estimate_memory(EstimateSpec(**base, world_size=8, sharding="zero2")).parts
    zero3 = estimate_memory(EstimateSpec(**base, world_size=8, sharding="zero3")).parts
    offload = estimate_memory(EstimateSpec(**base, world_size=8, sharding="fsdp", offload=True)).parts
    assert ddp["DDP gradient buckets"] == ddp["gradients"] == one["gradients"]
    assert zero2["optimizer (AdamW)"] == one["optimizer (AdamW)"] / 8 and zero2["gradients"] == one["gradients"] / 8
    assert zero2["weights"] == one["weights"]
    assert zero3["weights"] == one["weights"] / 8 and zero3["gathered layers (2)"] > 0
    assert offload["optimizer (AdamW)"] == 0 and offload["weights"] == 0


def test_a_common_hub_model_is_sized_offline():
    from tuneforge.estimate.shapes import load_shape

    shape = load_shape("Qwen/Qwen2.5-7B-Instruct")  # no config.json here, no network: the shipped table
    assert (shape.hidden, shape.layers, shape.kv_heads, shape.vocab) == (3584, 28, 4, 152064)
    assert round(shape.total_params / 1e9, 2) == 7.62  # the published 7.62B
    with pytest.raises(Exception, match="not one of the hub models whose shape ships with tuneforge"):
        load_shape("someone/unknown-model")


def test_a_config_reads_its_world_size_and_zero_stage(tmp_path):
    from types import SimpleNamespace

    from tuneforge.estimate import parallel_setup

    ds = tmp_path / "ds_z3.json"
    ds.write_text('{"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}')
    cfg = SimpleNamespace(training=SimpleNamespace(deepspeed=str(ds), fsdp=None))
    assert parallel_setup(cfg, {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "4", "NNODES": "2"}, "cuda") == (8, "zero3", True)
    cfg = SimpleNamespace(training=SimpleNamespace(deepspeed=None, fsdp=["full_shard", "auto_wrap"]))
    assert parallel_setup(cfg, {"WORLD_SIZE": "2"}, "cpu") == (2, "fsdp", False)
