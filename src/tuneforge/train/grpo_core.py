"""GRPO's arithmetic on tensors, no model (tests/test_grpo_core.py checks it against hand-computed values).

Definitions as in TRL 1.x's GRPOTrainer (read from its documentation; this is tuneforge's own code):

* group advantages: the rewards of the `num_generations` completions of one prompt, minus their mean, divided
  by their (unbiased) standard deviation + 1e-4 (`scale_rewards: group`), by the whole batch's standard
  deviation (`batch`), or not divided (`none`, Dr. GRPO's choice);
* per token: ratio = exp(logp - logp_old); loss = -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A)
  + beta * KL, with KL = exp(ref - logp) - (ref - logp) - 1 (the k3 estimator: zero when policy == reference);
* `loss_type` says how token losses are averaged: `grpo` per completion (mean of its tokens) then over
  completions; `bnpo` over all completion tokens of the batch; `dr_grpo` sum over tokens divided by
  (completions x max_completion_length); `dapo` sum over tokens divided by the completion tokens of the whole
  (accumulated, all-process) batch, given as `tokens_in_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
_STD_EPS = 1e-4


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: str = "group") -> torch.Tensor:
    """`rewards [prompts * num_generations]` (the completions of a prompt next to each other) -> advantages."""
    if scale not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale!r}")
    grouped = rewards.view(-1, num_generations)
    centered = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True).expand_as(grouped).reshape(-1)
    elif scale == "batch":
        std = rewards.std().expand_as(rewards)
    else:
        return centered
    return centered / (std + _STD_EPS)


def zero_variance_fraction(rewards: torch.Tensor, num_generations: int) -> float:
    """Share of prompts whose completions all got the same reward: no learning signal from them."""
    grouped = rewards.view(-1, num_generations)
    return float((grouped.max(dim=1).values == grouped.min(dim=1).values).float().mean())


@dataclass(frozen=True)
class LossSettings:
    loss_type: str = "dapo"
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None: epsilon (symmetric clipping); DAPO uses 0.28
    beta: float = 0.0
    max_completion_length: int = 256


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, settings: LossSettings,
              tokens_in_batch: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss and statistics for completions `[n, T]` (log-probabilities of the sampled tokens, `mask` 1 on them).

    `advantages [n]`; `ref_logps` may be None when `beta` is 0. Statistics: kl (mean per token), clip fractions
    (low: ratio below 1 - epsilon with a negative advantage; high: above 1 + epsilon_high with a positive one)."""
    if settings.loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {settings.loss_type!r}")
    mask = mask.to(logps.dtype)
    low, high = settings.epsilon, settings.epsilon if settings.epsilon_high is None else settings.epsilon_high
    ratio = torch.exp(logps - old_logps)
    advantage = advantages.unsqueeze(1)
    token_loss = -torch.min(ratio * advantage, torch.clamp(ratio, 1 - low, 1 + high) * advantage)
    kl = None
    if settings.beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs the reference model's log-probabilities")
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        token_loss = token_loss + settings.beta * kl
    masked = token_loss * mask
    tokens = mask.sum().clamp(min=1)
    if settings.loss_type == "grpo":
        loss = (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    elif settings.loss_type == "bnpo":
        loss = masked.sum() / tokens
    elif settings.loss_type == "dr_grpo":
        loss = masked.sum() / (logps.shape[0] * settings.max_completion_length)
    else:  # dapo: normalised by the completion tokens of the whole batch this step optimises
        loss = masked.sum() / max(1, tokens_in_batch if tokens_in_batch is not None else int(tokens))
    with torch.no_grad():
        clipped_low = ((ratio < 1 - low) & (advantage < 0)).to(mask.dtype) * mask
        clipped_high = ((ratio > 1 + high) & (advantage > 0)).to(mask.dtype) * mask
        stats = {"clip_low": float(clipped_low.sum() / tokens), "clip_high": float(clipped_high.sum() / tokens),
                 "kl": float((kl * mask).sum() / tokens) if kl is not None else 0.0}
    return loss, stats
