"""Sharded data parallelism: DeepSpeed ZeRO (`deepspeed: ds_z3_config.json`) and FSDP (`fsdp`, `fsdp_config`),
both through the HF Trainer as in LLaMA-Factory. On CPU: DeepSpeed's CPU accelerator with gloo (oneCCL is not
needed), and torch's FSDP2 with gloo.

What tuneforge adds around the Trainer:
- `prepare_processes`: the process group exists before the model is loaded, so that ZeRO-3 builds the model
  already partitioned across every process (`deepspeed.zero.Init` sizes its batch from the world size) -- LF
  gets the same from logging `training_args.device` in `get_train_args`. A DeepSpeed run in one process that
  no launcher started gets a process group of one (DeepSpeed needs one; without a launcher it would look for
  MPI), as the HF docs do it for notebooks.
- `zero3_loading`: ZeRO-3's partitioned model loading is on only while a training run loads its models (HF switches
  it on for the whole process as soon as TrainingArguments read `deepspeed`).
- `place_reference_model`: dpo / kto's frozen reference model under ZeRO-3 runs as a DeepSpeed inference engine.
- `enable_fsdp_on_cpu`: accelerate applies its FSDP plugin to GPU process groups only; on CPU processes the Trainer
  gets it here (else a silent DDP run). FSDP1 needs a GPU (accelerate's plugin refuses to start without one).
- `is_fsdp2`: a model FSDP2 sharded in place is called through its own forward (the chunked loss included).
- `check_fsdp1_shared_frozen_weights`: one message where torch's unsharded FSDP1 would fail at the second step.
Saving: HF's `save_model` gathers the whole state dict (ZeRO-3 with `stage3_gather_16bit_weights_on_model_save`,
FSDP with FULL_STATE_DICT) and tuneforge's atomic save writes it (train/trainer.py)."""

from __future__ import annotations

import logging
import os
import warnings


