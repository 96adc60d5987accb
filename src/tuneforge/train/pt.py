"""Continued pre-training recipe: raw text -> cutoff_len blocks (tail kept) -> causal LM loss.

No chat template is involved; every document ends with the tokenizer's eos.
"""

from __future__ import annotations

from tuneforge.train import workflow


def run_pt(cfg) -> dict:
    from tuneforge.data.collate import PackedCollator
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.model.loader import load_model
    from tuneforge.train.resume import prepare_output_dir

    # setup
    resume = prepare_output_dir(cfg)
    tokenizer, _ = workflow.load_tokenizer_and_template(cfg)  # raw text: no chat template

    # data: blocks of cutoff_len tokens; the short last block is kept
    bundle = build_datasets(cfg, tokenizer, None, stage="pt")
    workflow.report_data(bundle, cfg.training.output_dir)

    # model
    workflow.seed_everything(cfg)  # LoRA / value-head init is random: same config, same run
    model = load_model(cfg.model, cfg.finetuning, is_trainable=cfg.training.do_train,
                       compute_dtype=workflow.compute_dtype(cfg))

    # trainer: blocks are concatenated padding-free, each block attending only to itself
    trainer, log_callback = workflow.build_trainer(cfg, model, tokenizer, bundle, PackedCollator())

    # train + save
    metrics = workflow.train_and_save(cfg, trainer, log_callback, resume)
    if "eval_loss" in metrics:
        import math

        metrics["eval_perplexity"] = round(math.exp(min(metrics["eval_loss"], 50.0)), 4)
        print(f"[tuneforge] eval perplexity: {metrics['eval_perplexity']}")
    workflow.print_summary(cfg, metrics)
    return metrics
