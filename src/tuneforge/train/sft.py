"""Supervised fine-tuning recipe: setup -> data -> model -> trainer -> train -> save.

`do_predict` (without training) goes to evaluate/predict.py: generation + BLEU/ROUGE.

Padding-free by default: the samples of a batch are concatenated into one row with position_ids
restarting per sample and no attention across samples (`packing: false` pads instead).
"""

from __future__ import annotations

from tuneforge.train import workflow


def run_sft(cfg) -> dict:
    from tuneforge.data.collate import PackedCollator, PaddedCollator
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.model.loader import load_model
    from tuneforge.train.recall_stop import add_recall_stop, report_recall
    from tuneforge.train.resume import prepare_output_dir

    if cfg.training.do_predict:  # generate + BLEU/ROUGE (evaluate/); tuner refused it with do_train
        from tuneforge.evaluate.predict import run_predict

        return run_predict(cfg)

    # setup: decide about resuming before anything slow happens
    resume = prepare_output_dir(cfg)
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)

    # data
    bundle = build_datasets(cfg, tokenizer, template, stage="sft")
    workflow.report_data(bundle, cfg.training.output_dir)

    # model
    workflow.seed_everything(cfg)  # LoRA / value-head init is random: same config, same run
    model = load_model(cfg.model, cfg.finetuning, is_trainable=cfg.training.do_train,
                       compute_dtype=workflow.compute_dtype(cfg))

    # trainer
    packing = cfg.data.packing is not False
    collator = PackedCollator() if packing else PaddedCollator(pad_token_id=tokenizer.pad_token_id)
    trainer, log_callback = workflow.build_trainer(cfg, model, tokenizer, bundle, collator)
    recall_stop = add_recall_stop(cfg, trainer, log_callback, tokenizer, template)  # `recall_target`

    # train + save
    metrics = workflow.train_and_save(cfg, trainer, log_callback, resume)
    report_recall(recall_stop, trainer, metrics)
    workflow.print_summary(cfg, metrics)
    return metrics
