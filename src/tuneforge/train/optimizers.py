"""LLaMA-Factory 0.9.5's own optimizers (`create_custom_optimizer`): GaLore, APOLLO, BAdam, Adam-mini and Muon.

Which one: `use_galore`, `use_apollo`, `use_badam`, `use_adam_mini`, `use_muon` (config/validate.py lets at most
one through, and refuses the combinations LF refuses). Each is built as LF builds it:

- GaLore (galore-torch): the 2-D weights of the `nn.Linear` modules `galore_target` names (`all`: every linear
  layer but the LM head) form a param group with `rank`, `update_proj_gap` (`galore_update_interval`), `scale`
  and `proj_type`: their gradients are projected to rank `galore_rank` and Adam's moments live there. The other
  trainable parameters are plain groups (with / without weight decay). `optim` picks the class: adamw_torch
  (and transformers 5's default adamw_torch_fused, the same update) -> GaLoreAdamW, adamw_bnb_8bit / adamw_8bit
  / paged_adamw_8bit -> GaLoreAdamW8bit (needs bitsandbytes), adafactor -> GaLoreAdafactor.
- APOLLO (apollo-torch): the same split with APOLLO's keys (`rank`, `proj`, `proj_type`, `update_proj_gap`,
  `scale`, `scale_type`, `scale_front`); `optim` adamw_torch (or adamw_torch_fused) -> APOLLOAdamW.
- `galore_layerwise` / `apollo_layerwise`: one optimizer (and one lr schedule) per parameter, stepped from the
  parameter's gradient hook as soon as its gradient is complete, which then frees it; the Trainer's optimizer is
  a no-op (`LayerwiseOptimizer`). No gradient accumulation, no multi-process run, and the logged grad_norm is 0.
- BAdam (badam): `badam_mode: layer` wraps the `optim` optimizer in `BlockOptimizer`: one decoder layer at a time
  trains (the others get requires_grad False), switching every `badam_switch_interval` steps in
  `badam_switch_mode` order from `badam_start_block`; embeddings, final norm and LM head stay frozen, the active
  block's update runs on fp32 copies. `badam_mode: ratio` (`BlockOptimizerRatio`): every weight but the
  embeddings and LM head trains, each step only a `badam_update_ratio` share of its entries (sparse gradients,
  `badam_mask_mode`). LF keeps the trainable weights in their loaded dtype with BAdam (model/adapters.py).
- Adam-mini (adam-mini): `Adam_mini` over the named parameters with the model's hidden size and head counts.
- Muon: LF's Moonlight-style Muon for the 2-D weights outside embeddings and LM head (torch.optim.Muon with
  `adjust_lr_fn="match_rms_adamw"`: lr x 0.2 sqrt(max(rows, cols)), decoupled weight decay, momentum 0.95,
  Nesterov, 5 Newton-Schulz steps), AdamW (`adam_beta1/2`, `adam_epsilon`) for every other parameter; one
  `learning_rate` and `weight_decay` for both (`MuonWithAdamW`).

Where LF deviates from what its keys say, tuneforge follows the keys (and says so here): BAdam's block optimizer
copies the first param group's weight decay, which in LF is the no-decay group (so LF's BAdam ignores
`weight_decay`); here the decay group comes first and the base optimizer gets `weight_decay` itself.

galore-torch and apollo-torch import their 8-bit (bitsandbytes) optimizers in their package `__init__`; without
bitsandbytes the plain optimizers are loaded from their own modules (`_optional_module`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
from typing import Any

import torch
from torch import nn

from tuneforge.config.optimizer_facts import (APOLLO_OPTIMS, GALORE_OPTIMS, OPTIMIZER_KEYS,
                                               missing_package_message)
from tuneforge.errors import ConfigError, NotSupportedError

logger = logging.getLogger("tuneforge")

_GALORE_MODULES = {"GaLoreAdamW": ("adamw", "AdamW"), "GaLoreAdamW8bit": ("adamw8bit", "AdamW8bit"),
                   "GaLoreAdafactor": ("adafactor", "Adafactor")}
_APOLLO_MODULES = {"APOLLOAdamW": ("apollo", "AdamW")}


def selected_optimizer(finetuning_args) -> str | None:
    """The `use_*` key of the custom optimizer this run uses, or None."""
    return next((key for key in OPTIMIZER_KEYS if getattr(finetuning_args, key, False)), None)


def _optional_module(package: str, submodule: str, key: str):
    """`package.submodule`. galore-torch / apollo-torch import their bitsandbytes optimizers in `__init__`, so
    without bitsandbytes the package import fails although the plain optimizers never use it: then the package
    is registered without running its `__init__` and only `submodule` is loaded."""
    name = f"{package}.{submodule}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == package:
            raise NotSupportedError(missing_package_message(key)) from None
        if not (err.name or "").startswith("bitsandbytes"):
            raise
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise NotSupportedError(missing_package_message(key))
    if package not in sys.modules:
        sys.modules[package] = importlib.util.module_from_spec(spec)  # a namespace for its submodules only
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if (err.name or "").startswith("bitsandbytes"):
            raise NotSupportedError(f"`{key}` with this `optim` is an 8-bit optimizer: it needs bitsandbytes, "
                                    "which is not installed: pip install bitsandbytes") from None
        raise


def _optimizer_class(key: str, package: str, modules: dict[str, tuple[str, str]], class_name: str):
    submodule, attr = modules[class_name]
    return getattr(_optional_module(package, submodule, key), attr)


def _plain_kwargs(args) -> dict[str, Any]:
    """The `optim` optimizer's keyword arguments (lr, betas, eps, ...) as the HF Trainer builds them, without the
    kernel switches (`fused`, `foreach`) the package optimizers do not take."""
    from transformers import Trainer

    _, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    return {key: value for key, value in kwargs.items() if key not in ("fused", "foreach")}


def _linear_targets(model: nn.Module, targets, key: str) -> list[nn.Parameter]:
    """The trainable 2-D weights of the `nn.Linear` modules whose name contains one of `targets` (`all`: every
    linear layer but the LM head), as LF's `_create_galore_optimizer` / `_create_apollo_optimizer` pick them."""
    from tuneforge.model.adapters import find_all_linear_modules

    names = list(targets) or ["all"]
    if names == ["all"]:
        names = find_all_linear_modules(model)
    params, seen = [], set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and any(target in name for target in names):
            for param in module.parameters():
                if param.requires_grad and param.ndim > 1 and id(param) not in seen:
                    seen.add(id(param))
                    params.append(param)
    if not params:
        raise ConfigError(f"`{key.replace('use_', '')}_target: {','.join(targets) or 'all'}` matches no trainable "
                          f"linear layer of {type(model).__name__}; linear layers: "
                          f"{', '.join(find_all_linear_modules(model)) or 'none'}")
    return params


