"""`export_quantization_bit: 2 | 4 | 8`: a GPTQ export (Frantar et al., 2022), computed here in PyTorch on any device.

LLaMA-Factory hands this to transformers' GPTQConfig, i.e. to `gptqmodel` + `optimum`, which need a CUDA build of
torch >= 2.14; tuneforge quantizes itself and writes the checkpoint layout gptqmodel writes (and vLLM / SGLang
load): every linear layer of the decoder layers as `qweight` / `qzeros` / `scales` / `g_idx` in the `gptq` (v1)
format, symmetric, `group_size` 128, no activation reordering (GPTQConfig's defaults, as LF uses them), everything
else in float16, and the config's `quantization_config`. The packing was checked against gptqmodel 7.7's own
packing code (same bit order, v1 zero points minus one); loading the result needs gptqmodel, i.e. a GPU build.

Calibration as in LF: `export_quantization_nsamples` windows of `export_quantization_maxlen` tokens, each from a
random row of `export_quantization_dataset` (its `text` column) that is longer than that (drawn with a fixed
seed, so an export is reproducible). The layers are quantized in order, each on the outputs of the already
quantized ones before it; inside a layer the projections go in groups (q/k/v, o, gate/up, down), each on inputs
computed with the groups before it quantized (`true_sequential`).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tuneforge.errors import ConfigError, NotSupportedError

logger = logging.getLogger(__name__)

GROUP_SIZE = 128
DAMP_PERCENT = 0.1
SUPPORTED_BITS = (2, 4, 8)  # 3-bit packing crosses 32-bit words; LF also allows 3
CALIBRATION_SEED = 0
# projections quantized one group after another inside a decoder layer (others: after these, one by one)
SEQUENTIAL_GROUPS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
                     ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))


@dataclass
class QuantizedLinear:
    """One linear layer's GPTQ result: integer codes [out, in], per-group scales and zero points [out, groups]."""

    codes: torch.Tensor
    scales: torch.Tensor  # float16 values (the quantization used these exact scales)
    zeros: torch.Tensor
    bias: torch.Tensor | None

    def dequantize(self, group_size: int = GROUP_SIZE) -> torch.Tensor:
        groups = torch.arange(self.codes.shape[1]) // group_size
        return (self.codes - self.zeros[:, groups]).float() * self.scales[:, groups].float()


def check_gptq_args(bits: int, dataset: str | None) -> None:
    """Before the model loads: the bit width, and the calibration file (LF requires one)."""
    if bits not in SUPPORTED_BITS:
        raise NotSupportedError(f"export_quantization_bit: {bits} is not supported; GPTQ export writes "
                                f"{', '.join(map(str, SUPPORTED_BITS))} bits (3-bit packing is not implemented)")
    if not dataset:
        raise ConfigError("export_quantization_bit: a GPTQ export needs calibration text: set "
                          "`export_quantization_dataset` (a local file with a `text` column)")
    if not Path(dataset).expanduser().is_file():
        raise ConfigError(f"export_quantization_dataset: {dataset} is not a file; give a local .json / .jsonl / "
                          ".csv / .parquet / .txt file with a `text` column (hub datasets cannot be downloaded "
                          "here)")


def calibration_samples(tokenizer, dataset: str, count: int, length: int) -> list[torch.Tensor]:
    """LF's rule: `count` windows of `length` tokens, each from a random row longer than `length`."""
    texts = _calibration_texts(dataset)
    rng = random.Random(CALIBRATION_SEED)
    samples = []
    for _ in range(count):
        for _attempt in range(100):
            ids = tokenizer(texts[rng.randrange(len(texts))], add_special_tokens=False)["input_ids"]
            if len(ids) > length:
                break
        else:
            longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts[:1000])
            raise ConfigError(f"export_quantization_dataset: {dataset}: 100 random rows were all at most "
                              f"{length} tokens long (the longest of the first 1,000 has {longest}); lower "
                              "`export_quantization_maxlen` or use longer texts")
        start = rng.randint(0, len(ids) - length - 1)
        samples.append(torch.tensor([ids[start:start + length]]))
    return samples


