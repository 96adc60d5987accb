"""`tuneforge train`: load the config (a config error before anything heavy), then train here, under torchrun
(cli/launch.py) or in Ray Train workers (cli/ray_launch.py); prediction after training as LF's sft workflow."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from tuneforge.utils.distributed import is_main_process


def load_run_config(args: Sequence[str], **kwargs):
    from tuneforge.config.parser import load_config, split_config_and_overrides

    path, overrides = split_config_and_overrides(args)
    cfg = load_config(path, overrides, **kwargs)
    from tuneforge.utils.logging import quiet_libraries

    quiet_libraries()  # the config is valid: the heavy libraries are needed now
    return cfg


def cmd_train(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        from tuneforge.config.help import format_key_help

        print("usage: tuneforge train [config.yaml] [key=value ...]\n")
        print(format_key_help())
        return 0
    cfg = load_run_config(args)  # a config error is one line, before anything heavy or any process starts
    from tuneforge.cli.ray_launch import run_with_ray, wants_ray

    if wants_ray(cfg, os.environ):  # USE_RAY=1 / ray_num_workers > 1: the training below in Ray Train workers
        return run_with_ray(args, cfg)
    if "LOCAL_RANK" not in os.environ:
        from tuneforge.cli.launch import torchrun_command, visible_gpus

        command = torchrun_command(args, os.environ, visible_gpus())
        if command is not None:  # LF's FORCE_TORCHRUN / several GPUs: this command again under torchrun
            print(f"[tuneforge] launching: {' '.join(command[1:])}", file=sys.stderr, flush=True)
            import subprocess

            return subprocess.run(command, check=False).returncode
    return train_here(cfg)[0]


def train_here(cfg) -> tuple[int, dict]:
    """`tuneforge train` in this process (alone, or one of torchrun's / Ray's): the exit code and the metrics."""
    from tuneforge.train.tuner import training_config

    cfg = training_config(cfg)  # models loaded for cutoff_len (rope_scaling), as LF's training runs
    # sft do_predict generates + scores (evaluate/): alone (LF's x_predict.yaml), or after training with the
    # model just saved (LF's sft workflow); rm's loss-only prediction runs inside its recipe (train/rm.py)
    generate = cfg.training.do_predict and cfg.finetuning.stage == "sft"
    metrics: dict = {}
    if cfg.training.do_train or not generate:
        from tuneforge.train.tuner import run_train

        metrics = run_train(cfg)
    if generate and "interrupted" in metrics:  # stopped (web UI abort / Ctrl-C): no model to predict with
        print("[tuneforge] training stopped early: prediction (do_predict) skipped", flush=True)
    elif generate and not is_main_process():  # under torchrun the first process alone predicts
        pass
    elif generate:
        from tuneforge.evaluate.predict import run_predict, trained_config

        after_training = cfg.training.do_train
        metrics = {**metrics, **run_predict(trained_config(cfg) if after_training else cfg,
                                            after_training=after_training)}
    return (130 if isinstance(metrics, dict) and metrics.get("interrupted") else 0), metrics
