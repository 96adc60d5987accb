"""PPO math against hand-computed numbers (train/ppo_core.py)."""

from __future__ import annotations

import math

import pytest
import torch

from tuneforge.train.ppo_core import (
    AdaptiveKLController,
    FixedKLController,
    PPOHyperparams,
    RunningMoments,
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    entropy_from_logits,
    logprobs_of,
    masked_mean,
    masked_var,
    masked_whiten,
    ppo_loss,
    sequence_last_index,
    shape_rewards,
)


def close(actual, expected, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.as_tensor(expected, dtype=torch.float32), atol=tol, rtol=0)


def test_gae_hand_computed_gamma_1():
    # delta2 = 1 - 0.1 = 0.9; A2 = 0.9
    # delta1 = 0 + 0.1 - 0.2 = -0.1; A1 = -0.1 + 0.5 * 0.9 = 0.35
    # delta0 = 0 + 0.2 - 0.5 = -0.3; A0 = -0.3 + 0.5 * 0.35 = -0.125
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    adv, ret = compute_gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.5)
    close(adv, [[-0.125, 0.35, 0.9]])
    close(ret, [[0.375, 0.55, 1.0]])


def test_gae_stops_at_padding_and_uses_gamma():
    # Masked to rewards [0, 2, 0], values [1, 0.5, 0]: the padded third token adds nothing.
    # delta1 = 2 + 0.9 * 0 - 0.5 = 1.5; A1 = 1.5
    # delta0 = 0 + 0.9 * 0.5 - 1 = -0.55; A0 = -0.55 + 0.9 * 0.8 * 1.5 = 0.53
    rewards = torch.tensor([[0.0, 2.0, 9.0]])
    values = torch.tensor([[1.0, 0.5, 7.0]])
    adv, ret = compute_gae(rewards, values, torch.tensor([[1, 1, 0]]), gamma=0.9, lam=0.8)
    close(adv, [[0.53, 1.5, 0.0]])
    close(ret, [[1.53, 2.0, 0.0]])


def test_masked_statistics_and_whitening():
    x = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    close(masked_mean(x, mask), 2.0)
    close(masked_var(x, mask), 1.0)  # unbiased: ((1 + 0 + 1) / 3) * 3 / 2
    close(masked_var(x, mask, unbiased=False), 2.0 / 3.0)
    close(masked_whiten(x, mask), [[-1.0, 0.0], [1.0, 0.0]], tol=1e-5)
    close(masked_whiten(x, mask, shift_mean=False), [[1.0, 2.0], [3.0, 0.0]], tol=1e-5)
    full = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    close(masked_whiten(full, torch.ones(1, 4)), (full - 2.5) / math.sqrt(5.0 / 3.0), tol=1e-5)


def test_sequence_last_index():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    assert sequence_last_index(mask).tolist() == [2, 0, 1, 0]


def test_shape_rewards_kl_penalty_and_score_at_last_token():
    scores = torch.tensor([2.0, -1.0])
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -1.2, -5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = shape_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    close(kl, [[0.5, 0.0, -1.0], [0.0, 0.2, 0.0]])
    close(rewards, [[-0.05, 0.0, 2.1], [0.0, -1.02, 0.0]])


def test_clipped_policy_loss_known_numbers():
    # ratios 1.5, 0.5, 1.1 with advantages 1, 1, -2 and cliprange 0.2:
    # token0: max(-1.5, -1.2) = -1.2 (clipped); token1: max(-0.5, -0.8) = -0.5; token2: 2.2 either way
    old = torch.zeros(1, 3)
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    loss, clipfrac, approx_kl = clipped_policy_loss(logprobs, old, adv, torch.ones(1, 3), cliprange=0.2)
    close(loss, (-1.2 - 0.5 + 2.2) / 3, tol=1e-5)
    close(clipfrac, 1 / 3)
    close(approx_kl, 0.5 * (logprobs**2).mean(), tol=1e-6)
    # a padded token does not count
    loss2, clipfrac2, _ = clipped_policy_loss(logprobs, old, adv, torch.tensor([[0, 1, 1]]), cliprange=0.2)
    close(loss2, (-0.5 + 2.2) / 2, tol=1e-5)
    close(clipfrac2, 0.0)


