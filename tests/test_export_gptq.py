"""GPTQ export (`export_quantization_bit`, export_gptq.py): the packed format, the algorithm against plain rounding,
and `tuneforge export` end to end on a tiny Llama."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tuneforge.export_gptq import (QuantizedLinear, gptq_tensors, pack_rows, quantize_linear, read_gptq_layer,
                                   unpack_rows)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_packing_round_trip(bits):
    torch.manual_seed(0)
    values = torch.randint(0, 2 ** bits, (64, 24))
    words = pack_rows(values, bits)
    assert words.dtype == torch.int32 and words.shape == (64 * bits // 32, 24)
    assert torch.equal(unpack_rows(words, bits), values)


def test_packing_layout_is_gptqs():
    # 8 consecutive input rows per 32-bit word, the first in the lowest 4 bits
    column = torch.arange(1, 9).reshape(8, 1)
    assert pack_rows(column, 4).item() & 0xFFFFFFFF == 0x87654321
    # symmetric 4-bit: every zero point is 8, stored minus one (the v1 format): the well-known 0x77777777 words
    result = QuantizedLinear(torch.zeros(16, 32, dtype=torch.int32), torch.ones(16, 1, dtype=torch.float16),
                             torch.full((16, 1), 8, dtype=torch.int32), None)
    tensors = gptq_tensors("layer", result, 4, group_size=32)
    assert tensors["layer.qzeros"].shape == (1, 2) and (tensors["layer.qzeros"] == 0x77777777).all()
    assert tensors["layer.qweight"].shape == (4, 16) and tensors["layer.scales"].shape == (1, 16)
    assert tensors["layer.g_idx"].tolist() == [0] * 32


def _correlated_inputs(rows=4096, features=64):
    torch.manual_seed(0)  # correlated features, as a layer's inputs are: error compensation has room to work
    return torch.randn(rows, features) @ (torch.randn(features, features) / features ** 0.5)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_gptq_beats_rounding_on_the_layer_output(bits):
    x = _correlated_inputs()
    torch.manual_seed(1)
    original = torch.nn.Linear(64, 48, bias=True)
    hessian = 2 * x.T @ x / x.shape[0]
    errors = {}
    for name, h in (("gptq", hessian), ("round", torch.eye(64))):  # identity Hessian: plain rounding
        layer = torch.nn.Linear(64, 48, bias=True)
        layer.load_state_dict(original.state_dict())
        result = quantize_linear(layer, h, bits, group_size=32)
        assert result.codes.min() >= 0 and result.codes.max() <= 2 ** bits - 1
        assert torch.equal(layer.weight, result.dequantize(32))  # the layer now holds the quantized weight
        written = gptq_tensors("l", result, bits, group_size=32)
        assert torch.equal(read_gptq_layer(written, "l", bits), result.dequantize(32))
        with torch.no_grad():
            errors[name] = ((layer(x) - original(x)) ** 2).mean().item()
    assert errors["gptq"] < 0.75 * errors["round"], errors


def _calibration_file(path, rows=20, words=160):
    vocabulary = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex every jolly boxer".split()
    rng = random.Random(1)
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(vocabulary) for _ in range(words))}) + "\n"
                            for _ in range(rows)), encoding="utf-8")
    return path


def _export_config(tmp_path, model_dir, **keys):
    config = {"model_name_or_path": str(model_dir), "template": "default", "export_dir": str(tmp_path / "gptq"),
              "export_quantization_bit": 4, "export_quantization_dataset": str(_calibration_file(tmp_path / "c.jsonl")),
              "export_quantization_nsamples": 8, "export_quantization_maxlen": 64, **keys}
    path = tmp_path / "export.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_export_writes_a_gptq_checkpoint(tiny_llama_dir, tmp_path, capsys):
    from tuneforge.cli.main import main

    assert main(["export", str(_export_config(tmp_path, tiny_llama_dir))]) == 0, capsys.readouterr().err[-2000:]
    out = tmp_path / "gptq"
    config = json.loads((out / "config.json").read_text())
    quant = config["quantization_config"]
    assert (quant["quant_method"], quant["bits"], quant["group_size"], quant["sym"], quant["desc_act"],
            quant["checkpoint_format"]) == ("gptq", 4, 128, True, False, "gptq")
    assert config["dtype"] == "float16" and not (out / "Modelfile").exists()
    written = load_file(out / "model.safetensors")
    original = load_file(tiny_llama_dir / "model.safetensors")
    linear = {k.rsplit(".", 1)[0] for k in original if ".layers." in k and k.endswith("_proj.weight")}
    assert len(linear) == 2 * 7
    for prefix in linear:
        assert f"{prefix}.weight" not in written
        assert {f"{prefix}.{part}" for part in ("qweight", "qzeros", "scales", "g_idx")} <= written.keys()
        weight, source = read_gptq_layer(written, prefix, 4), original[f"{prefix}.weight"]
        steps = weight / written[f"{prefix}.scales"].float().T  # one group: on the 16-level grid of its scale
        assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.min() >= -8 and steps.max() <= 7
        assert (weight - source).norm() < 0.25 * source.norm()
    for key in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert torch.equal(written[key], original[key].half())


def test_export_refusals(tiny_llama_dir, tmp_path, capsys):
    from tuneforge.cli.main import main

    cases = [({"export_quantization_bit": 3}, "export_quantization_bit: 3 is not supported"),
             ({"export_quantization_dataset": None}, "needs calibration text"),
             ({"export_quantization_maxlen": 4096}, "100 random rows were all at most 4096 tokens long"),
             ({"export_quantization_dataset": "c4_demo"}, "c4_demo is not a file"),
             ({"mixture_of_depths": "convert"}, "a mixture-of-depths model exports as safetensors only")]
    for keys, message in cases:
        assert main(["export", str(_export_config(tmp_path, tiny_llama_dir, **keys))]) != 0
        assert message in capsys.readouterr().err
    assert not (tmp_path / "gptq").exists()