def prepare_processes(cfg) -> None:
    """Set up the devices / process group now (HF does it lazily, on the first `args.device`)."""
    _check_accelerate_fsdp(os.environ)
    if not cfg.training.deepspeed:
        return
    # DeepSpeed calls these torch collectives under their old names; nothing a user can act on
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` "
                            "is deprecated", category=FutureWarning)
    if "WORLD_SIZE" not in os.environ:  # one process, not started by torchrun / accelerate launch
        from tuneforge.utils.distributed import free_port

        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()))
    _ = cfg.training.device
    zero3_loading(cfg.training)
    import deepspeed
    import torch.distributed as dist

    # DeepSpeed's own view of the process group (its world size sizes ZeRO-3's partitions): the existing one, or
    # (one process) a new one on DeepSpeed's backend for this machine (gloo on CPU)
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def _check_accelerate_fsdp(environ) -> None:
    """`accelerate launch --config_file fsdp_config.yaml`: FSDP comes from accelerate's variables, not the config.
    FSDP1 (LF's fsdp_config.yaml; accelerate's default version) needs a GPU: one clear message instead of accelerate's
    traceback."""
    if environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or environ.get("FSDP_VERSION", "1") == "2":
        return
    import torch

    if not torch.cuda.is_available():
        from tuneforge.errors import NotSupportedError

        raise NotSupportedError("FSDP1 (this `accelerate launch` config has no `fsdp_version: 2`) is not supported on "
                                "this machine: accelerate's FSDP1 plugin needs a GPU (CUDA, XPU, NPU, MLU, MUSA or "
                                "HPU); on CPU use FSDP2: examples/accelerate/fsdp2_config.yaml (`fsdp_version: 2`)")


def finish_processes(cfg) -> None:
    """After the training run: models loaded from now on (prediction after training) load whole again."""
    if cfg.training.deepspeed:
        zero3_loading(None)


def zero3_loading(training_args) -> None:
    """Whether `from_pretrained` builds models partitioned (DeepSpeed ZeRO-3's `zero.Init`): on (`training_args` whose
    `deepspeed` config has stage 3) only while a training run loads its models. HF turns it on for the whole process
    when it reads `deepspeed` (TrainingArguments); tuneforge reads a config for other commands too (chat, export,
    prediction after training), which load plain models."""
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    config = getattr(training_args, "hf_deepspeed_config", None)
    if config is None:
        unset_hf_deepspeed_config()
    else:
        set_hf_deepspeed_config(config)


def place_reference_model(trainer, ref_model) -> None:
    """The frozen reference model of dpo / kto next to the policy. Under ZeRO-3 it was loaded partitioned like the
    policy: DeepSpeed runs it for inference (its hooks gather each layer's weights for its forward), as LLaMA-Factory's
    `prepare_deepspeed` does; otherwise it is moved to the run's device."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not (trainer.is_deepspeed_enabled and is_deepspeed_zero3_enabled()):
        ref_model.to(trainer.args.device)
        return
    import copy

    import deepspeed

    config = copy.deepcopy(trainer.accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):  # inference only
        config.pop(key, None)
    hidden = getattr(getattr(ref_model, "config", None), "hidden_size", None) or 1024
    zero = config["zero_optimization"]
    # the values HF fills in for "auto" from the hidden size (integrations/deepspeed.py, trainer_config_finalize)
    sizes = {"reduce_bucket_size": hidden * hidden, "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
             "stage3_param_persistence_threshold": 10 * hidden}
    for key, value in sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value
    config = _without_auto(config)
    engine, *_ = deepspeed.initialize(model=ref_model, config=config)
    engine.eval()
    trainer._tuneforge_ref_engine = engine  # keeps DeepSpeed's hooks on `ref_model` alive


def _without_auto(config):
    """`config` less the "auto" values HF has not filled in yet (DeepSpeed's defaults apply to those)."""
    if isinstance(config, dict):
        return {k: _without_auto(v) for k, v in config.items() if v != "auto"}
    return config


def enable_fsdp_on_cpu(trainer) -> None:
    """FSDP on CPU processes (gloo). torch's FSDP2 (`fully_shard`) runs on CPU, but accelerate switches its FSDP
    plugin on only for GPU-type process groups: with CPU processes (`MULTI_CPU`) the Trainer would silently run plain
    DDP. Here the Trainer's accelerator gets the plugin HF built from `fsdp` / `fsdp_config`, as accelerate does it
    for GPUs (state.py: `distributed_type = FSDP`, `fsdp_plugin`, its mixed precision)."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    if trainer.args.fsdp_plugin_args is not None:  # `fsdp` / `fsdp_config` in the run's config
        plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    elif os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":  # `accelerate launch` with an FSDP config
        plugin = FullyShardedDataParallelPlugin()  # read from accelerate's FSDP_* variables
    else:
        return
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    # both shared states: every new AcceleratorState() copies the process state's distributed_type again
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    trainer.is_fsdp_enabled = True
    logging.getLogger("tuneforge").info("FSDP%d on %d CPU processes (gloo): parameters, gradients and optimizer "
                                        "state sharded", plugin.fsdp_version, state.num_processes)


def is_fsdp2(model) -> bool:
    """A model FSDP2 sharded in place (`fully_shard`): no wrapper around it, but calling a part of it directly
    skips the gathering of the parameters its root holds, so the loss must run through `model(...)`."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return False
    return isinstance(model, FSDPModule)


def check_fsdp1_shared_frozen_weights(trainer) -> None:
    """torch's FSDP1 without sharding (NO_SHARD: what it runs in one process) fails at the second step when a frozen
    weight is shared by two modules -- the tied embedding and LM head under LoRA or freeze (`AssertionError:
    as_params=True type(prim_param)=Tensor` in FSDP's reshard; seen on an H200 with torch 2.11, and with torch 2.11 /
    2.13 on CPU processes with torch and peft alone). One message before training instead. Sharded (2+ processes,
    FULL_SHARD) it trains."""
    state = trainer.accelerator.state
    plugin = getattr(state, "fsdp_plugin", None)
    if not getattr(trainer, "is_fsdp_enabled", False) or getattr(plugin, "fsdp_version", 1) != 1:
        return
    strategy = getattr(plugin, "sharding_strategy", None)
    model = getattr(trainer, "model", None)
    if model is None or (state.num_processes > 1 and getattr(strategy, "name", str(strategy)) != "NO_SHARD"):
        return
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if not param.requires_grad:
            owners.setdefault(id(param), []).append(name)
    shared = next((names for names in owners.values() if len(names) > 1), None)
    if shared:
        from tuneforge.errors import NotSupportedError

        raise NotSupportedError(
            f"FSDP1 without sharding (one process, or NO_SHARD) is not supported with a frozen weight shared by "
            f"{' and '.join(shared)} (tied embeddings, frozen by LoRA or freeze): torch's FSDP1 fails at the second "
            "step there (AssertionError: as_params=True type(prim_param)=Tensor). Use FSDP2 "
            "(`fsdp_config: {fsdp_version: 2}`, transformers' default), train on 2 or more GPUs, or leave out `fsdp` "
            "on one GPU")


def through_wrapper(wrapper, inner, forward, inputs: dict):
    """`forward(**inputs)` run as `inner`'s forward, called through `wrapper` (DDP, FSDP, DeepSpeed): the
    wrapper's own pre/post-forward work (gradient-sync bookkeeping, parameter gathering) happens as for a
    normal forward, while the loss is the chunked label-only one instead of full logits. Nothing wrapping `inner`
    (`wrapper is inner`, not FSDP2-sharded, whose hooks must run): `forward(**inputs)` directly."""
    if wrapper is inner and not is_fsdp2(inner):
        return forward(**inputs)
    saved = inner.__dict__.get("forward")  # accelerate's autocast wrapper, when mixed precision is on
    inner.forward = forward
    try:
        return wrapper(**inputs)
    finally:
        if saved is None:
            del inner.forward
        else:
            inner.forward = saved
