"""The math of PPO for language models, as pure tensor functions (no models, no I/O).

Shapes: one rollout batch is `[B, R]` over *response* positions only; `mask` is 1 on real response
tokens and 0 on the padding after a short response. Token t's log-prob is log pi(a_t | s_t), its
value V(s_t) is the critic's estimate before emitting a_t.

The definitions follow the classic RLHF recipe (Ziegler et al. 2019, Stiennon et al. 2020) as in
TRL's PPOTrainer <= 0.9 that LLaMA-Factory runs, with the same defaults:

- reward shaping: r_t = -beta * (log pi(a_t) - log pi_ref(a_t)), plus the reward model's score at
  the last response token;
- GAE with gamma = 1, lambda = 0.95, returns = advantages + values; advantages whitened over the
  batch (`ppo_whiten_rewards` also whitens the shaped rewards, keeping their mean);
- clipped policy loss (cliprange 0.2) and clipped value loss (cliprange_value 0.2), vf_coef 0.1;
- adaptive KL coefficient (Ziegler et al.): beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon;
- `ppo_score_norm`: scores normalised with running mean / std over all rollouts so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PPOHyperparams:
    """Settings that LLaMA-Factory takes from TRL's defaults (not YAML keys there either)."""

    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    init_kl_coef: float = 0.2
    kl_horizon: int = 10000


# ---- masked statistics ------------------------------------------------------------------------
def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where `mask` is 1 (0 when the mask is empty)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over masked positions; `unbiased` applies Bessel's correction (n / (n - 1))."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    n = float(mask.sum())
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(values - mean) / std over masked positions; `shift_mean=False` adds the mean back."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def sequence_last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a right-padded mask `[B, R]` (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(dim=1).values


# ---- rewards and advantages ------------------------------------------------------------------
def shape_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards `[B, R]`: -kl_coef * (logp - ref_logp), plus `scores[b]` at the last response token.

    Returns (rewards, kl) where kl = (logp - ref_logp) * mask is the per-token KL estimate.
    """
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = sequence_last_index(mask)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards * mask, kl


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens. Returns (advantages, returns), `[B, R]`.

    delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}, with V = 0 and
    A = 0 past the end of the row (padding is masked to 0 first, so a short response ends there).
    Returns are A + V (the value targets); advantages are *not* whitened here.
    """
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
    returns = advantages + values
    return advantages * mask, returns * mask


# ---- losses ----------------------------------------------------------------------------------
@dataclass
class LossParts:
    loss: torch.Tensor          # policy_loss + vf_coef * value_loss
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    policy_clipfrac: torch.Tensor
    value_clipfrac: torch.Tensor
    approx_kl: torch.Tensor     # 0.5 * mean((logp - old_logp)^2): how far this update moved the policy


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO-clip: mean over tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)).

    Returns (loss, clipfrac = share of tokens where the clipped term won, approx_kl).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clipfrac.detach(), approx_kl.detach()


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * mean over tokens of max((V - R)^2, (clip(V, V_old +- eps) - R)^2). Returns (loss, clipfrac)."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    clipfrac = masked_mean((clipped_loss > unclipped_loss).to(values.dtype), mask)
    return loss, clipfrac.detach()


def ppo_loss(
    logprobs: torch.Tensor,
    values: torch.Tensor,
    old_logprobs: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    hp: PPOHyperparams,
) -> LossParts:
    policy, policy_clipfrac, approx_kl = clipped_policy_loss(logprobs, old_logprobs, advantages, mask, hp.cliprange)
    value, value_clipfrac = clipped_value_loss(values, old_values, returns, mask, hp.cliprange_value)
    return LossParts(policy + hp.vf_coef * value, policy, value, policy_clipfrac, value_clipfrac, approx_kl)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax distribution at every position: logsumexp(z) - sum(p * z)."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def logprobs_of(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] at every position, in float32 (`[B, R, V]`, `[B, R]` -> `[B, R]`)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


# ---- KL coefficient ----------------------------------------------------------------------------
class AdaptiveKLController:
    """Ziegler et al.'s proportional controller that steers the per-sequence KL towards `target`."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0:
            raise ValueError(f"ppo_target must be > 0 for the adaptive KL controller, got {target}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adjust after a batch of `n_steps` rollouts whose mean summed KL was `current_kl`."""
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


class FixedKLController:
    """A constant KL coefficient (used when `ppo_target` is None)."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


# ---- score normalisation ---------------------------------------------------------------------
class RunningMoments:
    """Running mean and (unbiased) std of every score seen so far (Chan et al.'s parallel update)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.var = 1.0  # population variance; 1 until there is data
        self.std = 1.0

    def update(self, xs: torch.Tensor) -> None:
        xs = xs.detach().double().flatten()
        n = xs.numel()
        if n == 0:
            return
        batch_mean = float(xs.mean())
        batch_var = float(xs.var(unbiased=False))
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total
        self.std = math.sqrt(self.var * total / (total - 1)) if total > 1 else 1.0

    def normalise(self, scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """Update with `scores`, then return (scores - running mean) / (running std + eps)."""
        self.update(scores)
        return (scores - self.mean) / (self.std + eps)
