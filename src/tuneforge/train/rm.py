"""Reward-model recipe (stage rm): setup -> data -> model + value head -> trainer -> train -> save.

A scalar value head on the causal LM reads the value at the last token of prompt + answer; the loss
is -log sigmoid(r_chosen - r_rejected) over the ranking pairs, the metric how often r_chosen wins.
The output folder holds the adapter (or full weights) and `value_head.safetensors`; load it back with
`tuneforge.model.value_head.load_value_head_model` or score with `tuneforge.infer.reward`.

`do_predict` (LF's rm workflow; after training, or alone with the reward model as model/adapter) scores the
evaluation pairs (`eval_dataset` or the `val_size` split): `generated_predictions.jsonl` holds
{"chosen", "rejected"} per pair (rounded to 2 decimals, as LF), `predict_results.json` predict_loss (the mean
ranking loss) and predict_accuracy (how often chosen scores higher), with HF's runtime keys.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from tuneforge.train import workflow
from tuneforge.train.pref_losses import pairwise_reward_loss
from tuneforge.train.preference import mean_metrics


class RewardObjective:
    """Pairwise ranking loss of a `ValueHeadModel` on a `PairwisePackedCollator` batch."""

    input_columns = ("input_ids", "labels", "rejected_input_ids", "rejected_labels")

    def compute(self, model, inputs, num_items_in_batch=None) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected = pair_scores(model, inputs)
        loss = pairwise_reward_loss(chosen, rejected)
        metrics = mean_metrics(accuracy=chosen > rejected, rewards__chosen=chosen.detach(),
                               rewards__rejected=rejected.detach(), rewards__margins=(chosen - rejected).detach())
        return loss, metrics


def pair_scores(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the chosen and the rejected answers of a `PairwisePackedCollator` batch (or a vision-language
    model's `VisionPairwiseCollator` one: padded rows and their pixels): the value at each sequence's last token
    (the forward goes through any wrapper)."""
    from tuneforge.model.value_head import last_token_indices
    from tuneforge.utils.vision_models import IMAGE_INPUTS

    layout = {key: inputs[key] for key in ("position_ids", "attention_mask", *IMAGE_INPUTS) if key in inputs}
    values = model(input_ids=inputs["input_ids"], **layout)
    rows, columns = last_token_indices(inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                                       position_ids=inputs.get("position_ids"))
    scores = values[rows, columns]
    half = scores.shape[0] // 2
    return scores[:half], scores[half:]


def predict_scores(trainer, dataset, output_dir: str) -> dict[str, float]:
    """LF's rm `do_predict`: score every pair of `dataset`, write generated_predictions.jsonl and
    predict_results.json (+ all_results.json); returns the predict_* metrics."""
    chosen_scores, rejected_scores, losses = [], [], []
    model = trainer.model
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    batches = 0
    with torch.no_grad():
        for inputs in trainer.get_eval_dataloader(dataset):
            inputs = trainer._prepare_inputs(inputs)
            with trainer.compute_loss_context_manager():
                chosen, rejected = pair_scores(model, inputs)
            chosen, rejected = trainer.accelerator.gather_for_metrics((chosen.float(), rejected.float()))
            chosen, rejected = chosen.cpu(), rejected.cpu()
            chosen_scores += chosen.tolist()
            rejected_scores += rejected.tolist()
            losses += (-torch.nn.functional.logsigmoid(chosen - rejected)).tolist()
            batches += 1
    model.train(was_training)
    seconds = time.perf_counter() - started
    count = len(losses)
    metrics = {
        "predict_loss": sum(losses) / max(count, 1),
        "predict_accuracy": sum(c > r for c, r in zip(chosen_scores, rejected_scores)) / max(count, 1),
        "predict_runtime": round(seconds, 4),
        "predict_samples_per_second": round(count / seconds, 3) if seconds > 0 else 0.0,
        "predict_steps_per_second": round(batches / seconds, 3) if seconds > 0 else 0.0,
    }
    if trainer.is_world_process_zero():
        rows = [json.dumps({"chosen": round(c, 2), "rejected": round(r, 2)})
                for c, r in zip(chosen_scores, rejected_scores)]
        Path(output_dir, "generated_predictions.jsonl").write_text("\n".join(rows), encoding="utf-8")
    trainer.log_metrics("predict", metrics)
    trainer.save_metrics("predict", metrics)  # predict_results.json, merged into all_results.json
    return metrics


def run_rm(cfg) -> dict:
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.model.attention import runs_packed_sdpa
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

    # trainer: chosen and rejected answers of a batch in one padding-free row (images: padded rows)
    collator = PairwisePackedCollator(share_prefix=runs_packed_sdpa(model))  # a shared system prompt runs once
    if bundle.vision is not None:  # a vision-language model: padded rows with the images' pixels
        from tuneforge.data.collate_vision import VisionPairwiseCollator

        collator = VisionPairwiseCollator(tokenizer.pad_token_id, bundle.vision)
    trainer, log_callback = build_objective_trainer(cfg, model, tokenizer, bundle, collator,
                                                    RewardObjective())

    # train + save
    metrics: dict = {}
    if cfg.training.do_train:
        metrics = workflow.train_and_save(cfg, trainer, log_callback, resume)
        workflow.print_summary(cfg, metrics)
        if "eval_accuracy" in metrics:
            print(f"[tuneforge] eval accuracy (chosen scored above rejected): {metrics['eval_accuracy']:.3f}")
    elif cfg.training.do_eval and bundle.eval is not None:  # evaluate the model as it is
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    # predict: score the evaluation pairs (not after a run that was stopped early)
    if cfg.training.do_predict and "interrupted" not in metrics:
        metrics.update(predict_scores(trainer, bundle.eval, cfg.training.output_dir))
        print(f"[tuneforge] predict: loss {metrics['predict_loss']:.4f}, accuracy (chosen scored above rejected) "
              f"{metrics['predict_accuracy']:.3f} -> {Path(cfg.training.output_dir) / 'generated_predictions.jsonl'}",
              flush=True)
    return metrics
