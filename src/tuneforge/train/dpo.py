"""Preference optimisation recipe (stage dpo): setup -> data -> model (+ reference) -> trainer -> train -> save.

`pref_loss` picks the objective: `sigmoid` (DPO), `hinge`, `ipo`, `kto_pair` (against a reference model),
`orpo` and `simpo` (no reference model). `pref_beta` is beta, `pref_ftx` adds the SFT loss of the chosen
answers, `dpo_label_smoothing` is cDPO's label smoothing, `simpo_gamma` SimPO's target margin,
`pref_bco_weight` w mixes in the BCO loss (LF: (loss + w * bco) / (1 + w); losses with a reference only),
`ld_alpha` is LD-DPO's weight of the policy's log-probs beyond the length a pair's answers share.

The reference model: with LoRA the policy itself with its adapter disabled (no second copy in
memory); with full/freeze a frozen copy of the starting model; `ref_model` (+ `ref_model_adapters`)
overrides both. Chosen and rejected answers go through the model in one padding-free forward (a
vision-language model's: padded rows with their images, data/collate_vision.py).
"""

from __future__ import annotations

import torch

from tuneforge.config.args import ADAPTER_METHODS
from tuneforge.train import pref_losses, workflow
from tuneforge.train.loss import DEFAULT_CHUNK_SIZE
from tuneforge.train.preference import mean_metrics, reference_logps, sequence_logps


class DPOObjective:
    """Loss + metrics of one pairwise batch (`PairwisePackedCollator` layout: chosen half, rejected half)."""

    input_columns = ("input_ids", "labels", "rejected_input_ids", "rejected_labels")

    def __init__(self, *, loss_type: str = "sigmoid", beta: float = 0.1, ftx: float = 0.0, label_smoothing: float = 0.0,
                 simpo_gamma: float = 0.5, bco_weight: float = 0.0, ld_alpha: float | None = None, ref_model=None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.loss_type = loss_type
        self.beta = beta
        self.ftx = ftx
        self.label_smoothing = label_smoothing
        self.simpo_gamma = simpo_gamma
        self.bco_weight = bco_weight
        self.ld_alpha = ld_alpha
        self.ref_model = ref_model
        self.chunk_size = chunk_size
        self.uses_reference = loss_type not in pref_losses.REFERENCE_FREE_LOSSES
        # BCO's reward baseline runs over every batch the objective sees (evaluation included, as in LF)
        self.reward_baseline = pref_losses.RewardBaseline() if self.uses_bco else None

    @property
    def uses_bco(self) -> bool:
        return self.bco_weight > 1e-6 and self.uses_reference  # LF: only next to a loss with a reference

    def compute(self, model, inputs, num_items_in_batch=None) -> tuple[torch.Tensor, dict[str, float]]:
        # LD-DPO weights the policy's log-probs only; `averages` divide by the plain answer lengths (LF)
        sums, counts = sequence_logps(model, inputs, chunk_size=self.chunk_size, ld_alpha=self.ld_alpha)
        averages = sums / counts.clamp(min=1)
        averaged = self.loss_type in pref_losses.AVERAGED_LOGP_LOSSES
        logps = averages if averaged else sums
        half = logps.shape[0] // 2
        chosen, rejected = logps[:half], logps[half:]

        extra: dict[str, torch.Tensor] = {}
        if self.uses_reference:
            ref_sums, ref_counts = reference_logps(model, self.ref_model, inputs, chunk_size=self.chunk_size)
            ref = ref_sums / ref_counts.clamp(min=1) if averaged else ref_sums
            losses, chosen_rewards, rejected_rewards = pref_losses.dpo_loss(
                chosen, rejected, ref[:half], ref[half:], beta=self.beta, loss_type=self.loss_type,
                label_smoothing=self.label_smoothing)
            # means from here on: kto_pair has 2 B losses, the BCO and SFT terms B (equal to LF's per-pair sums)
            loss = losses.mean()
            if self.uses_bco:
                delta = self.reward_baseline.update(torch.cat((chosen_rewards, rejected_rewards)).mean())
                bco = pref_losses.bco_loss(chosen, rejected, ref[:half], ref[half:], beta=self.beta, delta=delta)
                loss = (loss + self.bco_weight * bco.mean()) / (1.0 + self.bco_weight)
                extra["bco_loss"] = bco.detach()
        else:
            losses, chosen_rewards, rejected_rewards, extra = pref_losses.reference_free_loss(
                chosen, rejected, loss_type=self.loss_type, beta=self.beta, simpo_gamma=self.simpo_gamma)
            loss = losses.mean()
        sft_losses = -averages[:half]
        if self.ftx > 0:
            loss = loss + self.ftx * sft_losses.mean()
            extra.setdefault("sft_loss", sft_losses.detach())

        metrics = mean_metrics(
            rewards__chosen=chosen_rewards, rewards__rejected=rejected_rewards,
            rewards__accuracies=(chosen_rewards > rejected_rewards), rewards__margins=chosen_rewards - rejected_rewards,
            logps__chosen=chosen.detach(), logps__rejected=rejected.detach(), **extra,
        )
        return loss, metrics


def run_dpo(cfg) -> dict:
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.model.attention import runs_packed_sdpa
    from tuneforge.model.loader import load_model
    from tuneforge.train.preference import PairwisePackedCollator, build_objective_trainer, load_reference_model
    from tuneforge.train.resume import prepare_output_dir

    # setup
    finetuning = cfg.finetuning
    resume = prepare_output_dir(cfg)
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)

    # data: prompt + chosen and prompt + rejected, one infer_seqlen budget per pair
    bundle = build_datasets(cfg, tokenizer, template, stage="dpo")
    workflow.report_data(bundle, cfg.training.output_dir)

    # model (+ reference model when the loss needs one)
    workflow.seed_everything(cfg)  # LoRA / value-head init is random: same config, same run
    model = load_model(cfg.model, finetuning, is_trainable=cfg.training.do_train,
                       compute_dtype=workflow.compute_dtype(cfg))
    objective = DPOObjective(loss_type=finetuning.pref_loss, beta=finetuning.pref_beta, ftx=finetuning.pref_ftx,
                             label_smoothing=finetuning.dpo_label_smoothing, simpo_gamma=finetuning.simpo_gamma,
                             bco_weight=finetuning.pref_bco_weight, ld_alpha=finetuning.ld_alpha)
    if objective.uses_reference:
        objective.ref_model = load_reference_model(cfg, lora_policy=finetuning.finetuning_type in ADAPTER_METHODS)

    # trainer: chosen and rejected answers of a batch in one padding-free row
    # a system prompt all sequences share runs once when the policy and the reference read that layout
    collator = PairwisePackedCollator(share_prefix=runs_packed_sdpa(model, objective.ref_model))
    if bundle.vision is not None:  # a vision-language model: padded rows with the images' pixels
        from tuneforge.data.collate_vision import VisionPairwiseCollator

        collator = VisionPairwiseCollator(tokenizer.pad_token_id, bundle.vision)
    trainer, log_callback = build_objective_trainer(cfg, model, tokenizer, bundle, collator, objective)

    # train + save
    metrics = workflow.train_and_save(cfg, trainer, log_callback, resume)
    workflow.print_summary(cfg, metrics)
    return metrics
