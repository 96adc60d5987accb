"""PPO recipe (RLHF): setup -> data -> policy + value head + reference + reward -> loop -> save.

Each step of the loop:
  1. rollout:    the policy samples a response to every prompt of the step (batched, left-padded,
                 KV cache, the generating keys `max_new_tokens`, `temperature`, `top_p`, ...);
  2. score:      the reward source scores prompt + response (`reward_model`, `reward_model_type`);
  3. advantages: log-probs of the policy and the reference, values of the critic (one padding-free
                 forward each, LM head only at response positions), per-token KL penalty + score,
                 GAE (ppo_core.py);
  4. update:     `ppo_epochs` passes over the rollouts in shuffled mini-batches of
                 `per_device_train_batch_size`, one optimizer step per `gradient_accumulation_steps`
                 (optim.py: LoRA+ groups with `loraplus_lr_ratio`; NEFTune noise on these forwards with
                 `neftune_noise_alpha`, ppo_batch.py);
  5. log (trainer_log.jsonl and the `report_to` integrations) + save.
The thread policy (threads.py) runs after every rollout batch and optimizer step.
One step uses per_device_train_batch_size x gradient_accumulation_steps x ppo_buffer_size prompts
(LLaMA-Factory's PPO batch). The critic is a value head on the policy's own backbone. The reference
is the policy with its LoRA adapter disabled (lora), else a frozen copy (or `ref_model`).
As LLaMA-Factory's TRL-based PPO: log-probs use the raw logits (no temperature), resuming is not
supported, and there is no evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import torch

from tuneforge.config.args import ADAPTER_METHODS
from tuneforge.errors import ConfigError, NotSupportedError
from tuneforge.train import workflow
from tuneforge.train.callbacks import LogCallback
from tuneforge.train.grpo_rollouts import generate_left_padded
from tuneforge.train.optim import create_optimizer, create_scheduler
from tuneforge.train.ppo_batch import PackedResponses, neftune_noise, output_head, response_forward
from tuneforge.train.ppo_core import (AdaptiveKLController, FixedKLController, PPOHyperparams, RunningMoments,
                                      compute_gae, masked_mean, masked_whiten, ppo_loss, shape_rewards)
from tuneforge.train.reporting import setup_reporting
from tuneforge.train.threads import ThreadPolicy

logger = logging.getLogger("tuneforge")

PPO_LOG_KEYS = ("reward", "kl", "kl_coef", "policy_loss", "value_loss", "entropy", "clipfrac", "approx_kl",
                "response_length")


def run_ppo(cfg, reward_source=None) -> dict:
    from tuneforge.data.pipeline import build_datasets
    from tuneforge.model.value_head import load_value_head_model
    from tuneforge.train.resume import prepare_output_dir
    from tuneforge.train.reward_sources import build_reward_source

    # setup
    check_ppo_config(cfg, needs_reward_model=reward_source is None)
    if prepare_output_dir(cfg):
        raise NotSupportedError("resuming a PPO run is not supported yet; set `overwrite_output_dir: true` to start "
                                f"over in {cfg.training.output_dir}, or choose another output_dir")
    workflow.seed_everything(cfg)  # LoRA / value-head init and sampling: same config, same run
    tokenizer, template = workflow.load_tokenizer_and_template(cfg)

    # data: prompts (generation prompt incl. the assistant prefix); reference answers are not used
    bundle = build_datasets(cfg, tokenizer, template, stage="ppo")
    workflow.report_data(bundle, cfg.training.output_dir)
    prompts = [list(ids) for ids in bundle.train["input_ids"]]

    # models: policy + critic (one backbone), reference, reward
    dtype = workflow.compute_dtype(cfg)
    policy = load_value_head_model(cfg.model, cfg.finetuning, is_trainable=True, compute_dtype=dtype)
    if cfg.training.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.enable_input_require_grads()
    reference = load_reference(cfg, dtype)
    reward = reward_source or build_reward_source(cfg, policy, tokenizer, dtype)

    # loop
    loop = PPOLoop(cfg, policy, reference, reward, tokenizer, stop_ids=template.stop_token_ids(tokenizer))
    metrics = loop.train(prompts)

    # save
    save_policy(policy, tokenizer, cfg.training.output_dir)
    loop.state.save_to_json(str(Path(cfg.training.output_dir) / "trainer_state.json"))
    if cfg.finetuning.plot_loss:
        from tuneforge.utils.runlog import plot_loss

        for path in plot_loss(cfg.training.output_dir, keys=("loss", "reward")):
            logger.info("curve: %s", path)
    print(f"\n[tuneforge] done in {metrics['train_seconds']:.0f}s: reward {metrics['first_reward']:.4f} -> "
          f"{metrics['last_reward']:.4f} (first -> last step), {metrics['throughput']:.0f} tokens/s, "
          f"peak RSS {metrics['peak_rss_gib']:.2f} GiB", flush=True)
    print(f"[tuneforge] policy (+ value_head.safetensors) saved in {Path(cfg.training.output_dir).resolve()}")
    print(f"[tuneforge] chat with it:  {workflow.chat_command(cfg)}")
    return metrics


def check_ppo_config(cfg, needs_reward_model: bool = True) -> None:
    """The reward source (config validation checked the rest): a reward model unless the caller passes one."""
    if needs_reward_model and not cfg.finetuning.reward_model:
        raise ConfigError("stage ppo needs `reward_model`: a reward model trained with `stage: rm` (its output_dir), "
                          "or a URL with `reward_model_type: api`")


def load_reference(cfg, dtype):
    """None = the policy with its adapter disabled (lora without `ref_model`); else a frozen model."""
    from tuneforge.model.loader import load_model
    from tuneforge.config.args import split_names
    from tuneforge.model.value_head import ValueHeadModel

    finetuning = cfg.finetuning
    model_args = workflow.ref_model_arguments(cfg)
    if model_args is None and finetuning.finetuning_type in ADAPTER_METHODS:
        return None
    model_args = model_args or cfg.model
    # reference = the starting point: base + every adapter of adapter_name_or_path, merged
    method = "lora" if split_names(model_args.adapter_name_or_path) else "full"
    frozen = load_model(model_args, dataclasses.replace(finetuning, finetuning_type=method), is_trainable=False,
                        compute_dtype=dtype)
    logger.info("reference model: frozen copy of %s", model_args.model_name_or_path)
    return ValueHeadModel(frozen)  # its value head is never used; the wrapper gives hidden states


class PPOLoop:
    """The PPO loop over a list of prompts; `train()` runs it and returns the metrics."""

    def __init__(self, cfg, policy, reference, reward, tokenizer, *, stop_ids, hp: PPOHyperparams | None = None):
        from transformers import TrainerControl, TrainerState

        self.cfg, self.args, self.finetuning = cfg, cfg.training, cfg.finetuning
        self.policy, self.reference, self.reward, self.tokenizer = policy, reference, reward, tokenizer
        self.stop_ids = [int(i) for i in stop_ids]
        self.hp = hp or PPOHyperparams()
        self.head = output_head(policy)
        self.device = next(policy.parameters()).device
        self.mini_batch = self.args.per_device_train_batch_size
        self.backward_batch = self.mini_batch * self.args.gradient_accumulation_steps
        self.rollout_batch = self.backward_batch * self.finetuning.ppo_buffer_size
        target = self.finetuning.ppo_target
        self.kl_ctl = (AdaptiveKLController(self.hp.init_kl_coef, target, self.hp.kl_horizon) if target is not None
                       else FixedKLController(self.hp.init_kl_coef))
        self.score_moments = RunningMoments() if self.finetuning.ppo_score_norm else None
        self.generator = torch.Generator().manual_seed(self.args.seed)
        self.state, self.control = TrainerState(), TrainerControl()
        self.log_callback = LogCallback(self.args.output_dir, extra_keys=PPO_LOG_KEYS)
        self.callbacks = loop_callbacks(self.args, self.log_callback, policy, tokenizer)  # + `report_to`
        setup_reporting(self.callbacks, cfg)  # logging_dir, use_swanlab (train/reporting.py)
        self.threads = ThreadPolicy()  # the cores other processes leave free, checked after each piece of work
        self.tokens_seen = 0

    # ---- 1. rollout -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[list[int]]) -> list[list[int]]:
        """Sampled responses, each cut after its first stop token (which it keeps)."""
        kwargs = self.cfg.generating.to_generate_kwargs()
        if not kwargs["do_sample"]:
            for key in ("temperature", "top_p", "top_k"):
                kwargs.pop(key)
        self.policy.eval()
        responses = generate_left_padded(self.policy.pretrained_model.generate, prompts, self.tokenizer.pad_token_id,
                                         self.stop_ids, self.device, kwargs)
        self.threads.on_step()
        return responses

    # ---- 2 + 3. score, log-probs, values, advantages ----------------------------------------
    @torch.no_grad()
    def make_experience(self, prompts, responses) -> dict:
        scores = torch.cat([self.reward.score(prompts[i:i + self.mini_batch], responses[i:i + self.mini_batch])
                            for i in range(0, len(prompts), self.mini_batch)]).to(self.device)
        batch = PackedResponses.build(prompts, responses, self.device)
        logprobs, _, values = response_forward(self.policy, self.head, batch, values=True)
        if self.reference is None:
            with self.policy.disable_adapter():
                ref_logprobs, _, _ = response_forward(self.policy, self.head, batch, values=False)
        else:
            ref_logprobs, _, _ = response_forward(self.reference, output_head(self.reference), batch, values=False)
        shaped_scores = self.score_moments.normalise(scores) if self.score_moments is not None else scores
        rewards, kl = shape_rewards(shaped_scores, logprobs, ref_logprobs, batch.mask, self.kl_ctl.value)
        if self.finetuning.ppo_whiten_rewards:
            rewards = masked_whiten(rewards, batch.mask, shift_mean=False)
        advantages, returns = compute_gae(rewards, values, batch.mask, self.hp.gamma, self.hp.lam)
        advantages = masked_whiten(advantages, batch.mask)
        return {"logprobs": logprobs, "values": values, "advantages": advantages, "returns": returns,
                "mask": batch.mask, "scores": scores, "kl": kl.sum(dim=1)}

    # ---- 4. update ---------------------------------------------------------------------------
    def update(self, prompts, responses, exp: dict, optimizer) -> dict[str, float]:
        stats: dict[str, list[float]] = {k: [] for k in ("loss", "policy_loss", "value_loss", "entropy",
                                                         "clipfrac", "approx_kl")}
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.policy.train()
        for _ in range(self.finetuning.ppo_epochs):
            order = torch.randperm(len(prompts), generator=self.generator).tolist()
            for start in range(0, len(order), self.backward_batch):
                group = order[start:start + self.backward_batch]
                for mb_start in range(0, len(group), self.mini_batch):
                    rows = group[mb_start:mb_start + self.mini_batch]
                    batch = PackedResponses.build([prompts[i] for i in rows], [responses[i] for i in rows], self.device)
                    with neftune_noise(self.policy, self.args.neftune_noise_alpha, batch):
                        logprobs, entropy, values = response_forward(self.policy, self.head, batch, values=True)
                    width = batch.mask.shape[1]
                    old = {k: exp[k][rows, :width] for k in ("logprobs", "values", "advantages", "returns")}
                    parts = ppo_loss(logprobs, values, old["logprobs"], old["values"], old["advantages"],
                                     old["returns"], batch.mask, self.hp)
                    (parts.loss * len(rows) / len(group)).backward()
                    for key, value in (("loss", parts.loss), ("policy_loss", parts.policy_loss),
                                       ("value_loss", parts.value_loss), ("clipfrac", parts.policy_clipfrac),
                                       ("approx_kl", parts.approx_kl), ("entropy", masked_mean(entropy, batch.mask))):
                        stats[key].append(float(value.detach()))
                if self.args.max_grad_norm and self.args.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                self.threads.on_step()
        self.policy.eval()
        return {k: sum(v) / len(v) for k, v in stats.items()}

    # ---- the loop ------------------------------------------------------------------------------
    def batches(self, prompts: list[list[int]], max_steps: int):
        """Rollout batches of prompts: shuffled each epoch (unless disable_shuffling), last one may be short."""
        step = 0
        while True:
            order = (list(range(len(prompts))) if self.finetuning.disable_shuffling
                     else torch.randperm(len(prompts), generator=self.generator).tolist())
            for start in range(0, len(order), self.rollout_batch):
                if step == max_steps:
                    return
                step += 1
                yield [prompts[i] for i in order[start:start + self.rollout_batch]]

    def train(self, prompts: list[list[int]]) -> dict:
        if not prompts:
            raise ConfigError("stage ppo: the dataset gave no prompts to train on")
        steps_per_epoch = math.ceil(len(prompts) / self.rollout_batch)
        max_steps = self.args.max_steps if self.args.max_steps > 0 else math.ceil(self.args.num_train_epochs * steps_per_epoch)
        optimizer = create_optimizer(self.policy, self.args, self.finetuning)  # LoRA+ groups with loraplus_lr_ratio
        scheduler = create_scheduler(self.args, optimizer, max_steps)
        self.callbacks.optimizer, self.callbacks.lr_scheduler = optimizer, scheduler
        self.state.max_steps, self.state.global_step = max_steps, 0
        logger.info("PPO: %d prompts, %d per step (batch %d x accumulation %d x buffer %d), %d steps, %d ppo_epochs",
                    len(prompts), self.rollout_batch, self.mini_batch, self.args.gradient_accumulation_steps,
                    self.finetuning.ppo_buffer_size, max_steps, self.finetuning.ppo_epochs)
        self.control = self.callbacks.on_train_begin(self.args, self.state, self.control)
        self.threads.start(self.device)
        started, window, rewards_per_step = time.time(), [], []
        try:
            for step_prompts in self.batches(prompts, max_steps):
                responses = []
                for i in range(0, len(step_prompts), self.mini_batch):
                    responses += self.generate(step_prompts[i:i + self.mini_batch])
                exp = self.make_experience(step_prompts, responses)
                stats = self.update(step_prompts, responses, exp, optimizer)
                lr = scheduler.get_last_lr()[0]
                scheduler.step()
                mean_kl = float(exp["kl"].mean())
                stats.update(reward=float(exp["scores"].mean()), kl=mean_kl, kl_coef=self.kl_ctl.value, lr=lr,
                             response_length=sum(map(len, responses)) / len(responses))
                self.kl_ctl.update(mean_kl, len(step_prompts))
                self.tokens_seen += sum(len(p) + len(r) for p, r in zip(step_prompts, responses))
                rewards_per_step.append(stats["reward"])
                window.append(stats)
                self.state.global_step += 1
                self.control = self.callbacks.on_step_end(self.args, self.state, self.control)
                if self.state.global_step % max(int(self.args.logging_steps), 1) == 0 or self.state.global_step == max_steps:
                    self.log(window, steps_per_epoch, started)
                    window = []
                if self.control.should_training_stop:
                    break
                if self._should_save_checkpoint(max_steps):
                    folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
                    save_policy(self.policy, self.tokenizer, folder)
                    self.state.save_to_json(str(folder / "trainer_state.json"))
        except BaseException as err:
            self.log_callback.mark_failed(str(err) or type(err).__name__)
            raise
        finally:
            self.threads.stop()
        self.control = self.callbacks.on_train_end(self.args, self.state, self.control)
        seconds = time.time() - started
        return {"train_seconds": round(seconds, 2), "steps": self.state.global_step,
                "first_reward": rewards_per_step[0], "last_reward": rewards_per_step[-1],
                "rewards": rewards_per_step, "total_tokens": self.tokens_seen,
                "throughput": round(self.tokens_seen / max(seconds, 1e-9), 2), **peak_memory()}

    def log(self, window: list[dict], steps_per_epoch: int, started: float) -> None:
        logs = {k: round(sum(s[k] for s in window) / len(window), 6) for k in ("loss", *PPO_LOG_KEYS)}
        logs.update(learning_rate=window[-1]["lr"], epoch=round(self.state.global_step / steps_per_epoch, 2),
                    throughput=round(self.tokens_seen / max(time.time() - started, 1e-9), 2),
                    total_tokens=self.tokens_seen)
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callbacks.on_log(self.args, self.state, self.control, logs)

    def _should_save_checkpoint(self, max_steps: int) -> bool:
        strategy = str(getattr(self.args.save_strategy, "value", self.args.save_strategy))
        step = self.state.global_step
        return strategy == "steps" and step < max_steps and step % max(int(self.args.save_steps), 1) == 0


def loop_callbacks(args, log_callback, model, tokenizer):
    """The callbacks of PPO's loop, called as the HF Trainer calls its own: LLaMA-Factory's flow callback, our log
    file, and the `report_to` integrations (tensorboard, wandb, ...) with the loop's logs."""
    from transformers.integrations import get_reporting_integration_callbacks
    from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

    callbacks = [DefaultFlowCallback(), log_callback]
    callbacks += [cls() for cls in get_reporting_integration_callbacks(args.report_to)]
    return CallbackHandler(callbacks, model, tokenizer, None, None)


def save_policy(policy, tokenizer, output_dir) -> None:
    """Policy (adapter or weights) + value_head.safetensors + tokenizer, written complete to a staging folder,
    committed with one rename, then moved in (utils/folders.py)."""
    from tuneforge.utils.folders import SAVING_DIRNAME, commit_files, finish_interrupted_save

    target = Path(output_dir)
    finish_interrupted_save(target)
    staging = target / SAVING_DIRNAME
    staging.mkdir(parents=True)
    inner = policy.pretrained_model
    kwargs = {}
    if hasattr(inner, "peft_config"):  # only the policy's adapter, not a loaded reward adapter
        kwargs["selected_adapters"] = [getattr(inner, "active_adapter", "default")]
    policy.save_pretrained(str(staging), **kwargs)
    tokenizer.save_pretrained(str(staging))
    commit_files(target)


def peak_memory() -> dict:
    import resource

    out = {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if torch.cuda.is_available():
        out["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out
