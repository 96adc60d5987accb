"""QLoRA (`quantization_bit: 4 | 8`) on a CPU through bitsandbytes' CPU backend: the gradients are those of the
dequantized model, a run trains / evaluates / saves, and the adapter is used as LLaMA-Factory uses it."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import IDENTITY_ROWS, write_workspace
from tuneforge.cli.main import main
from tuneforge.config.args import FinetuningArguments, ModelArguments
from tuneforge.model.loader import count_parameters, load_model

bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs the qlora extra (bitsandbytes)")


def _lora_model(model_dir, **model_keys):
    finetuning = FinetuningArguments(finetuning_type="lora", lora_target="all", lora_rank=4)
    return load_model(ModelArguments(model_name_or_path=str(model_dir), **model_keys), finetuning, is_trainable=True)


def test_4bit_lora_gradients_are_those_of_the_dequantized_model_after_an_evaluation(tiny_llama_dir):
    """The reference is the fp32 model whose weights are the 4-bit ones dequantized, with the same LoRA weights.
    An evaluation (eval mode, no gradients) runs first: on a CPU with AVX512-BF16, bitsandbytes would then repack
    the weights for a kernel without backward and later steps would lose the gradients through the base layers."""
    quantized = _lora_model(tiny_llama_dir, quantization_bit=4)
    reference = _lora_model(tiny_llama_dir)
    assert count_parameters(quantized) == count_parameters(reference)  # 4-bit weights counted one by one
    generator = torch.Generator().manual_seed(0)
    lora = {n: p for n, p in quantized.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for name, param in lora.items():  # B = 0 at init would leave A without gradient
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        reference_params = dict(reference.named_parameters())
        for name, param in lora.items():
            reference_params[name].copy_(param)
        for name, module in quantized.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
                reference.get_submodule(name).weight.copy_(weight.float())
    ids = torch.randint(3, 200, (2, 12), generator=generator)
    quantized.eval()
    with torch.no_grad():
        torch.testing.assert_close(quantized(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)
    losses = []
    for model in (quantized, reference):
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    reference_grads = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    assert set(reference_grads) == set(lora) and len(lora) == 2 * 7 * 2  # A and B of 7 projections, 2 layers
    for name, param in lora.items():
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, reference_grads[name], atol=1e-5, rtol=1e-4)


@pytest.fixture
def workspace(tmp_path, tiny_llama_dir, monkeypatch):
    config = {"model_name_or_path": str(tiny_llama_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
              "lora_target": "all", "quantization_bit": 4, "dataset": "tiny", "dataset_dir": "data",
              "template": "chatml", "cutoff_len": 64, "output_dir": "out/qlora", "logging_steps": 1,
              "per_device_train_batch_size": 4, "learning_rate": 1.0e-2, "max_steps": 6, "val_size": 4,
              "eval_strategy": "steps", "eval_steps": 2, "report_to": "none"}
    rows = [dict(row, instruction=f"{row['instruction']} ({i})") for i in range(4) for row in IDENTITY_ROWS]
    return write_workspace(tmp_path, monkeypatch, rows, "tiny", config, "train.yaml")


def _losses(folder):
    records = [json.loads(line) for line in (folder / "trainer_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def test_qlora_losses_follow_full_precision_lora_through_evaluations(workspace, capsys):
    """The tiny model's weights survive 4 and 8-bit rounding closely, so the loss curves of the same LoRA run on
    the quantized and the float32 base agree; the 4-bit run evaluates every 2 steps (see the test above), and
    with gradient checkpointing takes the same steps."""
    curves = {}
    for name, overrides in (("null", ["quantization_bit=null"]), ("4", ["quantization_bit=4"]),
                            ("8", ["quantization_bit=8"]), ("4gc", ["gradient_checkpointing=true"])):
        assert main(["train", "train.yaml", *overrides, f"output_dir=out/{name}"]) == 0
        curves[name] = _losses(workspace / "out" / name)
        assert (workspace / "out" / name / "adapter_model.safetensors").is_file()
    err = capsys.readouterr().err
    assert "QLoRA: base weights quantized to 4 bits" in err and "QLoRA: base weights quantized to 8 bits" in err
    assert err.count("gradient checkpointing: on") == 1
    assert err.count("MatMul8bitLt: inputs will be cast") <= 1  # said once, not on every matrix product
    full = curves["null"]
    assert len(full) == 6 and full[-1] < full[0] - 0.1
    for bits in ("4", "8"):
        assert curves[bits] == pytest.approx(full, abs=0.02), bits
    assert curves["4gc"] == pytest.approx(curves["4"], abs=1e-5)  # recomputed activations: the same steps


def test_qlora_adapter_chats_and_exports_into_the_unquantized_model(workspace, tiny_llama_dir, capsys):
    assert main(["train", "train.yaml", "max_steps=2", "eval_strategy=no", "val_size=0"]) == 0
    chat = ["template=chatml", "adapter_name_or_path=out/qlora", "do_sample=false", "max_new_tokens=6"]
    model_path = f"model_name_or_path={tiny_llama_dir}"
    assert main(["chat", model_path, "quantization_bit=4", *chat, "--prompt", "Who are you?"]) == 0
    assert capsys.readouterr().out.strip()
    # LF: "Cannot merge adapters to a quantized model."
    assert main(["export", model_path, "quantization_bit=4", *chat[:2], "export_dir=out/merged"]) != 0
    assert "remove `quantization_bit` from the export config" in capsys.readouterr().err
    assert main(["export", model_path, *chat[:2], "export_dir=out/merged"]) == 0
    assert (workspace / "out" / "merged" / "config.json").is_file()


def test_a_quantized_model_keeps_its_adapter_attached_for_inference(workspace, tiny_llama_dir):
    """Merging into 4-bit weights would round the adapter away (LF keeps it attached too); the answers use it."""
    assert main(["train", "train.yaml", "max_steps=2", "val_size=0", "eval_strategy=no"]) == 0
    finetuning = FinetuningArguments(finetuning_type="lora")
    args = dict(model_name_or_path=str(tiny_llama_dir), adapter_name_or_path="out/qlora", quantization_bit=4)
    model = load_model(ModelArguments(**args), finetuning, is_trainable=False)
    assert type(model).__name__ == "PeftModelForCausalLM"
    assert isinstance(model.base_model.model.model.layers[0].mlp.down_proj.base_layer, bnb.nn.Linear4bit)
    plain = load_model(ModelArguments(**{**args, "adapter_name_or_path": None}), finetuning, is_trainable=False)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert (model(ids).logits - plain(ids).logits).abs().max() > 1e-3
