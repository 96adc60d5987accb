"""GRPO recipe (stage grpo): setup -> prompts -> policy (+ reference) -> rewards -> trainer -> train -> save.

Group Relative Policy Optimization with verifiable rewards, on the HF Trainer (so resume, `STOP_REQUESTED`,
checkpoints, `trainer_log.jsonl`, `report_to` and the web UI's progress work as for the other stages):

  1. rollouts (grpo_rollouts.py): each optimizer step's prompts sampled `num_generations` times by the
     policy, scored by the reward functions (rewards.py), group-normalised advantages (grpo_core.py);
  2. loss (GRPOObjective): the completions' token log-probs in one padding-free forward (prompt tokens
     unlabelled, the LM head only at completion positions), TRL's clipped objective with the KL penalty
     `beta` to the reference: the policy with its adapter disabled (lora), else a frozen copy (`ref_model`);
  3. logged per step: reward (and per function), reward_std within groups, zero_std_frac (groups without a
     learning signal), kl, clip_ratio/low|high, completion_length, truncated_frac, gen_tokens_per_s,
     train_tokens_per_s.

One process (validation refuses deepspeed/fsdp; a multi-process launch stops here).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from tuneforge.config.args import ADAPTER_METHODS, split_names
from tuneforge.errors import ConfigError, NotSupportedError
from tuneforge.train import workflow
from tuneforge.train.grpo_core import LossSettings, grpo_loss
from tuneforge.train.grpo_rollouts import (GRPOCollator, ReferenceModelReward, RepeatedStepSampler, RolloutMaker,
                                           StepRollouts)
from tuneforge.train.loss import DEFAULT_CHUNK_SIZE
from tuneforge.train.preference import label_token_logps
from tuneforge.train.trainer import TuneforgeTrainer

logger = logging.getLogger("tuneforge")

GRPO_LOG_KEYS = ("reward", "reward_std", "rewards/", "zero_std_frac", "kl", "clip_ratio/", "completion_length",
                 "truncated_frac", "gen_tokens_per_s", "train_tokens_per_s")
IGNORE_INDEX = -100


def pack_completions(prompts, completions, device) -> dict[str, torch.Tensor]:
    """prompt + completion pairs in one row, labels only on completion tokens (-100 on prompts)."""
    ids, positions, labels = [], [], []
    for prompt, completion in zip(prompts, completions):
        ids += [*prompt, *completion]
        positions += range(len(prompt) + len(completion))
        labels += [IGNORE_INDEX] * len(prompt) + list(completion)
    return {name: torch.tensor([values], dtype=torch.long, device=device)
            for name, values in (("input_ids", ids), ("position_ids", positions), ("labels", labels))}


def completion_logps(model, prompts, completions, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs [n, R] of each completion's tokens, mask [n, R]) from one packed forward."""
    device = next(model.parameters()).device
    row = pack_completions(prompts, completions, device)
    token_logps, owner, _ = label_token_logps(model, row["input_ids"], row["labels"], row["position_ids"],
                                              chunk_size=chunk_size)
    width = max(map(len, completions))
    mask = torch.zeros(len(completions), width, device=device)
    column = torch.cat([torch.arange(len(c), device=device) for c in completions])
    out = torch.zeros(len(completions), width, device=device, dtype=token_logps.dtype)
    out = out.index_put((owner, column), token_logps)
    mask[owner, column] = 1.0
    return out, mask


