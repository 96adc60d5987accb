"""KTO recipe (stage kto): setup -> data -> model (+ reference) -> trainer -> train -> save.

Unpaired feedback: each sample is a prompt + answer tagged desirable or undesirable (`kto_tag`).
The KL reference point is estimated from mismatched pairs (the same prompt with another sample's
answer), under no_grad, clamped at 0. `kto_chosen_weight` / `kto_rejected_weight` weight the two
kinds, `pref_beta` is beta, `pref_ftx` adds the SFT loss of the desirable answers. The reference
model is chosen as in dpo (LoRA: adapter disabled; full/freeze: frozen copy; or `ref_model`).
"""

from __future__ import annotations

import torch

from tuneforge.config.args import ADAPTER_METHODS
from tuneforge.train import workflow
from tuneforge.train.loss import DEFAULT_CHUNK_SIZE
from tuneforge.train.pref_losses import kto_loss
from tuneforge.train.preference import reference_logps, sequence_logps


class KTOObjective:
    """Loss + metrics of one `FeedbackPackedCollator` batch (or `VisionFeedbackCollator`: padded rows, images)."""

    input_columns = ("input_ids", "labels", "kl_input_ids", "kl_labels", "kto_tag")

    def __init__(self, *, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
                 ftx: float = 0.0, ref_model=None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.beta = beta
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight
        self.ftx = ftx
        self.ref_model = ref_model
        self.chunk_size = chunk_size

    def compute(self, model, inputs, num_items_in_batch=None) -> tuple[torch.Tensor, dict[str, float]]:
        tags = inputs["kto_tags"]
        sums, counts = sequence_logps(model, inputs, chunk_size=self.chunk_size)
        with torch.no_grad():
            kl_sums, _ = sequence_logps(model, inputs, prefix="kl_", chunk_size=self.chunk_size)
        ref_sums, _ = reference_logps(model, self.ref_model, inputs, chunk_size=self.chunk_size)
        ref_kl_sums, _ = reference_logps(model, self.ref_model, inputs, prefix="kl_", chunk_size=self.chunk_size)

        losses, chosen_rewards, rejected_rewards, kl = kto_loss(
            sums[tags], sums[~tags], kl_sums, ref_sums[tags], ref_sums[~tags], ref_kl_sums,
            beta=self.beta, desirable_weight=self.desirable_weight, undesirable_weight=self.undesirable_weight)
        loss = losses.mean()
        if self.ftx > 0 and bool(tags.any()):
            # LF: the mean SFT loss of the desirable answers, scaled to the whole batch
            sft = -(sums[tags] / counts[tags].clamp(min=1))
            loss = loss + self.ftx * sft.mean() * tags.numel() / int(tags.sum())

        # means over the samples of each kind (as TRL logs them: summed, then divided by the count); the trainer
        # adds rewards/margins = rewards/chosen - rewards/rejected
        chosen, rejected = int(tags.sum()), int((~tags).sum())
        metrics = {"kl": float(kl), "count/chosen": chosen, "count/rejected": rejected}
        if chosen:
            metrics["rewards/chosen"] = (float(chosen_rewards.mean()), chosen)
            metrics["logps/chosen"] = (float(sums[tags].detach().mean()), chosen)
        if rejected:
            metrics["rewards/rejected"] = (float(rejected_rewards.mean()), rejected)
            metrics["logps/rejected"] = (float(sums[~tags].detach().mean()), rejected)
        return loss, metrics


def run_kto(cfg) -> dict:
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.model.attention import runs_packed_sdpa
    from tuneforge.model.loader import load_model
    from tuneforge.train.preference import FeedbackPackedCollator, build_objective_trainer, load_reference_model
    from tuneforge.train.resume import prepare_output_dir

    # setup
    finetuning = cfg.finetuning
    resume = prepare_output_dir(cfg)
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)

    # data: prompt + rated answer, and prompt + a neighbour's answer for the KL estimate
    bundle = build_datasets(cfg, tokenizer, template, stage="kto")
    workflow.report_data(bundle, cfg.training.output_dir)

    # model + reference
    workflow.seed_everything(cfg)  # LoRA / value-head init is random: same config, same run
    model = load_model(cfg.model, finetuning, is_trainable=cfg.training.do_train,
                       compute_dtype=workflow.compute_dtype(cfg))
    objective = KTOObjective(beta=finetuning.pref_beta, desirable_weight=finetuning.kto_chosen_weight,
                             undesirable_weight=finetuning.kto_rejected_weight, ftx=finetuning.pref_ftx)
    objective.ref_model = load_reference_model(cfg, lora_policy=finetuning.finetuning_type in ADAPTER_METHODS)

    # trainer: rated answers in one padding-free row, KL answers in another
    # a system prompt all sequences share runs once when the policy and the reference read that layout
    collator = FeedbackPackedCollator(share_prefix=runs_packed_sdpa(model, objective.ref_model))
    if bundle.vision is not None:  # a vision-language model: padded rows with the images' pixels
        from tuneforge.data.collate_vision import VisionFeedbackCollator

        collator = VisionFeedbackCollator(tokenizer.pad_token_id, bundle.vision)
    trainer, log_callback = build_objective_trainer(cfg, model, tokenizer, bundle, collator, objective)

    # train + save
    metrics = workflow.train_and_save(cfg, trainer, log_callback, resume)
    workflow.print_summary(cfg, metrics)
    return metrics
