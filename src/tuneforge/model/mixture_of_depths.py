"""`mixture_of_depths: convert | load` with LLaMA-Factory's meaning (Raposo et al., 2024, "Mixture-of-Depths").

LF delegates to the `mixture-of-depth` package (MoD 1.2), which cannot be imported with transformers 5; this is
tuneforge's own implementation of what that package does, with its checkpoint layout, so a model converted by
either loads in the other:

* every odd decoder layer becomes `MixtureOfDepthsLayer(block=<the layer>, router=<Linear(hidden, 1)>)`
  (state-dict keys `model.layers.1.block.*`, `model.layers.1.router.weight_predictor.*`); the saved config names
  the architecture with `MoD` before `For` (`LlamaMoDForCausalLM`), as the package's `AutoMoDModelForCausalLM`
  expects;
* per sequence, the router scores every token; the `capacity` share with the highest scores goes through the
  layer and its output is scaled by the score, the rest skip it unchanged;
* the capacity starts at 1 and decays as 0.125 + 0.875 / n over the n-th training forward (the package's
  schedule); evaluation uses the capacity training ended with (0.125 for a loaded model).

Differences from the package, on purpose: exactly k = max(1, int(capacity * length)) tokens are routed (the
package's strict comparison keeps k - 1 when k > 1), and during generation with a KV cache every token goes through
the layer, scaled by its score -- the package does this for each new token; for the prompt it picks the top-k
with a look at later tokens, which a causal decoder cannot do, and which its cache cannot hold consistently.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from tuneforge.errors import ConfigError, NotSupportedError

logger = logging.getLogger(__name__)

CAPACITY = 0.125  # the share of tokens a routed layer processes once the schedule has decayed
# LF's MOD_SUPPORTED_MODELS minus bloom / falcon (other layer interfaces), plus the Qwen families
SUPPORTED_MODEL_TYPES = ("gemma", "llama", "mistral", "mixtral", "phi", "qwen2", "qwen3", "starcoder2")
_STEP_LIMIT = 1000  # the package stops counting here


class TokenRouter(nn.Module):
    """One score per token, computed in float32 (the package keeps its predictor in float32)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.weight_predictor = nn.Linear(hidden_size, 1, dtype=torch.float32)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight_predictor.weight
        return self.weight_predictor(hidden_states.to(weight.dtype)).squeeze(-1).to(hidden_states.dtype)


class MixtureOfDepthsLayer(nn.Module):
    """A decoder layer that only the router's top `capacity` share of each sequence's tokens goes through."""

    def __init__(self, block: nn.Module, hidden_size: int, capacity: float = CAPACITY):
        super().__init__()
        self.router = TokenRouter(hidden_size)
        self.block = block
        self.capacity = capacity
        self.training_step = 0

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, position_ids=None,
                position_embeddings=None, **kwargs) -> torch.Tensor:
        weights = self.router(hidden_states)  # [batch, length]
        if self.router.training:
            self.training_step = min(self.training_step + 1, _STEP_LIMIT)
            self.capacity = CAPACITY + (1 - CAPACITY) / self.training_step
        if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
            out = self.block(hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                             position_embeddings=position_embeddings, **kwargs)
            return _first(out) * weights.unsqueeze(-1)
        batch, length, hidden = hidden_states.shape
        k = max(1, int(self.capacity * length))
        chosen = weights.topk(k, dim=1, sorted=False).indices.sort(dim=1).values  # keep the tokens' order
        take = chosen.unsqueeze(-1).expand(-1, -1, hidden)
        out = self.block(hidden_states.gather(1, take), attention_mask=_select_mask(attention_mask, chosen),
                         position_ids=None if position_ids is None else _select(position_ids, chosen, batch),
                         position_embeddings=_select_rotary(position_embeddings, chosen, batch), **kwargs)
        routed = _first(out) * weights.gather(1, chosen).unsqueeze(-1)
        return hidden_states.scatter(1, take, routed)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _select(tensor: torch.Tensor, chosen: torch.Tensor, batch: int) -> torch.Tensor:
    """tensor[b, chosen[b]] along dim 1 (a batch-1 tensor is shared by every row)."""
    tensor = tensor.expand(batch, *tensor.shape[1:])
    index = chosen.reshape(*chosen.shape, *([1] * (tensor.dim() - 2))).expand(-1, -1, *tensor.shape[2:])
    return tensor.gather(1, index)


def _select_rotary(position_embeddings, chosen: torch.Tensor, batch: int):
    if position_embeddings is None:
        return None
    return tuple(_select(part, chosen, batch) for part in position_embeddings)


