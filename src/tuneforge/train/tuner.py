"""Entry points for `tuneforge train` and `tuneforge data preview`: pick the recipe for the stage."""

from __future__ import annotations

from tuneforge.errors import NotSupportedError
from tuneforge.train import workflow


def run_train(cfg) -> dict:
    workflow.require_do_train(cfg)
    stage = cfg.finetuning.stage
    if stage == "sft":
        from tuneforge.train.sft import run_sft

        return run_sft(cfg)
    if stage == "pt":
        from tuneforge.train.pt import run_pt

        return run_pt(cfg)
    if stage == "rm":
        from tuneforge.train.rm import run_rm

        return run_rm(cfg)
    if stage == "dpo":
        from tuneforge.train.dpo import run_dpo

        return run_dpo(cfg)
    if stage == "kto":
        from tuneforge.train.kto import run_kto

        return run_kto(cfg)
    if stage == "ppo":
        from tuneforge.train.ppo import run_ppo

        return run_ppo(cfg)
    raise NotSupportedError(f"stage `{stage}` is not supported yet (supported: sft, pt, rm, ppo, dpo, kto)")


def preview_data(cfg, count: int = 3) -> str:
    """The first `count` encoded samples with trained tokens marked, then the data report."""
    import sys

    from tuneforge.data.pipeline import build_datasets
    from tuneforge.data.preview import format_preview
    from tuneforge.model.loader import load_tokenizer

    stage = cfg.finetuning.stage
    if stage == "pt":
        tokenizer, template = load_tokenizer(cfg.model), None
    else:
        tokenizer, template = workflow.load_tokenizer_and_template(cfg)
    bundle = build_datasets(cfg, tokenizer, template, stage=stage)
    return format_preview(bundle, tokenizer, n=count, color=sys.stdout.isatty())