def _split_rest(model: nn.Module, special: list[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The trainable parameters not in `special`: (with weight decay, without), by the HF Trainer's rule."""
    from tuneforge.train.optim import decay_parameter_names

    decay_names = decay_parameter_names(model)
    special_ids = {id(p) for p in special}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in special_ids:
            (decay if name in decay_names else no_decay).append(param)
    return decay, no_decay


class LayerwiseOptimizer(torch.optim.Optimizer):
    """Layer-wise GaLore / APOLLO: `optimizers[param]` steps `param` from its post-accumulate-grad hook and drops
    its gradient; this optimizer, the one the Trainer holds, does nothing. `attach_schedulers` gives every
    per-parameter optimizer its own lr schedule, stepped right after it."""

    def __init__(self, optimizers: dict[nn.Parameter, torch.optim.Optimizer], lr: float) -> None:
        self.optimizers = optimizers
        super().__init__([torch.zeros(1, 1)], {"lr": lr})
        self.schedulers: dict[nn.Parameter, Any] = {}
        for param in optimizers:
            param.register_post_accumulate_grad_hook(self._step_param)

    def _step_param(self, param: nn.Parameter) -> None:
        if param.grad is not None:
            self.optimizers[param].step()
            self.optimizers[param].zero_grad(set_to_none=True)

    def attach_schedulers(self, make_scheduler) -> None:
        if self.schedulers:
            return
        self.schedulers = {param: make_scheduler(optimizer) for param, optimizer in self.optimizers.items()}
        for param in self.optimizers:
            param.register_post_accumulate_grad_hook(lambda p: self.schedulers[p].step())

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def step(self, closure=None):
        return None


def _projection_optimizer(model, args, finetuning_args, key: str):
    """GaLore or APOLLO, whole-model or layer-wise (LF's `_create_galore_optimizer` / `_create_apollo_optimizer`)."""
    galore = key == "use_galore"
    prefix = "galore" if galore else "apollo"
    table, package, modules = (GALORE_OPTIMS, "galore_torch", _GALORE_MODULES) if galore else \
        (APOLLO_OPTIMS, "apollo_torch", _APOLLO_MODULES)
    optim = getattr(args.optim, "value", args.optim)  # an OptimizerNames member once TrainingArguments parsed it
    if optim not in table:
        raise ConfigError(f"`{key}` works with `optim` {', '.join(sorted(table))}; got `optim: {optim}`")
    optim_class = _optimizer_class(key, package, modules, table[optim])
    if galore:
        names, layerwise = finetuning_args.galore_target, finetuning_args.galore_layerwise
        extra = {"rank": finetuning_args.galore_rank, "update_proj_gap": finetuning_args.galore_update_interval,
                 "scale": finetuning_args.galore_scale, "proj_type": finetuning_args.galore_proj_type}
    else:
        names, layerwise = finetuning_args.apollo_target, finetuning_args.apollo_layerwise
        extra = {"rank": finetuning_args.apollo_rank, "proj": finetuning_args.apollo_proj,
                 "proj_type": finetuning_args.apollo_proj_type,
                 "update_proj_gap": finetuning_args.apollo_update_interval, "scale": finetuning_args.apollo_scale,
                 "scale_type": finetuning_args.apollo_scale_type, "scale_front": finetuning_args.apollo_scale_front}
    targets = _linear_targets(model, names, key)
    decay, no_decay = _split_rest(model, targets)
    kwargs = _plain_kwargs(args)
    if "no_deprecation_warning" in inspect.signature(optim_class.__init__).parameters:
        kwargs["no_deprecation_warning"] = True  # GaLoreAdamW's warning is about transformers' old AdamW
    groups = [(no_decay, {"weight_decay": 0.0}), (decay, {"weight_decay": args.weight_decay}),
              (targets, {"weight_decay": args.weight_decay, **extra})]  # the projected weights decay too (LF)
    if layerwise:
        if args.gradient_accumulation_steps != 1:
            raise ConfigError(f"`{prefix}_layerwise` steps each weight as soon as its gradient is ready: it needs "
                              f"`gradient_accumulation_steps: 1`, got {args.gradient_accumulation_steps}")
        if args.world_size > 1:
            raise ConfigError(f"`{prefix}_layerwise` cannot run in {args.world_size} processes (LLaMA-Factory: "
                              "\"Distributed training does not support layer-wise\"); set it to false")
        optimizers = {param: optim_class([{"params": [param], **settings}], **kwargs)
                      for params, settings in groups for param in params}
        logger.warning("%s layer-wise: every weight is updated during the backward pass; the logged grad_norm is 0",
                       "GaLore" if galore else "APOLLO")
        optimizer = LayerwiseOptimizer(optimizers, lr=args.learning_rate)
    else:
        optimizer = optim_class([{"params": params, **settings} for params, settings in groups if params], **kwargs)
    logger.info("%s optimizer (%s) on %d weight matrices: %s", "GaLore" if galore else "APOLLO", optim_class.__name__,
                len(targets), ", ".join(f"{k}={v}" for k, v in extra.items()))
    return optimizer


def _badam_optimizer(model, args, finetuning_args):
    """LF's `_create_badam_optimizer`: a BlockOptimizer (layer) or BlockOptimizerRatio (ratio)."""
    from importlib.metadata import version

    from transformers import Trainer

    try:
        import badam
    except ModuleNotFoundError:
        raise NotSupportedError(missing_package_message("use_badam")) from None
    installed = version("badam")
    if tuple(int(part) for part in installed.split(".")[:2] if part.isdigit()) < (1, 2):
        raise NotSupportedError(f"`use_badam` needs badam >= 1.2.1, found {installed}: pip install -U badam")
    if args.world_size > 1:
        raise ConfigError(f"`use_badam` in {args.world_size} processes: LLaMA-Factory runs BAdam distributed only "
                          "layer-wise under DeepSpeed ZeRO-3, which tuneforge does not wire; train in one process")
    optim_class, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    decay, no_decay = _split_rest(model, [])
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    named = list(model.named_parameters())
    if finetuning_args.badam_mode == "layer":
        base = optim_class([g for g in groups if g["params"]], **{**kwargs, "weight_decay": args.weight_decay})
        optimizer = badam.BlockOptimizer(
            base_optimizer=base, named_parameters_list=named, block_prefix_list=None,
            switch_block_every=_switch_every(finetuning_args.badam_switch_interval),
            start_block=finetuning_args.badam_start_block,
            switch_mode=finetuning_args.badam_switch_mode, verbose=finetuning_args.badam_verbose)
        if not optimizer.block_prefix_list:
            raise ConfigError(f"`badam_mode: layer` found no decoder layers (`...layers.N.`) in "
                              f"{type(model).__name__}'s parameter names; use `badam_mode: ratio`")
        logger.info("BAdam (layer-wise): %d blocks, switch mode %s, every %s steps; first block: %s",
                    optimizer.block_num, finetuning_args.badam_switch_mode, finetuning_args.badam_switch_interval,
                    ", ".join(optimizer.active_param_prefixs))
    else:
        if finetuning_args.badam_update_ratio <= 1e-6:
            raise ConfigError(f"`badam_update_ratio` must be positive, got {finetuning_args.badam_update_ratio}")
        # an LM head tied to the embeddings is no parameter of its own: nothing to freeze besides the embeddings
        has_head = any("lm_head" in name for name, _ in named)
        optimizer = badam.BlockOptimizerRatio(
            param_groups=[g for g in groups if g["params"]], named_parameters_list=named,
            update_ratio=finetuning_args.badam_update_ratio, mask_mode=finetuning_args.badam_mask_mode,
            verbose=finetuning_args.badam_verbose, include_embedding=False, include_lm_head=not has_head,
            **{k: v for k, v in kwargs.items() if k in ("lr", "betas", "eps")})
        logger.info("BAdam (ratio): update ratio %s, mask mode %s", finetuning_args.badam_update_ratio,
                    finetuning_args.badam_mask_mode)
    return optimizer


def _switch_every(interval: int | None) -> int:
    """`badam_switch_interval` for BlockOptimizer: -1 (LF: "disable the block update") never switches; BAdam
    itself would switch after every step, `(step + 1) % -1` being 0."""
    return sys.maxsize if interval in (None, -1) else interval


def _model_config(model):
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "pretrained_model"):
        config = model.pretrained_model.config
    return getattr(config, "text_config", None) or config


def _adam_mini_optimizer(model, args):
    """LF's `_create_adam_mini_optimizer`: Adam_mini with the model's hidden size and attention head counts."""
    try:
        from adam_mini import Adam_mini
    except ModuleNotFoundError:
        raise NotSupportedError(missing_package_message("use_adam_mini")) from None
    config = _model_config(model)
    dim, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if dim is None or heads is None:
        raise ConfigError(f"`use_adam_mini` needs the model's hidden_size and num_attention_heads; "
                          f"{type(model).__name__}'s config has hidden_size={dim}, num_attention_heads={heads}")
    optimizer = Adam_mini(named_parameters=model.named_parameters(), lr=args.learning_rate,
                          betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                          weight_decay=args.weight_decay, dim=dim, n_heads=heads,
                          n_kv_heads=getattr(config, "num_key_value_heads", None), verbose=False)
    logger.info("Adam-mini optimizer: %d parameter blocks (hidden size %d, %d heads)", len(optimizer.param_groups),
                dim, heads)
    return optimizer


class MuonWithAdamW(torch.optim.Optimizer):
    """LF's Muon: torch.optim.Muon for `muon_params` (2-D), torch.optim.AdamW for `adamw_params`, as one optimizer.

    The param groups are the two inner optimizers' own groups (each tagged `use_muon`), so the lr schedule and a
    checkpoint's state reach both; the state of every parameter is this optimizer's `state`."""

    def __init__(self, muon_params, adamw_params, *, lr: float, weight_decay: float, betas, eps: float,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5) -> None:
        muon_params, adamw_params = list(muon_params), list(adamw_params)
        self._muon = torch.optim.Muon(muon_params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      nesterov=nesterov, ns_steps=ns_steps,
                                      adjust_lr_fn="match_rms_adamw") if muon_params else None
        self._adamw = torch.optim.AdamW(adamw_params, lr=lr, betas=betas, eps=eps,
                                        weight_decay=weight_decay) if adamw_params else None
        groups = []
        for part, use_muon in ((self._muon, True), (self._adamw, False)):
            for group in part.param_groups if part is not None else []:
                group["use_muon"] = use_muon
                groups.append(group)
        super().__init__(groups, {"lr": lr, "weight_decay": weight_decay})
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this optimizer's groups and state (again after load_state_dict)."""
        for part, use_muon in ((self._muon, True), (self._adamw, False)):
            if part is not None:
                part.param_groups = [group for group in self.param_groups if group["use_muon"] == use_muon]
                part.state = self.state

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in (self._muon, self._adamw):
            if part is not None:
                part.step()
        return loss


def _muon_optimizer(model, args):
    """LF's `_create_muon_optimizer`: Muon for trainable 2-D weights whose name has neither `embed` nor `lm_head`,
    AdamW for the rest."""
    if not hasattr(torch.optim, "Muon"):
        raise NotSupportedError(f"`use_muon` needs torch.optim.Muon (torch >= 2.9); this is torch {torch.__version__}")
    muon, adamw = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (muon if param.ndim == 2 and "embed" not in name and "lm_head" not in name else adamw).append(param)
    optimizer = MuonWithAdamW(muon, adamw, lr=args.learning_rate, weight_decay=args.weight_decay,
                              betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    logger.info("Muon optimizer: %d weight matrices with Muon, %d parameters with AdamW", len(muon), len(adamw))
    return optimizer


def create_custom_optimizer(model: nn.Module, args, finetuning_args):
    """The optimizer of `use_galore` / `use_apollo` / `use_badam` / `use_adam_mini` / `use_muon`, or None."""
    key = selected_optimizer(finetuning_args)
    if key in ("use_galore", "use_apollo"):
        return _projection_optimizer(model, args, finetuning_args, key)
    if key == "use_badam":
        return _badam_optimizer(model, args, finetuning_args)
    if key == "use_adam_mini":
        return _adam_mini_optimizer(model, args)
    if key == "use_muon":
        return _muon_optimizer(model, args)
    return None
