"""Supervised fine-tuning recipe: setup -> data -> model -> trainer -> train -> save.

Padding-free by default: the samples of a batch are concatenated into one row with position_ids
restarting per sample and no attention across samples; the prompt prefix the samples of a batch share
(a system prompt) is computed once (`packing: false` pads instead; `packing: true` /
`neat_packing: true` are LLaMA-Factory's bin-packing into cutoff_len rows, data/packing.py).
"""

from __future__ import annotations

from tuneforge.train import workflow


def run_sft(cfg) -> dict:
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.model.loader import load_model
    from tuneforge.train.recall_stop import add_recall_stop, report_recall
    from tuneforge.train.resume import prepare_output_dir
    from tuneforge.train.token_batching import sft_trainer_class

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
    collator = workflow.sft_batch_collator(cfg, tokenizer, model, bundle.vision)
    objective, log_keys = None, ()
    if cfg.finetuning.use_asft_loss:  # LF's ASFT: DFT + asft_alpha x KL to a reference model (train/asft.py)
        from tuneforge.config.args import ADAPTER_METHODS
        from tuneforge.train.asft import ASFT_LOG_KEYS, ASFTObjective
        from tuneforge.train.preference import load_reference_model

        reference = load_reference_model(cfg, lora_policy=cfg.finetuning.finetuning_type in ADAPTER_METHODS)
        objective, log_keys = ASFTObjective(cfg.finetuning.asft_alpha, reference), ASFT_LOG_KEYS
    trainer, log_callback = workflow.build_trainer(cfg, model, tokenizer, bundle, collator, objective=objective,
                                                   extra_log_keys=log_keys, trainer_class=sft_trainer_class(cfg))
    recall_stop = add_recall_stop(cfg, trainer, log_callback, tokenizer, template, bundle.vision)  # `recall_target`

    # train + save
    metrics = workflow.train_and_save(cfg, trainer, log_callback, resume)
    report_recall(recall_stop, trainer, metrics)
    workflow.print_summary(cfg, metrics)
    return metrics
