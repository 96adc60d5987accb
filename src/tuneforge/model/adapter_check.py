"""Check a LoRA adapter folder against the model before peft loads it, so that a wrong adapter is one
clear line naming the path and what was expected -- not a size-mismatch traceback from deep in peft.

Checked: `adapter_config.json` is readable; the weights file exists and is complete (the safetensors
header covers the file); every `lora_A`/`lora_B` matrix fits the base layer it adapts (input/output
sizes: an adapter of another base model) and has the rank the config says (`r`, `rank_pattern`).
A different `base_model_name_or_path` with fitting shapes is only a warning: the same model is often
named differently (a hub id here, a local copy there).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tuneforge.errors import ModelError

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def read_adapter_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ModelError(f"adapter_name_or_path: {path} is not valid JSON ({err}); the adapter folder is damaged") from None
    if not isinstance(config, dict):
        raise ModelError(f"adapter_name_or_path: {path} holds a {type(config).__name__}; expected a JSON object")
    return config


def adapter_shapes(folder: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, read from the safetensors header (no weights are loaded)."""
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise ModelError(f"adapter_name_or_path: {folder} has adapter_config.json but no {WEIGHT_FILES[0]}: the "
                         "save did not finish or the file was removed; use a complete adapter folder (or a checkpoint-N "
                         "inside the run's output_dir)")
    if weights.suffix != ".safetensors":
        return {}  # legacy .bin: peft reads it; its shapes are checked by peft
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except SafetensorError as err:
        raise ModelError(f"adapter_name_or_path: {weights} is damaged or truncated ({err}); "
                         "use a complete adapter (or a checkpoint-N inside the run's output_dir)") from None


def _expected_rank(config: dict, module_name: str) -> int:
    for pattern, rank in (config.get("rank_pattern") or {}).items():
        if module_name == pattern or module_name.endswith("." + pattern):
            return int(rank)
    return int(config.get("r", 8))


def check_adapter_fits(model, folder: Path, model_name: str) -> None:
    """Raise ModelError when the adapter in `folder` cannot be loaded onto `model` (see the module docstring)."""
    config = read_adapter_config(folder)
    shapes = adapter_shapes(folder)
    modules = dict(model.named_modules())
    base_name = config.get("base_model_name_or_path") or "an unknown model"
    for key, shape in sorted(shapes.items()):
        for part in (".lora_A.", ".lora_B."):
            if part not in key or len(shape) != 2:
                continue
            module_name = key.split(part)[0].removeprefix("base_model.model.")
            layer = modules.get(module_name)
            if layer is None:
                raise ModelError(f"adapter_name_or_path: {folder} adapts `{module_name}`, which {model_name} does not "
                                 f"have: the adapter was trained on {base_name}, not on {model_name}")
            rank = _expected_rank(config, module_name)
            size = getattr(layer, "in_features", None) if part == ".lora_A." else getattr(layer, "out_features", None)
            got_rank, got_size = (shape[0], shape[1]) if part == ".lora_A." else (shape[1], shape[0])
            if got_rank != rank:
                raise ModelError(f"adapter_name_or_path: {folder}: adapter_config.json says rank r={rank}, but {key} "
                                 f"has rank {got_rank}; the config and the weights belong to different adapters")
            if size is not None and got_size != size:
                side = "inputs" if part == ".lora_A." else "outputs"
                raise ModelError(f"adapter_name_or_path: {folder} was trained on {base_name}, not on {model_name}: "
                                 f"{key} expects {got_size} {side} but the model's `{module_name}` has {size}")
    names = {str(model_name), str(getattr(model, "name_or_path", "") or model_name)}
    if not any(str(base_name) == name or Path(str(base_name)).name == Path(name).name for name in names):
        logger.warning("adapter %s was trained on %s; loading it onto %s (its layer shapes fit)",
                       folder, base_name, model_name)
