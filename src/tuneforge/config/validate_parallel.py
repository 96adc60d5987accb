"""Config checks of the multi-process engines: DeepSpeed (`deepspeed` JSON) and FSDP (`fsdp`, `fsdp_config`).

Part of `validate.check_consistency`; the package/device probes are passed in from validate.py (where the tests
replace them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, NotSupportedError
from ..utils.env import env_enabled


ZERO_STAGES = (0, 1, 2, 3)


def check_sharding(v, deepspeed_available, cuda_available) -> None:
    """`deepspeed` (a DeepSpeed JSON config, as HF's Trainer reads it) and `fsdp`: one of them, a file that exists
    and parses, a ZeRO stage DeepSpeed has (train/sharding.py). Checked here, before any process starts."""
    if v["fsdp"] or v["fsdp_config"]:
        _check_fsdp(v, cuda_available)
    if not v["deepspeed"]:
        return
    where = v.where("deepspeed")
    if v["fsdp"] or v["fsdp_config"]:
        raise ConfigError(f"{v.where('fsdp', 'fsdp_config', 'deepspeed')}: `deepspeed` and `fsdp` both shard the "
                          "model across processes; set one of them")
    _refuse_ppo(v, "deepspeed", "DeepSpeed")
    if not deepspeed_available():
        raise NotSupportedError(f"{where}: `deepspeed` needs the deepspeed package, which is not installed: "
                                "pip install 'tuneforge[deepspeed]'")
    zero = read_deepspeed_config(v["deepspeed"], where).get("zero_optimization", {})
    if zero.get("stage") == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        raise ConfigError(f"{where}: ZeRO-3 (`deepspeed: {v['deepspeed']}`) would save each process's shard of the "
                          "weights, not a model or adapter that loads without DeepSpeed: set "
                          "`\"stage3_gather_16bit_weights_on_model_save\": true` in its `zero_optimization` (as "
                          "LLaMA-Factory's examples/deepspeed/ds_z3_config.json does)")


def _refuse_ppo(v, key: str, engine: str) -> None:
    if v["stage"] == "ppo":
        raise NotSupportedError(f"{v.where(key, 'stage')}: `{key}` with `stage: ppo` is not supported yet: tuneforge's "
                                f"PPO runs its own training loop (train/ppo.py), not the HF Trainer that {engine} is "
                                f"integrated through; remove `{key}`")


def _check_fsdp(v, cuda_available) -> None:
    """`fsdp` (LF's `full_shard auto_wrap`, or true) + `fsdp_config` (a dict or a JSON file, as HF reads it): FSDP2
    runs on CPU processes too (train/sharding.py), FSDP1 only on GPUs."""
    where = v.where("fsdp", "fsdp_config")
    if not v["fsdp"]:
        raise ConfigError(f"{v.where('fsdp_config')}: `fsdp_config` does nothing without `fsdp`; set "
                          "`fsdp: full_shard auto_wrap` (LLaMA-Factory's value) or remove `fsdp_config`")
    _refuse_ppo(v, "fsdp", "FSDP")
    config = v["fsdp_config"] or {}
    if isinstance(config, str):
        import json

        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"{v.where('fsdp_config')}: `fsdp_config: {config}`: no such file (a relative path is "
                              f"read from the working directory, {Path.cwd()})")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{v.where('fsdp_config')}: `fsdp_config: {path}` is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{v.where('fsdp_config')}: `fsdp_config` must be a mapping of FSDP settings, got {config!r}")
    version = config.get("fsdp_version", config.get("version", 2))  # HF's default: FSDP2
    if str(version) not in ("1", "2"):
        raise ConfigError(f"{v.where('fsdp_config')}: `fsdp_version` must be 1 or 2, got {version!r}")
    if str(version) == "1" and not cuda_available():
        raise NotSupportedError(f"{where}: FSDP1 (`fsdp_version: 1`) is not supported on this machine: accelerate's "
                                "FSDP1 plugin needs a GPU (CUDA, XPU, NPU, MLU, MUSA or HPU) and refuses to start "
                                "without one; on CPU use FSDP2: `fsdp_config: {fsdp_version: 2}` (transformers' default)")


def read_deepspeed_config(value: str | dict, where: str = "<config>") -> dict:
    """The DeepSpeed config `deepspeed:` names (a JSON file, read from the working directory as HF does, or the
    settings themselves), checked: a ConfigError names the file and what is wrong with it."""
    import json

    if isinstance(value, dict):
        config, name = value, "`deepspeed`"
    else:
        path, name = Path(value), f"`deepspeed: {value}`"
        if not path.is_file():
            raise ConfigError(f"{where}: {name}: no such file (a relative path is read from the working directory, "
                              f"{Path.cwd()}); LLaMA-Factory's DeepSpeed configs are in tuneforge's "
                              "examples/deepspeed/ (ds_z0/z2/z3_config.json, ds_z2/z3_offload_config.json)")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            detail = f"{err.msg} (line {err.lineno}, column {err.colno})" if isinstance(err, json.JSONDecodeError) \
                else "not UTF-8 text"
            raise ConfigError(f"{where}: {name} is not valid JSON: {detail}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: {name} must hold a JSON object of DeepSpeed settings, got {type(config).__name__}")
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(f"{where}: {name}: `zero_optimization` must be an object, got {zero!r}")
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in ZERO_STAGES:
        raise ConfigError(f"{where}: {name}: `zero_optimization.stage` is {stage!r}; DeepSpeed's ZeRO stages are "
                          f"{', '.join(map(str, ZERO_STAGES))}")
    for part in ("offload_optimizer", "offload_param"):
        device = (zero.get(part) or {}).get("device", "none") if isinstance(zero.get(part) or {}, dict) else None
        if device not in ("none", "cpu", "nvme"):
            raise ConfigError(f"{where}: {name}: `zero_optimization.{part}.device` must be cpu, nvme or none, "
                              f"got {device!r}")
    return config


# ------------------------------------------------------------------ Ray (cli/ray_launch.py)
RAY_PLACEMENT = ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK")


def ray_requested(num_workers: Any, environ: Mapping[str, str]) -> bool:
    """LF's `USE_RAY=1`, or `ray_num_workers` above 1: `tuneforge train` runs as a Ray Train TorchTrainer."""
    use_ray = env_enabled("USE_RAY", environ)
    return use_ray or (isinstance(num_workers, int) and num_workers > 1)


def read_mapping(value: Any, key: str, where: str) -> dict:
    """A dict key LF also takes as a JSON string (`resources_per_worker`, `ray_init_kwargs`); None -> {}."""
    if value is None:
        return {}
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: `{key}: {value}` is not a mapping or a JSON object: {err}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: `{key}` must be a mapping (or a JSON object), got {value!r}")
    return dict(value)


def ray_resources(value: Any, where: str) -> dict[str, float]:
    """`resources_per_worker`: Ray resource name -> amount (>= 0) each worker reserves, e.g. {"CPU": 1}."""
    resources = read_mapping(value, "resources_per_worker", where)
    for name, amount in resources.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ConfigError(f"{where}: `resources_per_worker`: {name}: {amount!r} is not a number >= 0 (the amount "
                              "of that Ray resource each worker reserves, e.g. {\"CPU\": 1} or {\"GPU\": 1})")
    if not resources:
        raise ConfigError(f"{where}: `resources_per_worker` is empty: set what each Ray worker reserves, "
                          "e.g. {\"GPU\": 1} (LF's default) or {\"CPU\": 1}")
    return resources


def check_ray(v, environ: Mapping[str, str], ray_available, cuda_available) -> None:
    """USE_RAY / `ray_num_workers` (LF's RayArguments): checked before Ray or any worker starts."""
    workers = v["ray_num_workers"]
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"{v.where('ray_num_workers')}: `ray_num_workers` must be a whole number >= 1 (the number "
                          f"of Ray training workers, one process each), got {workers!r}")
    if not ray_requested(workers, environ) or not v["do_train"]:
        return
    where = v.where("ray_num_workers", "resources_per_worker")
    if env_enabled("FORCE_TORCHRUN", environ):
        raise ConfigError(f"{where}: Ray (USE_RAY=1 or `ray_num_workers: {workers}`) and FORCE_TORCHRUN=1 both launch "
                          "the training processes; use one of them (unset FORCE_TORCHRUN for Ray, or unset USE_RAY "
                          "and `ray_num_workers` for torchrun)")
    if not ray_available():
        raise NotSupportedError(f"{where}: Ray training (USE_RAY=1 or `ray_num_workers: {workers}`) needs Ray Train, "
                                "which is not installed: pip install 'tuneforge[ray]'")
    if v["placement_strategy"] not in RAY_PLACEMENT:
        raise ConfigError(f"{v.where('placement_strategy')}: `placement_strategy` must be one of "
                          f"{', '.join(RAY_PLACEMENT)}, got {v['placement_strategy']!r}")
    resources = ray_resources(v["resources_per_worker"], v.where("resources_per_worker"))
    init_kwargs = read_mapping(v["ray_init_kwargs"], "ray_init_kwargs", v.where("ray_init_kwargs"))
    local = not environ.get("RAY_ADDRESS") and not init_kwargs.get("address")
    if local and resources.get("GPU", 0) > 0 and not cuda_available():
        given = "" if v.given("resources_per_worker") else " (LF's default)"
        raise NotSupportedError(f"{v.where('resources_per_worker')}: `resources_per_worker: "
                                f"{json_text(resources)}`{given} gives each Ray worker a GPU, and this machine has "
                                "none (the Ray cluster is started here: no RAY_ADDRESS): on CPU set "
                                "`resources_per_worker: {\"CPU\": 1}`")


def json_text(value: Any) -> str:
    import json

    return json.dumps(value)
