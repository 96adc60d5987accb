"""Preference losses against hand-computed values (math.log / exp written out in the comments)."""

from __future__ import annotations

import pytest
import torch

from tuneforge.data.encode import kl_answers
from tuneforge.train import pref_losses as pl


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_sigmoid_with_label_smoothing():
    # h = (pi_c - pi_r) - (ref_c - ref_r) = (-1 + 2) - 0 = 1; beta h = 0.1
    losses, chosen, rejected = pl.dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1)
    assert losses.item() == pytest.approx(0.6443966600735709)  # log(1 + e^-0.1)
    assert chosen.item() == pytest.approx(0.05) and rejected.item() == pytest.approx(-0.05)
    smoothed, _, _ = pl.dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1, label_smoothing=0.1)
    # 0.9 * log(1 + e^-0.1) + 0.1 * log(1 + e^0.1)
    assert smoothed.item() == pytest.approx(0.6543966600735709)


def test_dpo_hinge_and_ipo():
    hinge, _, _ = pl.dpo_loss(t(-1.0, 0.0), t(-2.0, -20.0), t(-1.5, 0.0), t(-1.5, 0.0), beta=0.1, loss_type="hinge")
    assert hinge.tolist() == pytest.approx([0.9, 0.0])  # relu(1 - 0.1 * 1), relu(1 - 0.1 * 20)
    ipo, _, _ = pl.dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1, loss_type="ipo")
    assert ipo.item() == pytest.approx(16.0)  # (1 - 1 / 0.2)^2
    with pytest.raises(ValueError, match="unknown DPO loss type 'bco'"):
        pl.dpo_loss(t(0.0), t(0.0), t(0.0), t(0.0), beta=0.1, loss_type="bco")


def test_simpo_margin_gamma():
    # beta (avg_c - avg_r) - gamma = 2 * 0.5 - 0.5 = 0.5 -> log(1 + e^-0.5)
    assert pl.simpo_loss(t(-0.5), t(-1.0), beta=2.0, gamma=0.5).item() == pytest.approx(0.47407698418010663)
    # no gamma: log(1 + e^-1)
    assert pl.simpo_loss(t(-0.5), t(-1.0), beta=2.0, gamma=0.0).item() == pytest.approx(0.31326168751822286)


def test_orpo_odds_ratio():
    # p_c = 0.5 (odds 1), p_r = 0.25 (odds 1/3): log odds ratio = log 3; -log sigmoid(log 3) = log(4/3)
    losses, sft, odds = pl.orpo_loss(t(0.5).log(), t(0.25).log(), beta=0.1)
    assert sft.item() == pytest.approx(0.6931471805599453)
    assert odds.item() == pytest.approx(0.28768207245178085)
    assert losses.item() == pytest.approx(0.6931471805599453 + 0.1 * 0.28768207245178085)
    _, chosen, rejected, extra = pl.reference_free_loss(t(0.5).log(), t(0.25).log(), loss_type="orpo", beta=0.1,
                                                        simpo_gamma=0.5)
    assert chosen.item() == pytest.approx(0.1 * -0.6931471805599453)
    assert set(extra) == {"sft_loss", "odds_ratio_loss"}


def test_kto_weights_and_kl():
    # KL = mean([-5 + 6, -4 + 6]) = 1.5; desirable log-ratio 1, undesirable -1
    losses, chosen, rejected, kl = pl.kto_loss(
        t(-1.0), t(-3.0), t(-5.0, -4.0), t(-2.0), t(-2.0), t(-6.0, -6.0),
        beta=0.1, desirable_weight=2.0, undesirable_weight=0.5)
    assert kl.item() == pytest.approx(1.5)
    # 2 * (1 - sigmoid(0.1 * (1 - 1.5))), 0.5 * (1 - sigmoid(0.1 * (1.5 + 1)))
    assert losses.tolist() == pytest.approx([2 * (1 - 0.48750260351578967), 0.5 * (1 - 0.5621765008857981)])
    assert (chosen.item(), rejected.item()) == pytest.approx((0.1, -0.1))
    # the KL estimate never goes below 0 and carries no gradient
    policy_kl = t(-7.0).requires_grad_()
    _, _, _, kl = pl.kto_loss(t(-1.0), t(-3.0), policy_kl, t(-2.0), t(-2.0), t(-6.0), beta=0.1)
    assert kl.item() == 0.0 and not kl.requires_grad


def test_pairwise_reward_loss():
    # mean(log(1 + e^-1), log(1 + e^1))
    assert pl.pairwise_reward_loss(t(2.0, 0.0), t(1.0, 1.0)).item() == pytest.approx(0.8132616875182228)


def test_kl_answers_shift_like_llama_factory():
    assert kl_answers(["a", "b", "c"]) == ["c", "a", "b"]
    assert kl_answers(list("abcde"), batch_size=2) == ["b", "a", "d", "c", "e"]


def test_kto_pair_estimates_each_halfs_kl_from_the_other():
    # log-ratios r_c = [1, 0], r_r = [-1, 0]; KL_c = max(mean r_c, 0) = 0.5, KL_r = max(-0.5, 0) = 0; beta 0.5
    policy_chosen = t(-1.0, -2.0).requires_grad_()
    losses, chosen, rejected = pl.dpo_loss(policy_chosen, t(-3.0, -2.0), t(-2.0, -2.0), t(-2.0, -2.0),
                                           beta=0.5, loss_type="kto_pair")
    # chosen: 1 - s(0.5 (1 - 0)), 1 - s(0.5 (0 - 0)); rejected: 1 - s(0.5 (0.5 + 1)), 1 - s(0.5 (0.5 - 0))
    assert losses.tolist() == pytest.approx([0.3775406687981454, 0.5, 0.320821300824607, 0.43782349911420193])
    assert chosen.tolist() == pytest.approx([0.5, 0.0]) and rejected.tolist() == pytest.approx([-0.5, 0.0])
    # the KL terms are not detached (TRL): the rejected half's losses move with the chosen log-probs
    losses[2:].sum().backward()
    assert policy_chosen.grad.abs().sum() > 0


def test_bco_loss_and_its_running_reward_baseline():
    # rewards beta r: chosen 0.5 (1 * 0.5), rejected -0.5; delta 0.25:
    # -log s(0.5 - 0.25) - log s(-(-0.5 - 0.25)) = log(1 + e^-0.25) + log(1 + e^-0.75)
    loss = pl.bco_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5, delta=0.25)
    assert loss.item() == pytest.approx(0.9628104259937437)
    baseline = pl.RewardBaseline()  # the mean of every batch's mean reward so far, the current one included
    assert [baseline.update(torch.tensor(x)) for x in (1.0, 3.0, -1.0, 5.0)] == pytest.approx([1.0, 2.0, 1.0, 2.0])
