"""Preference losses as pure functions on per-sequence log-probabilities (or reward scores).

Inputs are 1-D tensors with one entry per sequence: summed log-probs of the answer tokens (DPO
sigmoid/hinge/kto_pair, BCO, KTO), or their per-token average (IPO, ORPO, SimPO: LLaMA-Factory divides
by the answer length for these). Every function returns per-example losses (callers take the mean) and
detached rewards where the method defines them. Semantics follow LLaMA-Factory / TRL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuneforge.utils.distributed import average_over_processes

DPO_LOSSES = ("sigmoid", "hinge", "ipo", "kto_pair")
REFERENCE_FREE_LOSSES = ("orpo", "simpo")
AVERAGED_LOGP_LOSSES = ("ipo", "orpo", "simpo")  # use log-probs averaged over answer tokens


def pairwise_reward_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Reward-model ranking loss: mean of -log sigmoid(r_chosen - r_rejected)."""
    return -F.logsigmoid(chosen_scores.float() - rejected_scores.float()).mean()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO-family losses against a reference model: `(losses, chosen_rewards, rejected_rewards)`.

    h = (pi_c - pi_r) - (ref_c - ref_r)
    sigmoid (DPO, cDPO with label_smoothing e): -(1-e) log s(beta h) - e log s(-beta h)
    hinge (SLiC): relu(1 - beta h);  ipo: (h - 1 / (2 beta))^2
    kto_pair (HALOs eq. 7, TRL's pairwise KTO that LF's `pref_loss: kto_pair` names): with the log-ratios
      r_c = pi_c - ref_c, r_r = pi_r - ref_r and KL_c = max(mean(r_c), 0), KL_r = max(mean(r_r), 0) over the
      batch (not detached, as in TRL), `losses` = [1 - s(beta (r_c - KL_r)) for each pair] followed by
      [1 - s(beta (KL_c - r_r)) for each pair]: 2 B entries, the chosen half's KL estimated from the rejected
      answers and the other way round.
    rewards = beta * (policy - reference), detached.
    """
    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    elif loss_type == "kto_pair":
        chosen_logratios = policy_chosen - reference_chosen
        rejected_logratios = policy_rejected - reference_rejected
        chosen_kl = chosen_logratios.mean().clamp(min=0)
        rejected_kl = rejected_logratios.mean().clamp(min=0)
        losses = torch.cat((1 - torch.sigmoid(beta * (chosen_logratios - rejected_kl)),
                            1 - torch.sigmoid(beta * (chosen_kl - rejected_logratios))), 0)
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}; expected one of {', '.join(DPO_LOSSES)}")
    chosen_rewards = beta * (policy_chosen - reference_chosen).detach()
    rejected_rewards = beta * (policy_rejected - reference_rejected).detach()
    return losses, chosen_rewards, rejected_rewards


def bco_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
    delta: float,
) -> torch.Tensor:
    """BCO (Jung et al. 2024) on a pair, as LF's DPO trainer adds it with `pref_bco_weight`: per-pair losses

    -log s(beta r_c - delta) - log s(-(beta r_r - delta)),  r = policy - reference log-ratio,

    `delta` the reward baseline (`RewardBaseline.update`: the running mean of the batches' mean reward).
    """
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    return -F.logsigmoid(chosen_rewards - delta) - F.logsigmoid(-(rejected_rewards - delta))


class RewardBaseline:
    """BCO's reward baseline: the running mean of one scalar per update (TRL's `RunningMoments.mean` as LF feeds
    it: each batch's mean reward over its chosen and rejected answers). Under torch.distributed every process
    contributes its batch's value, as TRL gathers them."""

    def __init__(self) -> None:
        self.mean = 0.0
        self.count = 0

    @torch.no_grad()
    def update(self, batch_mean_reward: torch.Tensor) -> float:
        """Add this batch's mean reward; returns the new running mean (the batch included)."""
        total, count = batch_mean_reward.detach().float().reshape(()), 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            both = torch.stack([total, torch.ones_like(total)])
            torch.distributed.all_reduce(both)
            total, count = both[0], int(both[1].item())
        self.count += count
        self.mean += (float(total) / count - self.mean) * count / self.count
        return self.mean


def orpo_loss(
    chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor, *, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ORPO (Hong et al. 2024) on average log-probs: `(losses, sft_losses, odds_ratio_losses)`.

    log odds(y) = log p - log(1 - p); losses = -log p_c + beta * -log s(log odds_c - log odds_r).
    """
    log_odds = (chosen_avg_logps - rejected_avg_logps) - (
        torch.log1p(-torch.exp(chosen_avg_logps)) - torch.log1p(-torch.exp(rejected_avg_logps))
    )
    sft_losses = -chosen_avg_logps
    odds_ratio_losses = -F.logsigmoid(log_odds)
    return sft_losses + beta * odds_ratio_losses, sft_losses, odds_ratio_losses


def simpo_loss(
    chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor, *, beta: float, gamma: float
) -> torch.Tensor:
    """SimPO (Meng et al. 2024): -log s(beta * (avg_c - avg_r) - gamma)."""
    logits = (chosen_avg_logps - rejected_avg_logps) - gamma / beta
    return -F.logsigmoid(beta * logits)


def reference_free_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, *, loss_type: str, beta: float, simpo_gamma: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """ORPO / SimPO: `(losses, chosen_rewards, rejected_rewards, extra)`; rewards = beta * avg logp (LF)."""
    extra: dict[str, torch.Tensor] = {}
    if loss_type == "orpo":
        losses, sft_losses, odds_ratio_losses = orpo_loss(chosen, rejected, beta=beta)
        extra = {"sft_loss": sft_losses.detach(), "odds_ratio_loss": odds_ratio_losses.detach()}
    elif loss_type == "simpo":
        losses = simpo_loss(chosen, rejected, beta=beta, gamma=simpo_gamma)
    else:
        raise ValueError(f"unknown reference-free loss {loss_type!r}; expected one of {', '.join(REFERENCE_FREE_LOSSES)}")
    return losses, beta * chosen.detach(), beta * rejected.detach(), extra


def kto_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    policy_kl: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    reference_kl: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """KTO (Ethayarajh et al. 2024): `(losses, chosen_rewards, rejected_rewards, kl)`.

    kl = mean(policy_kl - reference_kl) over the batch's mismatched pairs (of every process), clamped at 0, detached.
    desirable:   w_d * (1 - s(beta * (log-ratio - kl)));  undesirable: w_u * (1 - s(beta * (kl - log-ratio))).
    `losses` holds the desirable losses first, then the undesirable ones.
    """
    # the batch's KL estimate, averaged over the processes of a multi-process run before the clamp (as TRL gathers it)
    kl = average_over_processes((policy_kl - reference_kl).mean().detach()).clamp(min=0)
    chosen_logratios = policy_chosen - reference_chosen
    rejected_logratios = policy_rejected - reference_rejected
    chosen_losses = 1 - torch.sigmoid(beta * (chosen_logratios - kl))
    rejected_losses = 1 - torch.sigmoid(beta * (kl - rejected_logratios))
    losses = torch.cat((desirable_weight * chosen_losses, undesirable_weight * rejected_losses), 0)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach(), kl
