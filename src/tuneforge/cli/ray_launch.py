"""`tuneforge train` as a Ray Train `TorchTrainer`, the way LLaMA-Factory 0.9.4 runs it with USE_RAY=1.

`USE_RAY=1`, or `ray_num_workers` above 1, makes `tuneforge train x.yaml` start a local Ray cluster (or join the one
RAY_ADDRESS / `ray_init_kwargs: {address: ...}` names; `ray_init_kwargs` goes to `ray.init`) and run the same
training as `tuneforge train` in `ray_num_workers` Ray workers, each reserving `resources_per_worker` (LF's default
{"GPU": 1}; {"CPU": 1} trains on CPU processes), placed by `placement_strategy`. Ray Train creates the process group
(gloo on CPU, nccl on GPUs) and sets RANK / WORLD_SIZE / LOCAL_RANK, so inside a worker the HF Trainer runs DDP
exactly as under torchrun (utils/distributed.py); rank 0 writes output_dir as always. Ray's own run folder is
`<ray_storage_path>/<ray_run_name>` (`RunConfig(name=..., storage_path=...)`): the final metrics and a checkpoint
that is a copy of output_dir (the trained model or adapter) land there.

Needs the optional extra: pip install 'tuneforge[ray]'.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tuneforge.config.validate_parallel import json_text, ray_requested, ray_resources, read_mapping
from tuneforge.errors import NotSupportedError, TuneforgeError

__all__ = ["run_with_ray", "wants_ray"]


def wants_ray(cfg, environ: Mapping[str, str]) -> bool:
    """Whether this `tuneforge train` runs under Ray (USE_RAY=1 or `ray_num_workers` > 1) -- never inside a worker."""
    return "LOCAL_RANK" not in environ and cfg.training.do_train and ray_requested(cfg.training.ray_num_workers,
                                                                                  environ)


def _import_ray():
    try:
        import ray
        from ray.train import Checkpoint, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as err:
        raise NotSupportedError(f"Ray training (USE_RAY=1 or `ray_num_workers` > 1) needs Ray Train, which is not "
                                f"installed ({err}): pip install 'tuneforge[ray]'") from None
    return ray, Checkpoint, RunConfig, ScalingConfig, TorchTrainer


def _storage(training) -> tuple[str, object | None]:
    """`ray_storage_path` (a local folder made absolute, or a bucket path with `ray_storage_filesystem`)."""
    kind = training.ray_storage_filesystem
    if kind is None:
        return Path(training.ray_storage_path).absolute().as_posix(), None
    from pyarrow import fs

    return training.ray_storage_path, fs.S3FileSystem() if kind == "s3" else fs.GcsFileSystem()


def _check_cluster(ray, resources: dict, workers: int) -> None:
    """The cluster has room for every worker's `resources_per_worker` (a clear message instead of Ray waiting)."""
    have = ray.cluster_resources()
    short = {name: (amount * workers, have.get(name, 0)) for name, amount in resources.items()
             if amount * workers > have.get(name, 0)}
    if short:
        missing = ", ".join(f"{name}: {need:g} needed, {got:g} in the cluster" for name, (need, got) in short.items())
        raise NotSupportedError(f"`ray_num_workers: {workers}` x `resources_per_worker: {json_text(resources)}` does "
                                f"not fit this Ray cluster ({missing}); lower `ray_num_workers` or change "
                                "`resources_per_worker` (on CPU: {\"CPU\": 1})")


def run_with_ray(args: Sequence[str], cfg) -> int:
    """Run `tuneforge train <args>` as a Ray Train TorchTrainer; the exit code (0, or 130 when stopped)."""
    ray, _, RunConfig, ScalingConfig, TorchTrainer = _import_ray()  # ray.train is imported with them
    training = cfg.training
    workers = training.ray_num_workers
    resources = ray_resources(training.resources_per_worker, "<config>")
    init_kwargs = read_mapping(training.ray_init_kwargs, "ray_init_kwargs", "<config>")
    started = not ray.is_initialized()
    if started:
        ray.init(**init_kwargs)  # RAY_ADDRESS joins an existing cluster, as ray.init reads it
    try:
        _check_cluster(ray, resources, workers)
        storage_path, filesystem = _storage(training)
        print(f"[tuneforge] Ray: {workers} worker(s), {json_text(resources)} each, placement "
              f"{training.placement_strategy}; results in {storage_path}/{training.ray_run_name or '<Ray run name>'}",
              file=sys.stderr, flush=True)
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={"args": list(args), "cwd": os.getcwd(),
                               "log_level": logging.getLogger("tuneforge").getEffectiveLevel()},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=resources.get("GPU", 0) > 0,
                                         resources_per_worker=resources,
                                         placement_strategy=training.placement_strategy),
            run_config=RunConfig(name=training.ray_run_name, storage_path=storage_path,
                                 storage_filesystem=filesystem,
                                 # Ray Train's print patch would print each line of a worker twice
                                 worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}),
        )
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as err:
            _raise_tuneforge_error(err)
            raise
    finally:
        if started:
            ray.shutdown()
    print(f"[tuneforge] Ray results: {result.path}", file=sys.stderr, flush=True)
    return 130 if (result.metrics or {}).get("interrupted") else 0


def _raise_tuneforge_error(err: Exception) -> None:
    """A worker's own tuneforge error (a data or model refusal) as the one-line message `tuneforge train` gives."""
    for _, failure in sorted(getattr(err, "worker_failures", {}).items()):
        for found in (failure, getattr(failure, "cause", None)):
            if isinstance(found, TuneforgeError):
                raise TuneforgeError(f"Ray worker: {found}") from None


def _train_loop(config: dict) -> None:
    """One Ray worker: `tuneforge train <args>` in this process (Ray set up the process group and RANK etc.)."""
    if Path(config["cwd"]).is_dir():  # relative paths of the config mean the directory the command ran in
        os.chdir(config["cwd"])
    ray, Checkpoint, *_ = _import_ray()

    from tuneforge.cli.train_cmd import load_run_config as _load, train_here
    from tuneforge.utils.logging import setup_logging

    setup_logging(config["log_level"])  # as `tuneforge train` sets it up (cli/main.py main)

    cfg = _load(config["args"])
    code, metrics = train_here(cfg)
    report = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str, bool))}
    report["exit_code"] = code
    output_dir = Path(cfg.training.output_dir)
    checkpoint = None
    if ray.train.get_context().get_world_rank() == 0 and output_dir.is_dir() and cfg.training.do_train:
        checkpoint = Checkpoint.from_directory(str(output_dir.absolute()))  # Ray copies the trained output_dir
    ray.train.report(report, checkpoint=checkpoint, delete_local_checkpoint_after_upload=False)