def test_clipped_value_loss_known_numbers():
    # token0: V=1 from V_old=0.5 clipped to 0.7; return 1 -> max(0, 0.09) = 0.09 (clipped)
    # token1: V=0, V_old=0 -> (0 - 1)^2 = 1
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.5, 0.0]])
    returns = torch.tensor([[1.0, 1.0]])
    loss, clipfrac = clipped_value_loss(values, old, returns, torch.ones(1, 2), cliprange_value=0.2)
    close(loss, 0.5 * (0.09 + 1.0) / 2, tol=1e-6)
    close(clipfrac, 0.5)


def test_ppo_loss_combines_with_vf_coef_and_gradients_flow():
    logprobs = torch.tensor([[-1.0, -0.5]], requires_grad=True)
    values = torch.tensor([[0.3, 0.1]], requires_grad=True)
    hp = PPOHyperparams(vf_coef=0.1)
    parts = ppo_loss(logprobs, values, logprobs.detach(), values.detach(), torch.tensor([[1.0, -1.0]]),
                     torch.tensor([[1.0, 0.0]]), torch.ones(1, 2), hp)
    close(parts.policy_loss, 0.0)  # ratio 1: -(1 - 1) / 2
    close(parts.value_loss, 0.5 * (0.49 + 0.01) / 2)
    close(parts.loss, parts.policy_loss + 0.1 * parts.value_loss)
    parts.loss.backward()
    close(logprobs.grad, [[-0.5, 0.5]])  # d(-A * exp(lp - old)) / dlp / 2 tokens
    close(values.grad, [[0.1 * 0.5 * 2 * (0.3 - 1.0) / 2, 0.1 * 0.5 * 2 * 0.1 / 2]])


def test_adaptive_kl_controller_update_rule():
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    # KL far above target: error clipped to +0.2 -> 0.2 * (1 + 0.2 * 100 / 10000)
    assert ctl.update(current_kl=12.0, n_steps=100) == pytest.approx(0.2 * 1.002)
    # 10% above target -> * (1 + 0.1 * 50 / 10000)
    assert ctl.update(current_kl=6.6, n_steps=50) == pytest.approx(0.2 * 1.002 * 1.0005)
    # KL 0: error clipped to -0.2 over a whole horizon -> * 0.8
    assert ctl.update(current_kl=0.0, n_steps=10000) == pytest.approx(0.2 * 1.002 * 1.0005 * 0.8)
    assert FixedKLController(0.3).update(100.0, 10) == 0.3
    with pytest.raises(ValueError, match="ppo_target"):
        AdaptiveKLController(0.2, 0.0, 10000)


def test_running_moments_match_all_scores_seen():
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 2.0, 3.0]))
    moments.update(torch.tensor([4.0, 5.0]))
    assert moments.count == 5
    assert moments.mean == pytest.approx(3.0)
    assert moments.std == pytest.approx(math.sqrt(2.5))
    normalised = RunningMoments().normalise(torch.tensor([1.0, 3.0]))
    close(normalised, [-1 / (math.sqrt(2) + 1e-6), 1 / (math.sqrt(2) + 1e-6)], tol=1e-5)
    single = RunningMoments()
    single.update(torch.tensor([7.0]))  # one score: no spread yet, std stays 1
    assert (single.mean, single.std) == (7.0, 1.0)


def test_entropy_and_logprobs():
    uniform = torch.zeros(2, 3, 4)
    close(entropy_from_logits(uniform), torch.full((2, 3), math.log(4.0)), tol=1e-6)
    peaked = torch.tensor([[[100.0, 0.0, 0.0]]])
    close(entropy_from_logits(peaked), [[0.0]], tol=1e-5)
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[0, 4, 2], [1, 1, 3]])
    expected = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    close(logprobs_of(logits, ids), expected)