def _calibration_texts(dataset: str) -> list[str]:
    from datasets import load_dataset

    path = Path(dataset).expanduser()
    kind = {"jsonl": "json", "txt": "text"}.get(path.suffix.lstrip("."), path.suffix.lstrip("."))
    rows = load_dataset(kind, data_files=str(path), split="train")
    if "text" not in rows.column_names:
        raise ConfigError(f"export_quantization_dataset: {dataset} has no `text` column (columns: "
                          f"{', '.join(rows.column_names)})")
    return [t for t in rows["text"] if t]


def gptq_quantize_model(model, samples: list[torch.Tensor], bits: int) -> dict[str, QuantizedLinear]:
    """Quantize every linear layer of `model.model.layers` in place (its weight becomes the dequantized one) and
    return the codes by module name."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise NotSupportedError(f"GPTQ export: {type(model).__name__} has no `model.layers` of decoder layers "
                                "(vision-language models are not supported yet)")
    inputs, layer_kwargs = _first_layer_inputs(model, layers[0], samples)
    results = {}
    for index, layer in enumerate(layers):
        linears = {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
        for group in _groups(linears):
            hessians = _hessians(layer, {name: linears[name] for name in group}, inputs, layer_kwargs)
            for name in group:
                results[f"model.layers.{index}.{name}"] = quantize_linear(linears[name], hessians[name], bits)
        with torch.no_grad():
            inputs = [_first(layer(x, **layer_kwargs)) for x in inputs]
        logger.info("GPTQ: layer %d of %d quantized", index + 1, len(layers))
    return results


def _groups(linears: dict) -> list[tuple[str, ...]]:
    groups = [tuple(n for n in group if n in linears) for group in SEQUENTIAL_GROUPS]
    grouped = {n for group in groups for n in group}
    return [g for g in groups if g] + [(n,) for n in linears if n not in grouped]


class _StopForward(Exception):
    pass


def _first_layer_inputs(model, first_layer, samples):
    """The hidden states entering the first decoder layer for each sample, and the other arguments the model
    passes its layers (rotary embeddings, mask: the same for every sample, as all have one length)."""
    captured, kwargs = [], {}

    def catch(module, args, call_kwargs):
        captured.append(args[0] if args else call_kwargs.pop("hidden_states"))
        kwargs.update({k: v for k, v in call_kwargs.items() if k != "hidden_states"})
        raise _StopForward

    handle = first_layer.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        with torch.no_grad():
            for ids in samples:
                try:
                    model(input_ids=ids.to(model.device), use_cache=False)
                except _StopForward:
                    pass
    finally:
        handle.remove()
    return captured, kwargs


def _hessians(layer, linears: dict, inputs, layer_kwargs) -> dict[str, torch.Tensor]:
    """H = 2/N sum(x x^T) over every input row x of each linear layer, from one pass of the layer."""
    sums = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float32) for name, m in linears.items()}
    rows = {name: 0 for name in linears}

    def hook(name):
        def accumulate(module, args, output):
            x = args[0].detach().reshape(-1, module.in_features).float().cpu()
            sums[name].addmm_(x.T, x)
            rows[name] += x.shape[0]
        return accumulate

    handles = [m.register_forward_hook(hook(name)) for name, m in linears.items()]
    try:
        with torch.no_grad():
            for x in inputs:
                layer(x, **layer_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: 2 * sums[name] / max(rows[name], 1) for name in linears}


def quantize_linear(linear: nn.Linear, hessian: torch.Tensor, bits: int, group_size: int = GROUP_SIZE,
                    damp_percent: float = DAMP_PERCENT) -> QuantizedLinear:
    """GPTQ for one layer: columns quantized in order, each one's rounding error spread over the columns not yet
    quantized through the inverse Hessian; symmetric per-group scales (zero point 2^(bits-1)). The layer's
    weight is replaced by the dequantized one."""
    weight = linear.weight.detach().float().cpu().clone()
    rows, columns = weight.shape
    maxq = 2 ** bits - 1
    hessian = hessian.clone()
    dead = hessian.diagonal() == 0
    hessian[dead, dead] = 1
    weight[:, dead] = 0
    hessian.diagonal().add_(damp_percent * hessian.diagonal().mean())
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True)
    groups = (columns + group_size - 1) // group_size
    codes = torch.zeros(rows, columns, dtype=torch.int32)
    scales = torch.zeros(rows, groups, dtype=torch.float16)
    zeros = torch.full((rows, groups), (maxq + 1) // 2, dtype=torch.int32)
    for start in range(0, columns, group_size):  # a block of columns is one group (the paper's lazy batch)
        end = min(start + group_size, columns)
        block, errors = weight[:, start:end].clone(), torch.zeros(rows, end - start)
        inverse = upper[start:end, start:end]
        scale = _group_scale(block, maxq).half()  # stored in float16: quantize with exactly that scale
        scales[:, start // group_size] = scale
        scale = scale.float()
        for i in range(end - start):
            w = block[:, i]
            code = torch.clamp(torch.round(w / scale) + (maxq + 1) // 2, 0, maxq)
            codes[:, start + i] = code.to(torch.int32)
            error = (w - (code - (maxq + 1) // 2) * scale) / inverse[i, i]
            block[:, i:] -= error.unsqueeze(1) * inverse[i, i:].unsqueeze(0)
            errors[:, i] = error
        weight[:, end:] -= errors @ upper[start:end, end:]
    result = QuantizedLinear(codes, scales, zeros, None if linear.bias is None else linear.bias.detach().clone())
    with torch.no_grad():
        linear.weight.copy_(result.dequantize(group_size).to(linear.weight.dtype))
    return result


def _group_scale(values: torch.Tensor, maxq: int) -> torch.Tensor:
    """Symmetric scale per row: the largest magnitude maps to the end of the integer range."""
    largest = values.abs().amax(dim=1)
    largest = torch.where(largest == 0, torch.ones_like(largest), largest)
    return 2 * largest / maxq


def _first(output):
    return output[0] if isinstance(output, tuple) else output


# ---------------------------------------------------------------------------------------------- the file format

def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """[n, m] integers in [0, 2^bits) -> int32 [n * bits / 32, m]: 32 / bits consecutive rows per word, the first
    in the lowest bits (the layout of GPTQ's `qweight`; `qzeros` packs its columns the same way)."""
    per_word = 32 // bits
    if values.shape[0] % per_word:
        raise NotSupportedError(f"GPTQ export: a dimension of {values.shape[0]} is not a multiple of {per_word}, "
                                f"which {bits}-bit packing needs")
    grouped = values.to(torch.int64).reshape(-1, per_word, values.shape[1])
    shifts = (torch.arange(per_word, dtype=torch.int64) * bits).reshape(1, per_word, 1)
    words = (grouped << shifts).sum(dim=1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)  # the same 32 bits, signed


def unpack_rows(words: torch.Tensor, bits: int) -> torch.Tensor:
    per_word = 32 // bits
    shifts = (torch.arange(per_word, dtype=torch.int64) * bits).reshape(1, per_word, 1)
    values = (words.to(torch.int64).unsqueeze(1) >> shifts) & (2 ** bits - 1)
    return values.reshape(-1, words.shape[1])


def gptq_tensors(prefix: str, result: QuantizedLinear, bits: int, group_size: int = GROUP_SIZE) -> dict:
    """One layer in the `gptq` (v1) checkpoint format: codes packed along the input dimension, zero points stored
    minus one (v1's convention), float16 scales [groups, out], each input's group index."""
    tensors = {f"{prefix}.qweight": pack_rows(result.codes.T, bits),
               f"{prefix}.qzeros": pack_rows(result.zeros - 1, bits).T.contiguous(),  # [groups, out / per word]
               f"{prefix}.scales": result.scales.T.contiguous(),
               f"{prefix}.g_idx": torch.arange(result.codes.shape[1], dtype=torch.int32) // group_size}
    if result.bias is not None:
        tensors[f"{prefix}.bias"] = result.bias.half()
    return tensors


def read_gptq_layer(tensors: dict, prefix: str, bits: int) -> torch.Tensor:
    """The float weight [out, in] a `gptq` (v1) layer holds (used to check an export against what it computed)."""
    codes = unpack_rows(tensors[f"{prefix}.qweight"], bits)  # [in, out]
    zeros = unpack_rows(tensors[f"{prefix}.qzeros"].T.contiguous(), bits).T + 1  # [groups, out]
    groups = tensors[f"{prefix}.g_idx"].long()
    return ((codes - zeros[groups]).float() * tensors[f"{prefix}.scales"][groups].float()).T


def quantization_config(bits: int) -> dict:
    """The config.json entry transformers' GPTQConfig writes, with the settings this export used."""
    from transformers import GPTQConfig

    config = GPTQConfig(bits=bits, group_size=GROUP_SIZE, damp_percent=DAMP_PERCENT, desc_act=False, sym=True,
                        true_sequential=True, act_group_aware=False, block_name_to_quantize="model.layers")
    entry = config.to_dict()
    entry["meta"] = {"quantizer": ["tuneforge"]}
    return entry


def export_gptq(model, tokenizer, margs, folder: Path) -> None:
    """Calibrate, quantize (float32 math) and write `folder` (weights, config); then read the written layers back
    and check they hold exactly the weights GPTQ computed."""
    from tuneforge.errors import ModelError

    bits = margs.export_quantization_bit
    samples = calibration_samples(tokenizer, margs.export_quantization_dataset, margs.export_quantization_nsamples,
                                  margs.export_quantization_maxlen)
    before = calibration_loss(model, samples)
    quantized = gptq_quantize_model(model, samples, bits)
    logger.info("GPTQ %d-bit: %d linear layers; loss on the first calibration windows %.4f -> %.4f", bits,
                len(quantized), before, calibration_loss(model, samples))
    files = write_gptq_model(model, quantized, folder, bits, f"{margs.export_size}GB")
    from safetensors.torch import load_file

    written = {}
    for file in files:
        written.update(load_file(folder / file))
    for prefix, result in quantized.items():
        if not torch.equal(read_gptq_layer(written, prefix, bits), result.dequantize()):
            raise ModelError(f"GPTQ export: {prefix} read back from {folder} differs from the quantized weights")


def calibration_loss(model, samples, count: int = 4) -> float:
    with torch.no_grad():
        losses = [model(input_ids=ids.to(model.device), labels=ids.to(model.device), use_cache=False).loss.item()
                  for ids in samples[:count]]
    return sum(losses) / len(losses)


def write_gptq_model(model, quantized: dict, folder: Path, bits: int, shard_size: str) -> list[str]:
    """Safetensors shards (the quantized layers in the gptq format, the rest in float16), config with
    `quantization_config`, generation config. Returns the weight files written."""
    import json

    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    tied = getattr(model.config.get_text_config(), "tie_word_embeddings", False)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.rsplit(".", 1)[0] in quantized or (tied and name == "lm_head.weight"):
            continue
        state[name] = tensor.detach().cpu().half() if tensor.is_floating_point() else tensor.detach().cpu()
    for prefix, result in quantized.items():
        state.update(gptq_tensors(prefix, result, bits))
    split = split_torch_state_dict_into_shards(state, max_shard_size=shard_size)
    for file, names in split.filename_to_tensors.items():
        save_file({name: state[name].contiguous() for name in names}, folder / file, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": split.tensor_to_filename}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    model.config.quantization_config = quantization_config(bits)
    model.config.dtype = torch.float16
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    return list(split.filename_to_tensors)