class GRPOObjective:
    """The clipped GRPO loss of one micro-batch of rollouts (`RolloutMaker` output)."""

    input_columns = ("input_ids", "labels")

    def __init__(self, settings: LossSettings, ref_model=None, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.settings, self.ref_model, self.chunk_size = settings, ref_model, chunk_size

    def compute(self, model, inputs, num_items_in_batch=None) -> tuple[torch.Tensor, dict[str, float]]:
        prompts, completions = inputs["prompt_ids"], inputs["completion_ids"]
        logps, mask = completion_logps(model, prompts, completions, self.chunk_size)
        memo = inputs["memo"]  # kept with the rollouts across their num_iterations passes
        if memo.old_logps is None:  # first pass over these rollouts: the policy that sampled them
            memo.old_logps = logps.detach()
        if self.settings.beta != 0.0 and memo.ref_logps is None:
            memo.ref_logps = self.reference_logps(model, prompts, completions)
        loss, stats = grpo_loss(logps, memo.old_logps, memo.ref_logps, inputs["advantages"].to(logps.device), mask,
                                self.settings, tokens_in_batch=int(num_items_in_batch or 0) or None)
        if self.settings.loss_type == "dapo":  # normalised by the whole step's tokens; the Trainer divides by
            loss = loss * inputs["accumulation"]  # the accumulation steps as for a micro-batch mean: undo that
        return loss, {"kl": stats["kl"], "clip_ratio/low": stats["clip_low"], "clip_ratio/high": stats["clip_high"]}

    @torch.no_grad()
    def reference_logps(self, model, prompts, completions) -> torch.Tensor:
        if self.ref_model is not None:
            return completion_logps(self.ref_model, prompts, completions, self.chunk_size)[0]
        with model.disable_adapter():
            return completion_logps(model, prompts, completions, self.chunk_size)[0]


class GRPOTrainer(TuneforgeTrainer):
    """The Trainer with GRPO's data flow: the sampler repeats each step's prompts `num_iterations` times and the
    step's micro-batches of prompts become micro-batches of rollouts before the Trainer runs them."""

    rollouts: RolloutMaker

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        step = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        full = len(dataset) - len(dataset) % step  # whole steps only: a step's rollouts are one group of prompts
        return RepeatedStepSampler(full, step, self.rollouts.num_iterations, self.args.seed,
                                   shuffle=not self.finetuning_args.disable_shuffling)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batches:
            return batches, None
        rollouts: StepRollouts = self.rollouts.for_step(self.model, batches)
        if rollouts.uses == 1:  # fresh rollouts: their statistics go into this step's log
            self.stage_metrics.add("train", rollouts.stats)
        self._step_started = time.perf_counter()
        return rollouts.micro_batches, torch.tensor(rollouts.completion_tokens)

    def micro_batch_tokens(self, inputs) -> tuple[int, int, int]:
        """(prompt + completion tokens, completion tokens, the same as the first) of a micro-batch of rollouts."""
        completion = sum(map(len, inputs["completion_ids"]))
        real = sum(map(len, inputs["prompt_ids"])) + completion
        return real, completion, real

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        seconds = time.perf_counter() - self._step_started
        tokens = self.micro_batch_tokens(inputs)[0]
        self.stage_metrics.add("train", {"train_tokens_per_s": tokens / max(seconds, 1e-9)})
        self._step_started = time.perf_counter()
        return loss


def build_reward_functions(cfg, policy, tokenizer):
    """(named functions, weights, the reward-model function or None) from `reward_funcs` / `reward_weights`."""
    from tuneforge.train.rewards import load_reward_function

    names = split_names(cfg.grpo.reward_funcs)
    weights = [float(w) for w in split_names(cfg.grpo.reward_weights)] or [1.0] * len(names)
    functions, model_reward = [], None
    for name in names:
        if name == "reward_model":
            model_reward = ReferenceModelReward(build_model_reward(cfg, policy, tokenizer))
            functions.append((name, model_reward))
        else:
            functions.append(load_reward_function(name, cfg.config_dir))
    return functions, weights, model_reward


def build_model_reward(cfg, policy, tokenizer):
    from tuneforge.train.reward_sources import build_reward_source

    if cfg.finetuning.reward_model_type in ("lora", "oft") and cfg.finetuning.reward_model:
        raise NotSupportedError("reward_funcs: reward_model with `reward_model_type: lora` is not supported yet for "
                                "GRPO; use `reward_model_type: full` (`reward_model: <base model>`, "
                                "`reward_model_adapters: <rm output>`) or `api`")
    return build_reward_source(cfg, policy, tokenizer, workflow.compute_dtype(cfg))


def run_grpo(cfg) -> dict:
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.model.loader import load_model
    from tuneforge.train.preference import load_reference_model
    from tuneforge.train.resume import prepare_output_dir
    from tuneforge.utils.distributed import world_size

    if world_size() > 1:
        raise NotSupportedError("stage grpo runs in one process; launch it without torchrun / accelerate")
    resume = prepare_output_dir(cfg)
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)

    # data: prompts with the assistant prefix; the answer, when present, is the reference for the rewards
    bundle = build_datasets(cfg, tokenizer, template, stage="grpo")
    workflow.report_data(bundle, cfg.training.output_dir)
    step_prompts = cfg.training.per_device_train_batch_size * cfg.training.gradient_accumulation_steps
    if len(bundle.train) < step_prompts:
        raise ConfigError(f"stage grpo: {len(bundle.train)} prompts, fewer than one optimizer step takes "
                          f"(per_device_train_batch_size x gradient_accumulation_steps = {step_prompts})")

    answers = GRPOCollator(tokenizer).references(bundle.train["labels"])  # the answers the rewards will see
    if "accuracy" in split_names(cfg.grpo.reward_funcs) and not any(answers):
        raise ConfigError("reward_funcs: `accuracy` compares completions with the dataset's answers, and the "
                          f"dataset ({','.join(cfg.data.dataset or ())}) has none: every reward would be 0 and "
                          "nothing would be learned; add the answer column (alpaca `output`) or use other rewards")

    # models: policy (+ frozen reference for full/freeze with beta > 0), rewards
    workflow.seed_everything(cfg)
    model = load_model(cfg.model, cfg.finetuning, is_trainable=True, compute_dtype=workflow.compute_dtype(cfg))
    grpo = cfg.grpo
    settings = LossSettings(loss_type=grpo.loss_type, epsilon=grpo.epsilon, epsilon_high=grpo.epsilon_high,
                            beta=grpo.beta, max_completion_length=cfg.generating.max_new_tokens)
    objective = GRPOObjective(settings)
    if grpo.beta != 0.0:
        objective.ref_model = load_reference_model(cfg, lora_policy=cfg.finetuning.finetuning_type in ADAPTER_METHODS)
    functions, weights, model_reward = build_reward_functions(cfg, model, tokenizer)
    generate_kwargs = {k: v for k, v in cfg.generating.to_generate_kwargs().items() if k != "num_beams"}

    trainer, log_callback = workflow.build_trainer(cfg, model, tokenizer, bundle, GRPOCollator(tokenizer),
                                                   objective=objective, extra_log_keys=GRPO_LOG_KEYS,
                                                   trainer_class=GRPOTrainer)
    trainer.rollouts = RolloutMaker(tokenizer, functions, weights, num_generations=grpo.num_generations,
                                    num_iterations=grpo.num_iterations, scale_rewards=grpo.scale_rewards,
                                    generate_kwargs=generate_kwargs, stop_ids=template.stop_token_ids(tokenizer),
                                    reward_model=model_reward)
    logger.info("GRPO: %d prompts, %d per step x %d completions, rewards %s, loss %s, beta %s, %d iteration(s)",
                len(bundle.train) - len(bundle.train) % step_prompts, step_prompts, grpo.num_generations,
                ", ".join(f"{name} x{w:g}" for (name, _), w in zip(functions, weights)), grpo.loss_type, grpo.beta,
                grpo.num_iterations)
    metrics = workflow.train_and_save(cfg, trainer, log_callback, resume, plot_keys=("loss", "reward"))
    workflow.print_summary(cfg, metrics)
    rewards = [row["reward"] for row in trainer.state.log_history if "reward" in row]
    if rewards:  # did it learn? the first and the last steps side by side
        first, last = rewards[:10], rewards[-10:]
        print(f"[tuneforge] mean reward: first {len(first)} steps {sum(first) / len(first):.3f} -> last {len(last)} "
              f"steps {sum(last) / len(last):.3f}"
              + (f"; curve: {Path(cfg.training.output_dir) / 'training_reward.png'}" if cfg.finetuning.plot_loss else ""))
    return metrics
