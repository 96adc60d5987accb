"""Checkpoints -> tokenizer and model: a local HF folder, a hub id, a `.gguf` file or `builtin:smollm2`.

Every way a load can fail for a user reason (missing path, hub unreachable, adapter folder given as
the model, fp16 training on a CPU, FlashAttention without its package) ends in a `ModelError`,
`ConfigError` or `NotSupportedError` naming the key and the value.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

from tuneforge.config.args import FinetuningArguments, ModelArguments
from tuneforge.errors import ConfigError, ModelError, NotSupportedError
from tuneforge.model.model_options import (configure_moe, print_param_status, upcast_layernorms,
                                           upcast_lmhead_output)
from tuneforge.model.quantization import prepare_quantized, quantization_kwargs
from tuneforge.model.vision import multimodal_problem, vision_model_class
from tuneforge.utils.distributed import is_main_process
from tuneforge.utils.vision_models import read_model_config

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------
def looks_local(name: str) -> bool:
    """True for strings that can only mean a file or folder, never a hub id like `org/name`.

    A hub id has at most one `/`, so `/` alone cannot tell them apart on POSIX.
    """
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") >= 2
        or name.lower().endswith(".gguf")
    )


def resolve_model_path(name_or_path: str, config_path: str | os.PathLike | None = None) -> str:
    """Map a `model_name_or_path` value to something `from_pretrained` can take.

    `builtin:smollm2` -> its converted folder; an existing path -> that path (relative paths are tried
    against the working directory, then the config file's folder); anything else that cannot be a
    local path -> returned unchanged as a hub id.
    """
    if not name_or_path or not str(name_or_path).strip():
        raise ConfigError("model_name_or_path is empty: give a local model folder, a hub id or builtin:smollm2")
    name = str(name_or_path).strip()
    if name.startswith(BUILTIN_PREFIX):
        from tuneforge.model.demo import DEMO_MODEL_NAME, ensure_demo_model

        if name != DEMO_MODEL_NAME:
            raise ModelError(f"model_name_or_path: unknown built-in model `{name}`; the built-in model is `{DEMO_MODEL_NAME}`")
        return str(ensure_demo_model())

    candidates = [Path(name).expanduser()]
    if config_path is not None and not Path(name).expanduser().is_absolute():
        candidates.append(Path(config_path).expanduser().resolve().parent / name)
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    if looks_local(name):
        tried = " or ".join(str(c) for c in candidates)
        raise ModelError(f"model path {name} does not exist (looked for {tried})")
    return name


def resolve_model_source(model_args: ModelArguments) -> str:
    """`resolve_model_path(model_name_or_path)`, and with `USE_MODELSCOPE_HUB=1` / `USE_OPENMIND_HUB=1` a hub id
    downloaded from that hub first (utils/other_hubs.py)."""
    from tuneforge.utils import other_hubs

    path = resolve_model_path(model_args.model_name_or_path)
    other_hubs.remember_run(model_args)  # its tokens and cache_dir, for ms_hub_url / om_hub_url datasets too
    if other_hubs.other_hub() is None or Path(path).exists() or looks_local(path):
        return path
    return other_hubs.download_model(path, model_args)


# ----------------------------------------------------------------------------------------------
# dtype and attention
# ----------------------------------------------------------------------------------------------
_DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


def parse_dtype(value: Any, key: str = "infer_dtype"):
    import torch

    if isinstance(value, torch.dtype):
        return value
    name = _DTYPE_NAMES.get(str(value).lower().removeprefix("torch."))
    if name is None:
        raise ConfigError(f"{key}: `{value}` is not a dtype; expected one of auto, float32, bfloat16, float16")
    return getattr(torch, name)


def resolve_dtype(infer_dtype: Any = "auto", compute_dtype: Any = None, *, is_trainable: bool,
                  has_cuda: bool | None = None):
    """The dtype weights are loaded in.

    compute_dtype (set by the trainer from `bf16`/`fp16`) wins; then `infer_dtype` for inference;
    `auto` is float32 on CPU and for training without a compute dtype, bf16 (else fp16) on a GPU.
    """
    import torch

    has_cuda = torch.cuda.is_available() if has_cuda is None else has_cuda
    if compute_dtype is not None:
        dtype = parse_dtype(compute_dtype, "compute dtype")
    elif infer_dtype not in (None, "auto") and not is_trainable:
        dtype = parse_dtype(infer_dtype)
    elif has_cuda and not is_trainable:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32
    if is_trainable and dtype == torch.float16 and not has_cuda:
        raise ConfigError(
            "fp16: true needs a CUDA GPU and this machine has none (float16 training on a CPU is not "
            "supported by PyTorch's grad scaler and is very slow). Remove `fp16: true` to train in "
            "float32, or use `bf16: true`."
        )
    return dtype


def resolve_attn_implementation(flash_attn: Any = "auto", *, has_cuda: bool | None = None) -> str:
    """LF `flash_attn` (auto | disabled | sdpa | fa2 | fa3) -> transformers `attn_implementation`. `fa2` where
    FlashAttention-2 cannot run is a warning and the default attention, as in LF (its configs run unchanged on
    a machine without it); `fa3` there is refused."""
    import torch

    value = str(flash_attn or "auto").lower()
    if value in ("fa2", "fa3") and has_cuda is None:
        has_cuda = torch.cuda.is_available()
    if value == "fa2" and not _flash_attention_runs("flash_attn", has_cuda):
        logger.warning("flash_attn: fa2 asks for FlashAttention-2, which needs a CUDA GPU and the `flash_attn` "
                       "package: using PyTorch SDPA instead (as LLaMA-Factory does; same attention, another kernel)")
        value = "auto"
    if value in ("auto", "sdpa"):
        # PyTorch SDPA; packed training rows run one causal call per sample (model/attention.py).
        from tuneforge.model.attention import register_packed_sdpa

        return register_packed_sdpa()
    if value in ("disabled", "eager"):
        return "eager"
    packages = {"fa2": ("flash_attn", "flash_attention_2"), "fa3": ("flash_attn_interface", "flash_attention_3")}
    if value not in packages:
        raise ConfigError(f"flash_attn: `{flash_attn}` is not one of auto, disabled, sdpa, fa2, fa3")
    package, implementation = packages[value]
    if not _flash_attention_runs(package, has_cuda):
        missing = "a CUDA GPU" if not has_cuda else f"the `{package}` package"
        raise NotSupportedError(
            f"flash_attn: {value} needs {missing}, which this machine does not have. "
            f"Use `flash_attn: auto` (PyTorch SDPA) instead."
        )
    return implementation


def _flash_attention_runs(package: str, has_cuda: bool) -> bool:
    return has_cuda and importlib.util.find_spec(package) is not None


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def hub_kwargs(model_args: ModelArguments) -> dict:
    return {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision or "main",  # `model_revision: ""` too
        "token": model_args.hf_hub_token,
        "trust_remote_code": bool(model_args.trust_remote_code),
    }


def call_from_pretrained(fn, path: str, what: str, **kwargs):
    """Call a `from_pretrained`, turning hub/network failures into one clear ModelError."""
    try:
        return fn(path, **kwargs)
    except OSError as exc:
        text = str(exc)
        if Path(path).exists():
            raise ModelError(f"could not load the {what} from {path}: {text.splitlines()[0]}") from exc
        offline = "couldn't connect" in text or "offline" in text.lower() or "cannot find the requested files" in text
        if offline:
            raise ModelError(
                f"could not load `{path}`: not a local folder and the Hugging Face Hub is unreachable "
                f"(offline). Download it elsewhere and pass the local folder."
            ) from exc
        raise ModelError(
            f"could not load `{path}`: not a local folder and not a model on the Hugging Face Hub "
            f"({text.splitlines()[0]})"
        ) from exc


def check_model_folder(path: str) -> dict | None:
    """Refuses what is not a loadable model folder; its config.json (None for a hub id)."""
    from tuneforge.utils.folders import finish_interrupted_save

    folder = Path(path)
    if folder.is_dir():
        finish_interrupted_save(folder)  # a full fine-tune's final save a crash interrupted (utils/folders.py)
    if folder.is_dir() and (folder / "config.json").exists():
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        problem = multimodal_problem(config, path)
        if problem:
            raise NotSupportedError(problem)
        return config
    if not folder.is_dir():
        return None
    adapter_config = folder / "adapter_config.json"
    if adapter_config.exists():
        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path", "?")
        raise ModelError(
            f"model_name_or_path: {path} is a LoRA adapter folder, not a model. Set "
            f"`model_name_or_path: {base}` (its base model) and `adapter_name_or_path: {path}`."
        )
    raise ModelError(f"model_name_or_path: {path} has no config.json; expected a Hugging Face model folder")


def gguf_location(path: str) -> tuple[str, str] | None:
    if path.lower().endswith(".gguf") and Path(path).is_file():
        if importlib.util.find_spec("gguf") is None:
            raise ModelError(f"loading {path} needs the `gguf` package: pip install gguf")
        return str(Path(path).parent), Path(path).name
    return None


def load_gguf_dense(gguf_path: str | os.PathLike, **kwargs):
    """Load a `.gguf` file as an ordinary dense (dequantized, trainable, saveable) model."""
    from transformers import AutoModelForCausalLM, GgufConfig

    gguf_path = Path(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name,
        quantization_config=GgufConfig(gguf_file=gguf_path.name, dequantize=True), **kwargs,
    )
    packed = [name for name, module in model.named_modules() if "gguf" in type(module).__name__.lower()]
    if packed:
        raise ModelError(f"{gguf_path}: weights stayed GGUF-packed after dequantization ({packed[0]}, ...)")
    # Dense now: forget the GGUF quantizer so the model can be trained and saved like any other.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def load_base_model(model_args: ModelArguments, *, is_trainable: bool, compute_dtype=None):
    """The plain `AutoModelForCausalLM` of `model_name_or_path`, no adapters (its config changed first for
    `rope_scaling` and `moe_aux_loss_coef`; random weights with `train_from_scratch`)."""
    from transformers import AutoModelForCausalLM

    from tuneforge.model import mixture_of_depths as mod

    path = resolve_model_source(model_args)
    dtype = resolve_dtype(model_args.infer_dtype, compute_dtype, is_trainable=is_trainable)
    attn = resolve_attn_implementation(model_args.flash_attn)
    if model_args.mixture_of_depths and attn.startswith("tuneforge"):
        attn = "sdpa"  # padded rows: a packed row would route its samples' tokens together
    kwargs = {**hub_kwargs(model_args), "dtype": dtype, "attn_implementation": attn}
    gguf = gguf_location(path)
    if gguf:
        if model_args.quantization_bit is not None:
            raise NotSupportedError("QLoRA (`quantization_bit`) on a .gguf file is not supported yet; "
                                    "convert it to a Hugging Face folder first")
        if _config_changes(model_args, is_trainable):
            kwargs["config"] = _model_config(model_args, gguf[0], is_trainable=is_trainable, gguf_file=gguf[1])
        if model_args.train_from_scratch:
            model = _from_config(AutoModelForCausalLM, kwargs)
        else:
            model = load_gguf_dense(path, **kwargs)
    else:
        folder_config = check_model_folder(path) or read_model_config(path)
        mod.check_folder(folder_config, path, model_args.mixture_of_depths)
        model_class = vision_model_class(folder_config) or AutoModelForCausalLM
        if model_class is not AutoModelForCausalLM:  # padded batches; positions jump over images (model/vision.py)
            kwargs["attn_implementation"] = attn = "sdpa" if attn.startswith("tuneforge") else attn
        if model_args.mixture_of_depths == "load":
            model_class = mod.mod_class(_concrete_class(model_class, model_args, path, kwargs))
            kwargs["key_mapping"] = mod.BLOCK_KEY_MAPPING
        if _config_changes(model_args, is_trainable):
            kwargs["config"] = _model_config(model_args, path, is_trainable=is_trainable)
        if model_args.train_from_scratch:
            model = _from_config(model_class, kwargs)
        else:
            kwargs.update(quantization_kwargs(model_args, dtype))
            model = call_from_pretrained(model_class.from_pretrained, path, "model", **kwargs)
        if "quantization_config" in kwargs:
            model = prepare_quantized(model, model_args.quantization_bit, is_trainable=is_trainable)
        if model_args.mixture_of_depths == "load":
            mod.load_routers(model, path)
    if model_args.mixture_of_depths == "convert":
        mod.convert_to_mixture_of_depths(model)
    if is_trainable and model_args.upcast_layernorm:
        upcast_layernorms(model)
    if is_trainable and model_args.upcast_lmhead_output:
        upcast_lmhead_output(model)
    # The KV cache only helps generation; training would keep it alive for nothing.
    model.config.use_cache = not is_trainable
    logger.info("loaded %s (%s, attention: %s)", path, str(dtype).removeprefix("torch."), attn)
    return model


def load_model(model_args: ModelArguments, finetuning_args: FinetuningArguments, *, is_trainable: bool,
               compute_dtype=None):
    """Base model + fine-tuning method (full / freeze / lora) + `adapter_name_or_path`."""
    from tuneforge.model.adapters import apply_finetuning

    model = load_base_model(model_args, is_trainable=is_trainable, compute_dtype=compute_dtype)
    model = apply_finetuning(model, finetuning_args, model_args, is_trainable=is_trainable)
    if not is_trainable:
        model.requires_grad_(False)
        model.eval()
    trainable, total = count_parameters(model)
    logger.info("trainable params: %s || all params: %s || trainable%%: %.4f",
                f"{trainable:,}", f"{total:,}", 100.0 * trainable / max(total, 1))
    if model_args.print_param_status and is_main_process():
        print_param_status(model)
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once. A parameter DeepSpeed ZeRO-3 partitioned
    is empty in this process: its whole size is `ds_numel`; a bitsandbytes 4-bit one packs several weights per
    element and keeps the original shape in its `quant_state`."""
    import math

    trainable = total = 0
    for param in model.parameters():
        quant_state = getattr(param, "quant_state", None)
        size = getattr(param, "ds_numel", None) or (math.prod(quant_state.shape) if quant_state is not None
                                                    else param.numel())
        total += size
        if param.requires_grad:
            trainable += size
    return trainable, total


def _concrete_class(auto_class, model_args: ModelArguments, path: str, kwargs: dict):
    """The model class an Auto class picks for the folder's config."""
    from transformers import AutoConfig

    config = kwargs.get("config") or call_from_pretrained(AutoConfig.from_pretrained, path, "model config",
                                                          **hub_kwargs(model_args))
    return auto_class._model_mapping[type(config)]


def _config_changes(model_args: ModelArguments, is_trainable: bool) -> bool:
    return bool(model_args.rope_scaling is not None or model_args.train_from_scratch
                or (is_trainable and model_args.moe_aux_loss_coef))


def _model_config(model_args: ModelArguments, path: str, *, is_trainable: bool, **extra):
    """The model's config with `rope_scaling` (`configure_rope`) and `moe_aux_loss_coef` applied, for
    `from_pretrained(config=...)` or `train_from_scratch`."""
    from transformers import AutoConfig

    from tuneforge.model.rope import configure_rope

    config = call_from_pretrained(AutoConfig.from_pretrained, path, "model config", **hub_kwargs(model_args), **extra)
    if model_args.rope_scaling is not None:
        configure_rope(config, model_args.rope_scaling, model_args.model_max_length)
    configure_moe(config, model_args.moe_aux_loss_coef, is_trainable=is_trainable)
    return config


def _from_config(model_class, kwargs: dict):
    """`train_from_scratch`: the architecture of the checkpoint's config with random weights (LF), no weights read."""
    model = model_class.from_config(kwargs["config"], dtype=kwargs["dtype"],
                                    attn_implementation=kwargs["attn_implementation"],
                                    trust_remote_code=kwargs.get("trust_remote_code", False))
    logger.info("train_from_scratch: %s with randomly initialised weights", type(model).__name__)
    return model