def _select_mask(mask, chosen: torch.Tensor):
    """The attention mask among the chosen tokens: rows and columns of a [batch, 1, q, kv] mask; a 2-D padding
    mask [batch, kv] its columns; None (plain causal) stays None -- the chosen tokens keep their order."""
    if mask is None or not torch.is_tensor(mask):
        return mask
    if mask.dim() == 2:
        return mask.gather(1, chosen)
    rows = mask.gather(2, chosen[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[3]))
    return rows.gather(3, chosen[:, None, None, :].expand(-1, mask.shape[1], chosen.shape[1], -1))


def _decoder_layers(model) -> nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise NotSupportedError(f"mixture_of_depths: {type(model).__name__} has no `model.layers` to convert")
    return layers


def _check_model_type(model) -> None:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise NotSupportedError(f"mixture_of_depths: `{model_type}` models are not supported; supported: "
                                f"{', '.join(SUPPORTED_MODEL_TYPES)} (LLaMA-Factory's list also has bloom and "
                                "falcon, not built in tuneforge)")


def mod_class(cls: type) -> type:
    """A subclass named as the package names converted models (`LlamaForCausalLM` -> `LlamaMoDForCausalLM`), so
    `save_pretrained` writes that architecture and the folder is recognised as a MoD model; loading a saved one
    through it, the routers' weights (read by `load_routers`) are not reported as unexpected."""
    name = cls.__name__
    if "MoDFor" in name:
        return cls
    new_name = name.replace("For", "MoDFor", 1) if "For" in name else "MoD" + name
    cached = _MOD_CLASSES.get(cls)
    if cached is None:
        ignored = [*(getattr(cls, "_keys_to_ignore_on_load_unexpected", None) or ()), r"\.router\.weight_predictor\."]
        cached = _MOD_CLASSES[cls] = type(new_name, (cls,), {"__module__": cls.__module__,
                                                              "_keys_to_ignore_on_load_unexpected": ignored})
    return cached


_MOD_CLASSES: dict[type, type] = {}


def convert_to_mixture_of_depths(model) -> nn.Module:
    """Wrap every odd decoder layer (`mixture_of_depths: convert`); the routers start untrained (random, as the
    package's), in float32."""
    _check_model_type(model)
    layers = _decoder_layers(model)
    hidden = model.config.get_text_config().hidden_size
    device = next(model.parameters()).device
    for index in range(1, len(layers), 2):
        if not isinstance(layers[index], MixtureOfDepthsLayer):
            layers[index] = MixtureOfDepthsLayer(layers[index], hidden).to(device)
    model.__class__ = mod_class(type(model))
    logger.info("mixture_of_depths: %d of %d decoder layers route %.1f%% of the tokens (starting at 100%%)",
                len(layers) // 2, len(layers), 100 * CAPACITY)
    return model


def check_folder(config: dict | None, path: str, mixture_of_depths: str | None) -> None:
    """A saved MoD model (`architectures: [LlamaMoDForCausalLM]`) read as a plain one would get random weights in
    every routed layer, without an error."""
    names = [name for name in (config or {}).get("architectures") or () if "MoDFor" in name]
    if names and mixture_of_depths != "load":
        raise ConfigError(f"model_name_or_path: {path} holds a mixture-of-depths model ({names[0]}); set "
                          "`mixture_of_depths: load` to read it")


# the block's weights, saved under `.block.`, load into the plain architecture first
BLOCK_KEY_MAPPING = {r"^(model\.layers\.\d+)\.block\.": r"\1."}
_ROUTER_KEY = re.compile(r"^model\.layers\.(\d+)\.router\.weight_predictor\.(weight|bias)$")


def load_routers(model, path: str) -> int:
    """`mixture_of_depths: load`, after the plain model is loaded with BLOCK_KEY_MAPPING: convert it and read the
    routers' weights from the folder's safetensors files. Returns how many router tensors were read."""
    from pathlib import Path

    from safetensors import safe_open

    convert_to_mixture_of_depths(model)
    layers = _decoder_layers(model)
    found = 0
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                match = _ROUTER_KEY.match(key)
                if match is None:
                    continue
                layer = layers[int(match.group(1))]
                if not isinstance(layer, MixtureOfDepthsLayer):
                    raise ConfigError(f"mixture_of_depths: load: {file} has a router for layer {match.group(1)}, "
                                      "which is not a routed (odd) layer: not a MoD checkpoint of this layout")
                with torch.no_grad():
                    getattr(layer.router.weight_predictor, match.group(2)).copy_(handle.get_tensor(key))
                found += 1
    expected = 2 * (len(layers) // 2)
    if found != expected:
        raise ConfigError(f"mixture_of_depths: load: {path} holds {found} of the {expected} router tensors of a "
                          "mixture-of-depths model; was it saved from a converted model (`mixture_of_depths: "
                          "convert`)?")
    for layer in layers:
        if isinstance(layer, MixtureOfDepthsLayer):
            layer.capacity = CAPACITY
    return found
