"""Reward-model recipe (stage rm): setup -> data -> model + value head -> trainer -> train -> save.

A scalar value head on the causal LM reads the value at the last token of prompt + answer; the loss
is -log sigmoid(r_chosen - r_rejected) over the ranking pairs, the metric how often r_chosen wins.
The output folder holds the adapter (or full weights) and `value_head.safetensors`; load it back with
`tuneforge.model.value_head.load_value_head_model` or score with `tuneforge.infer.reward`.
"""

from __future__ import annotations

import torch

from tuneforge.train import workflow
from tuneforge.train.pref_losses import pairwise_reward_loss
from tuneforge.train.preference import mean_metrics


class RewardObjective:
    """Pairwise ranking loss of a `ValueHeadModel` on a `PairwisePackedCollator` batch."""

    input_columns = ("input_ids", "labels", "rejected_input_ids", "rejected_labels")

    def compute(self, model, inputs, num_items_in_batch=None) -> tuple[torch.Tensor, dict[str, float]]:
        from tuneforge.model.value_head import last_token_indices

        # the forward (through any wrapper) gives every position's value; keep each sequence's last one
        values = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"])
        rows, columns = last_token_indices(inputs["input_ids"], position_ids=inputs["position_ids"])
        scores = values[rows, columns]
        half = scores.shape[0] // 2
        chosen, rejected = scores[:half], scores[half:]
        loss = pairwise_reward_loss(chosen, rejected)
        metrics = mean_metrics(accuracy=chosen > rejected, rewards__chosen=chosen.detach(),
                               rewards__rejected=rejected.detach(), rewards__margins=(chosen - rejected).detach())
        return loss, metrics


def run_rm(cfg) -> dict:
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.model.value_head import load_value_head_model
    from tuneforge.train.preference import PairwisePackedCollator, build_objective_trainer
    from tuneforge.train.resume import prepare_output_dir

    # setup
    resume = prepare_output_dir(cfg)
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)

    # data: prompt + chosen and prompt + rejected, one infer_seqlen budget per pair
    bundle = build_datasets(cfg, tokenizer, template, stage="rm")
    workflow.report_data(bundle, cfg.training.output_dir)

    # model: the LM (lora/freeze/full) + a value head (new, or read from the model/adapter folder)
    workflow.seed_everything(cfg)  # LoRA / value-head init is random: same config, same run
    model = load_value_head_model(cfg.model, cfg.finetuning, is_trainable=cfg.training.do_train,
                                  compute_dtype=workflow.compute_dtype(cfg))

    # trainer: chosen and rejected answers of a batch in one padding-free row
    trainer, log_callback = build_objective_trainer(cfg, model, tokenizer, bundle, PairwisePackedCollator(),
                                                    RewardObjective())

    # train + save
    metrics = workflow.train_and_save(cfg, trainer, log_callback, resume)
    workflow.print_summary(cfg, metrics)
    if "eval_accuracy" in metrics:
        print(f"[tuneforge] eval accuracy (chosen scored above rejected): {metrics['eval_accuracy']:.3f}")
    return metrics
