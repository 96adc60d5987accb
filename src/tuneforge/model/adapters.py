"""Fine-tuning methods on a loaded model: `full`, `freeze` and `lora` (peft), with LLaMA-Factory semantics.

* full:   every parameter trains.
* freeze: `freeze_trainable_layers` n > 0 trains the last n decoder layers, n < 0 the first |n|;
          with `use_llama_pro` (LLaMA Pro) the n blocks `tuneforge expand-layers` added (lora: LoRA on those only);
          `freeze_trainable_modules` limits that to named sub-modules of a layer (`mlp,self_attn`, or
          `all`); `freeze_extra_modules` adds modules outside the layers (`embed_tokens,norm`).
* lora:   `lora_target: all` = every linear layer except the LM head. `adapter_name_or_path` is a
          list: when training, all but the last are merged into the base and the last is resumed
          (unless `create_new_adapter`, which merges all and starts a fresh one); for inference all
          are merged. A vocabulary grown for new tokens (model/vocab.py, run first) adds the embeddings
          and the LM head to `additional_target` (peft `modules_to_save`), as in LLaMA-Factory.
* oft:    peft's orthogonal fine-tuning (`OFTConfig`: `oft_rank` blocks per layer or `oft_block_size`,
          `module_dropout`, `additional_target`), on `oft_target` when it is not `all`, else on `lora_target`
          (LLaMA-Factory 0.9.5 reads `lora_target` for OFT); adapters load, resume and merge as LoRA's do.
Trainable parameters are kept in float32 even when the frozen base is bf16/fp16 (unless
`pure_bf16` or `use_badam`), because optimizer updates on half-precision weights lose small steps.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

from tuneforge.errors import ConfigError, ModelError
from tuneforge.model.adapter_check import check_adapter_fits
from tuneforge.model.loader import looks_local
from tuneforge.model.quantization import is_quantized
from tuneforge.model.vocab import embedding_module_names, fit_embeddings_to_adapter, prepare_vocab, ties_embeddings
from tuneforge.config.args import (ADAPTER_METHODS, FinetuningArguments, ModelArguments, effective_lora_alpha,
                                   split_names)
from tuneforge.utils.folders import finish_interrupted_save
from tuneforge.utils.vision_models import FAMILIES, forbidden_modules, matches_any

logger = logging.getLogger(__name__)

FINETUNING_TYPES = ("full", "freeze", "lora", "oft")
_LAYER_PARAM = re.compile(r"\.(\d+)\.([^.]+)")


def apply_finetuning(model, finetuning_args: FinetuningArguments, model_args: ModelArguments, *, is_trainable: bool):
    """Set up the fine-tuning method; returns the model (a `PeftModel` for lora with adapters)."""
    method = finetuning_args.finetuning_type
    if method not in FINETUNING_TYPES:
        raise ConfigError(f"finetuning_type: `{method}` is not one of {', '.join(FINETUNING_TYPES)}")
    adapters = split_names(model_args.adapter_name_or_path)
    if adapters and method not in ADAPTER_METHODS:
        raise ConfigError(
            f"adapter_name_or_path is set ({', '.join(adapters)}) but finetuning_type is `{method}`; "
            f"adapters are LoRA / OFT weights: use `finetuning_type: lora` (or oft), or pass a full fine-tune's "
            f"output folder as model_name_or_path"
        )
    if prepare_vocab(model, model_args) and method in ADAPTER_METHODS and not finetuning_args.additional_target:
        # LF: a resized vocabulary trains (and saves with the adapter) the embeddings and the LM head in full
        targets = embedding_module_names(model)
        finetuning_args = dataclasses.replace(finetuning_args, additional_target=targets)
        if is_trainable:
            logger.warning("vocabulary resized: %s train in full and are saved with the adapter", ",".join(targets))
    if method == "full":
        if is_trainable:
            model.requires_grad_(True)
            _freeze_vision_parts(model, finetuning_args)
    elif method == "freeze":
        if is_trainable:
            _setup_freeze(model, finetuning_args)
            _freeze_vision_parts(model, finetuning_args)
    else:
        model = _setup_lora(model, finetuning_args, model_args, adapters, is_trainable=is_trainable)
    if is_trainable and not finetuning_args.pure_bf16 and not finetuning_args.use_badam:
        upcast_trainable_params(model)  # BAdam keeps fp32 copies of the block it trains itself (as in LF)
    if is_trainable and model_args.use_v1_kernels:  # LF applies them to a model being trained only
        import torch

        from tuneforge.model.v1_kernels import apply_v1_kernels

        apply_v1_kernels(model, model_args.use_v1_kernels, "cuda" if torch.cuda.is_available() else "cpu")
    return model


def upcast_trainable_params(model) -> None:
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)


# ----------------------------------------------------------------------------------------------
# vision-language models (utils/vision_models.py): LF's rules for the vision tower, projector, language model
# ----------------------------------------------------------------------------------------------
def _vision_forbidden(model, finetuning_args: FinetuningArguments) -> tuple[str, ...] | None:
    """The module keys a vision-language model keeps frozen (LF's `get_forbidden_modules`), or None."""
    family = FAMILIES.get(str(getattr(model.config, "model_type", "")))
    if family is None:
        return None
    return forbidden_modules(family, freeze_vision_tower=finetuning_args.freeze_vision_tower,
                             freeze_multi_modal_projector=finetuning_args.freeze_multi_modal_projector,
                             freeze_language_model=finetuning_args.freeze_language_model)


def _freeze_vision_parts(model, finetuning_args: FinetuningArguments) -> None:
    """full: everything but the forbidden parts trains; freeze: the projector joins the trained layers unless
    `freeze_multi_modal_projector` (LF), then the forbidden parts are frozen."""
    forbidden = _vision_forbidden(model, finetuning_args)
    if forbidden is None:
        return
    projector = FAMILIES[model.config.model_type].projector
    for name, param in model.named_parameters():
        if finetuning_args.finetuning_type == "freeze" and matches_any(name, projector):
            param.requires_grad_(not finetuning_args.freeze_multi_modal_projector)
        if matches_any(name, forbidden):
            param.requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# freeze
# ----------------------------------------------------------------------------------------------
def _num_layers(model) -> int:
    config = getattr(model.config, "text_config", None) or model.config
    for key in ("num_hidden_layers", "num_layers", "n_layer"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise ConfigError(f"finetuning_type: freeze: cannot find the number of layers of {type(model).__name__}")


def freeze_trainable_layer_ids(num_layers: int, trainable_layers: int, llama_pro: bool = False) -> range:
    """LF: n > 0 -> the last n layers; n <= 0 -> the first |n| layers. With `use_llama_pro` the n blocks that
    `tuneforge expand-layers` inserted: the last layer of every group of num_layers / n."""
    if llama_pro:
        if trainable_layers <= 0 or num_layers % trainable_layers:
            raise ConfigError(f"use_llama_pro: the model has {num_layers} layers, which is not a multiple of "
                              f"freeze_trainable_layers ({trainable_layers}, the number of expanded blocks); "
                              f"expand the model with `tuneforge expand-layers` and set freeze_trainable_layers "
                              f"to its --num_expand")
        stride = num_layers // trainable_layers
        return range(stride - 1, num_layers, stride)
    if trainable_layers > 0:
        return range(max(0, num_layers - trainable_layers), num_layers)
    return range(min(-trainable_layers, num_layers))


def _setup_freeze(model, finetuning_args: FinetuningArguments) -> None:
    layer_ids = set(freeze_trainable_layer_ids(_num_layers(model), int(finetuning_args.freeze_trainable_layers),
                                               finetuning_args.use_llama_pro))
    modules = split_names(finetuning_args.freeze_trainable_modules) or ["all"]
    extra = split_names(finetuning_args.freeze_extra_modules)

    layer_modules, outer_modules = set(), set()
    for name, _ in model.named_parameters():
        match = _LAYER_PARAM.search(name)
        if match:
            layer_modules.add(match.group(2))
        else:
            outer_modules.add(name.split(".")[-2] if "." in name else name)
    for module in modules:
        if module != "all" and module not in layer_modules:
            raise ConfigError(
                f"freeze_trainable_modules: `{module}` is not a module of the decoder layers; "
                f"expected `all` or some of {', '.join(sorted(layer_modules))}"
            )
    for module in extra:
        if module not in outer_modules:
            raise ConfigError(
                f"freeze_extra_modules: `{module}` is not a module outside the decoder layers; "
                f"expected some of {', '.join(sorted(outer_modules))}"
            )

    for name, param in model.named_parameters():
        match = _LAYER_PARAM.search(name)
        if match:
            trainable = int(match.group(1)) in layer_ids and ("all" in modules or match.group(2) in modules)
        else:
            trainable = (name.split(".")[-2] if "." in name else name) in extra
        param.requires_grad_(trainable)
    logger.info("freeze tuning: trainable layers %s, modules %s, extra modules %s",
                sorted(layer_ids), ",".join(modules), ",".join(extra) or "none")


# ----------------------------------------------------------------------------------------------
# lora
# ----------------------------------------------------------------------------------------------
def find_all_linear_modules(model, skip: tuple[str, ...] = ()) -> list[str]:
    """Short names of every linear layer except the output head (what `lora_target: all` means) and those
    inside the `skip` modules (a vision-language model's projector, and its vision tower when frozen: LF)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for full_name, module in model.named_modules():
        cls = type(module).__name__
        if module is output or full_name.split(".")[-1] in ("lm_head", "output_layer") or matches_any(full_name, skip):
            continue
        if "Linear" in cls and "Embedding" not in cls:
            names.add(full_name.split(".")[-1])
    return sorted(names)


def lora_target_modules(model, finetuning_args: FinetuningArguments) -> list[str]:
    targets = _lora_target_names(model, finetuning_args)
    if not finetuning_args.use_llama_pro:
        return targets
    # LLaMA Pro: the targets inside the expanded blocks only, as full module names
    layer_ids = freeze_trainable_layer_ids(_num_layers(model), int(finetuning_args.freeze_trainable_layers), True)
    return [name for name, _ in model.named_modules()
            if (match := _LAYER_PARAM.search(name + ".")) and int(match.group(1)) in layer_ids
            and name.split(".")[-1] in targets]


def _lora_target_names(model, finetuning_args: FinetuningArguments) -> list[str]:
    targets = list(split_names(finetuning_args.lora_target)) or ["all"]
    forbidden = _vision_forbidden(model, finetuning_args)
    if forbidden is not None:  # LF's `patch_target_modules`: full names, none inside a frozen part
        family = FAMILIES[model.config.model_type]
        if targets == ["all"]:
            skip = family.projector + (family.vision_tower if finetuning_args.freeze_vision_tower else ())
            targets = find_all_linear_modules(model, skip)
        names = [name for name, _ in model.named_modules() if any(target in name for target in targets)
                 and not matches_any(name, forbidden + family.lora_conflicts)]
        if not names:
            raise ConfigError(f"lora_target: {', '.join(targets)} names no module outside the frozen parts of "
                              f"{type(model).__name__} ({', '.join(forbidden)}); expected `all` or some of "
                              f"{', '.join(find_all_linear_modules(model, forbidden))}")
        return names
    if targets == ["all"]:
        return find_all_linear_modules(model)
    module_names = {name.split(".")[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in module_names and not any(c in t for c in "*[]()|\\")]
    if missing:
        raise ConfigError(
            f"lora_target: {', '.join(missing)} not found in {type(model).__name__}; expected `all` or "
            f"some of {', '.join(find_all_linear_modules(model))}"
        )
    return targets


def build_lora_config(model, finetuning_args: FinetuningArguments):
    from peft import LoraConfig, TaskType

    init = True
    modules_to_save = list(split_names(finetuning_args.additional_target))
    # tied input/output embeddings that both train in full (a resized vocabulary) stay one matrix (peft >= 0.18)
    tie = ties_embeddings(model) and set(embedding_module_names(model)) <= set(modules_to_save)
    tying = {"ensure_weight_tying": True} if tie else {}
    if finetuning_args.pissa_init:
        init = "pissa" if finetuning_args.pissa_iter == -1 else f"pissa_niter_{finetuning_args.pissa_iter}"
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        inference_mode=False,
        r=finetuning_args.lora_rank,
        lora_alpha=effective_lora_alpha(finetuning_args),  # LF: unset (or 0) -> 2 * rank
        lora_dropout=finetuning_args.lora_dropout,
        target_modules=lora_target_modules(model, finetuning_args),
        modules_to_save=modules_to_save or None,
        use_rslora=finetuning_args.use_rslora,
        use_dora=finetuning_args.use_dora,
        init_lora_weights=init,
        **tying,
    )


def oft_target_modules(model, finetuning_args: FinetuningArguments) -> list[str]:
    """`oft_target` when set to other modules than `all`, else `lora_target` (what LF 0.9.5 reads for OFT)."""
    oft, lora = split_names(finetuning_args.oft_target) or ("all",), split_names(finetuning_args.lora_target) or ("all",)
    if oft == ("all",):
        return lora_target_modules(model, finetuning_args)
    if lora != ("all",) and set(lora) != set(oft):
        logger.warning("OFT on oft_target %s; LLaMA-Factory 0.9.5 would use lora_target %s", ",".join(oft),
                       ",".join(lora))
    try:
        return lora_target_modules(model, dataclasses.replace(finetuning_args, lora_target=oft))
    except ConfigError as err:
        raise ConfigError(str(err).replace("lora_target:", "oft_target:", 1)) from None


def build_oft_config(model, finetuning_args: FinetuningArguments):
    """LF's OFT settings: `oft_rank` (blocks per layer) or `oft_block_size`, `module_dropout`, `additional_target`;
    peft's defaults for the rest (Cayley-Neumann parametrisation)."""
    from peft import OFTConfig, TaskType

    try:
        return OFTConfig(
            task_type=TaskType.CAUSAL_LM,
            inference_mode=False,
            r=finetuning_args.oft_rank,
            oft_block_size=finetuning_args.oft_block_size,
            target_modules=oft_target_modules(model, finetuning_args),
            module_dropout=finetuning_args.module_dropout,
            modules_to_save=list(split_names(finetuning_args.additional_target)) or None,
        )
    except ValueError as err:  # oft_rank and oft_block_size both set, or both 0 (config/validate.py says so first)
        raise ConfigError(f"finetuning_type: oft: {err}") from None


def _setup_lora(model, finetuning_args: FinetuningArguments, model_args: ModelArguments, adapters: list[str], *,
                is_trainable: bool):
    """lora and oft: attach / resume `adapters`, or a new adapter of the method when training."""
    from peft import get_peft_model

    oft = finetuning_args.finetuning_type == "oft"
    resume = is_trainable and not finetuning_args.create_new_adapter
    if adapters:
        # merging into 4/8-bit weights rounds the adapter away: a quantized model keeps its (single) adapter
        # attached, as in LLaMA-Factory (config/validate.py refuses several)
        merge_last = not resume and not is_quantized(model)
        model = attach_adapters(model, adapters, model_args, merge_last=merge_last, is_trainable=is_trainable)
    if is_trainable and not (adapters and resume):
        config = build_oft_config(model, finetuning_args) if oft else build_lora_config(model, finetuning_args)
        try:
            model = get_peft_model(model, config)
        except ValueError as err:  # e.g. a module type peft cannot adapt
            raise ConfigError(f"finetuning_type: {finetuning_args.finetuning_type}: {str(err).splitlines()[0]}") from None
        logger.info("%s on %s", "OFT" if oft else "LoRA", ",".join(sorted(model.peft_config["default"].target_modules)))
    if is_trainable and not oft:
        from tuneforge.model.fast_lora import enable_fast_lora

        fused = enable_fast_lora(model)
        if fused:
            logger.info("LoRA: %d layers on the fused path (model/fast_lora.py)", fused)
    return model


def resolve_adapter_path(name: str) -> str:
    path = Path(name).expanduser()
    if path.exists():
        finish_interrupted_save(path)  # a training run's final save a crash interrupted (utils/folders.py)
        if not (path / "adapter_config.json").is_file():
            hint = " (it holds a full model: pass it as model_name_or_path)" if (path / "config.json").exists() else ""
            raise ModelError(f"adapter_name_or_path: {name} has no adapter_config.json; it is not a LoRA adapter folder{hint}")
        return str(path)
    if looks_local(name):
        raise ModelError(f"adapter_name_or_path: adapter path {name} does not exist")
    return name


def attach_adapters(model, adapters: list[str], model_args: ModelArguments, *, merge_last: bool,
                    is_trainable: bool = False):
    """Merge every adapter but the last into the base; the last is merged too when `merge_last`,
    else returned attached as a `PeftModel` (trainable when `is_trainable`)."""
    from peft import PeftModel

    kwargs = {"cache_dir": model_args.cache_dir, "token": model_args.hf_hub_token}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    for index, name in enumerate(adapters):
        path = resolve_adapter_path(name)
        if Path(path).is_dir():
            fit_embeddings_to_adapter(model, Path(path))  # an adapter trained with new tokens
            check_adapter_fits(model, Path(path), model_args.model_name_or_path)
        last = index == len(adapters) - 1
        try:
            model = PeftModel.from_pretrained(model, path, is_trainable=is_trainable and last and not merge_last, **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelError(f"adapter_name_or_path: could not load adapter `{name}`: {str(exc).splitlines()[0]}") from exc
        if not last or merge_last:
            model = model.merge_and_unload()
    merged = len(adapters) if merge_last else len(adapters) - 1
    logger.info("adapters: merged %d, attached %d (%s)", merged, len(adapters) - merged, ",".join(adapters))
    return model
