"""Entry points for `tuneforge train` and `tuneforge data preview`: pick the recipe for the stage."""

from __future__ import annotations

import importlib

from tuneforge.config.stages import stage_record
from tuneforge.train import workflow


def run_train(cfg) -> dict:
    workflow.require_do_train(cfg)
    stage = stage_record(cfg.finetuning.stage)  # validated: it exists and is supported
    module_name, function_name = stage.recipe.split(":")
    recipe = getattr(importlib.import_module(f"tuneforge.train.{module_name}"), function_name)
    return recipe(cfg)


def preview_data(cfg, count: int = 3) -> str:
    """The first `count` encoded samples with trained tokens marked, then the data report."""
    import sys

    from tuneforge.data.pipeline import build_datasets
    from tuneforge.data.preview import format_preview

    tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    bundle = build_datasets(cfg, tokenizer, template, stage=cfg.finetuning.stage)
    return format_preview(bundle, tokenizer, n=count, color=sys.stdout.isatty())
