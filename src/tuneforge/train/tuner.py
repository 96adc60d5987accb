"""Entry points for `tuneforge train` and `tuneforge data preview`: pick the recipe for the stage."""

from __future__ import annotations

import importlib

from tuneforge.config.stages import stage_record
from tuneforge.train import workflow
from tuneforge.train.sharding import finish_processes, prepare_processes


def training_config(cfg):
    """LF's `get_train_args`: a `tuneforge train` run (training, do_eval, do_predict) loads its models for its
    `cutoff_len` (`model_max_length`, which sizes the `rope_scaling` factor: model/loader.py `configure_rope`)."""
    import dataclasses

    if cfg.model.model_max_length == cfg.data.cutoff_len:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, model_max_length=cfg.data.cutoff_len))


def run_train(cfg) -> dict:
    workflow.require_do_train(cfg)
    cfg = training_config(cfg)
    workflow.log_precision(cfg)
    prepare_processes(cfg)  # DeepSpeed ZeRO-3 partitions the model as it loads: the process group exists first
    stage = stage_record(cfg.finetuning.stage)  # validated: it exists and is supported
    module_name, function_name = stage.recipe.split(":")
    recipe = getattr(importlib.import_module(f"tuneforge.train.{module_name}"), function_name)
    try:
        return recipe(cfg)
    finally:
        finish_processes(cfg)


def preview_data(cfg, count: int = 3) -> str:
    """The first `count` encoded samples with trained tokens marked, then the data report."""
    import sys

    from tuneforge.data.pipeline import build_datasets
    from tuneforge.data.preview import format_preview

    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    bundle = build_datasets(cfg, tokenizer, template, stage=cfg.finetuning.stage)
    return format_preview(bundle, tokenizer, n=count, color=sys.stdout.isatty())
