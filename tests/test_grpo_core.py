"""GRPO's arithmetic (train/grpo_core.py) and reward functions (train/rewards.py) on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from tuneforge.errors import ConfigError
from tuneforge.train.grpo_core import LossSettings, group_advantages, grpo_loss, zero_variance_fraction
from tuneforge.train.rewards import (RewardError, accuracy_reward, answers_match, compute_rewards, extract_answer,
                                     format_reward, load_reward_function)

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])  # two prompts, 4 completions each


def test_group_advantages():
    std = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0, 1)
    expected = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 2
    got = group_advantages(REWARDS, 4)
    assert got[:4].tolist() == pytest.approx([expected[0], expected[1], expected[1], expected[0]])
    assert got[4:].tolist() == [0.0] * 4  # no variance: no signal
    assert group_advantages(REWARDS, 4, "none").tolist() == [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]
    batch_std = REWARDS.std().item()
    assert group_advantages(REWARDS, 4, "batch")[0].item() == pytest.approx(0.5 / (batch_std + 1e-4))
    assert zero_variance_fraction(REWARDS, 4) == 0.5


MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
ADV = torch.tensor([2.0, -1.0])


@pytest.mark.parametrize("loss_type, expected", [
    ("grpo", (-2.0 + 1.0) / 2),                 # per completion: mean of its tokens, then mean
    ("bnpo", (-2.0 * 2 + 1.0 * 3) / 5),          # over all 5 completion tokens
    ("dr_grpo", (-2.0 * 2 + 1.0 * 3) / (2 * 8)),  # / (completions x max_completion_length)
    ("dapo", (-2.0 * 2 + 1.0 * 3) / 10),         # / the tokens of the whole accumulated batch
])
def test_loss_types_on_policy(loss_type, expected):
    logps = torch.full((2, 3), -1.0, requires_grad=True)
    settings = LossSettings(loss_type=loss_type, max_completion_length=8)
    loss, stats = grpo_loss(logps, logps.detach(), None, ADV, MASK, settings, tokens_in_batch=10)
    assert loss.item() == pytest.approx(expected)
    loss.backward()  # on policy the gradient pushes up the log-prob of positive-advantage tokens
    assert (logps.grad[0, :2] < 0).all() and (logps.grad[1] > 0).all() and logps.grad[0, 2] == 0
    assert stats == {"clip_low": 0.0, "clip_high": 0.0, "kl": 0.0}


def test_clipping_is_asymmetric_with_epsilon_high():
    old = torch.zeros(1, 1)
    new = torch.log(torch.tensor([[1.5]]))  # ratio 1.5
    mask, adv = torch.ones(1, 1), torch.tensor([1.0])
    loss, stats = grpo_loss(new, old, None, adv, mask, LossSettings(loss_type="bnpo", epsilon=0.2))
    assert loss.item() == pytest.approx(-1.2) and stats["clip_high"] == 1.0
    loss, _ = grpo_loss(new, old, None, adv, mask, LossSettings(loss_type="bnpo", epsilon=0.2, epsilon_high=0.28))
    assert loss.item() == pytest.approx(-1.28)
    low = torch.log(torch.tensor([[0.5]]))  # ratio 0.5, negative advantage: clipped at 0.8
    loss, stats = grpo_loss(low, old, None, torch.tensor([-1.0]), mask, LossSettings(loss_type="bnpo"))
    assert loss.item() == pytest.approx(0.8) and stats["clip_low"] == 1.0


def test_kl_term_is_zero_when_policy_equals_reference():
    logps = torch.tensor([[-1.0, -2.0]])
    mask, adv = torch.ones(1, 2), torch.tensor([0.0])
    settings = LossSettings(loss_type="bnpo", beta=0.5)
    loss, stats = grpo_loss(logps, logps, logps, adv, mask, settings)
    assert loss.item() == 0.0 and stats["kl"] == 0.0
    ref = logps + 0.1
    loss, stats = grpo_loss(logps, logps, ref, adv, mask, settings)
    kl = math.exp(0.1) - 0.1 - 1
    assert stats["kl"] == pytest.approx(kl, rel=1e-5) and loss.item() == pytest.approx(0.5 * kl, rel=1e-5)  # float32
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(logps, logps, None, adv, mask, settings)


@pytest.mark.parametrize("text, answer", [
    ("so the result is \\boxed{42}.", "42"),
    ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("<think>2+3</think><answer> 5 </answer>", "5"),
    ("小明有 3 个苹果，又买了 5 个，所以答案是 8。", "8"),
    ("答案：１２", "12"),
    ("The answer is 3/4.", "3/4"),
    ("I have 3 apples and 5 pears, 8 fruits in all", "8"),
    ("11 pencils, 12 cards. The answer is   ", "12"),  # a stated answer with nothing after it: the last number
])
def test_answers_are_extracted(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize("answer, reference, same", [
    ("1,234", "1234", True), ("50%", "0.5", True), ("3/4", "0.75", True), ("0.75", "3/4", True),
    ("42 apples", "42", True), ("Paris.", "paris", True), ("7", "8", False), ("Lyon", "Paris", False),
])
def test_answers_match(answer, reference, same):
    assert answers_match(answer, reference) is same


def test_builtin_rewards():
    completions = ["<think>x</think><answer>8</answer>", "it is 9", "<answer>8</answer>"]
    assert accuracy_reward(None, completions, ["8", "8", None]) == [1.0, 0.0, 0.0]  # no reference: 0
    assert format_reward(None, completions, [None] * 3) == [1.0, 0.0, 0.0]


def test_user_reward_function_by_path_and_errors(tmp_path):
    (tmp_path / "my_rewards.py").write_text(
        "def short(prompts, completions, references):\n    return [1.0 if len(c) < 5 else 0.0 for c in completions]\n"
        "def broken(prompts, completions, references):\n    return [1 / (len(c) - 1) for c in completions]\n"
        "def text(prompts, completions, references):\n    return ['good' for c in completions]\n"
        "def too_few(prompts, completions, references):\n    return [1.0]\n")
    functions = [load_reward_function("my_rewards.py:short", tmp_path), load_reward_function("accuracy", tmp_path)]
    totals, each = compute_rewards(functions, [0.5, 2.0], ["q", "q"], ["8", "a long answer: 7"], ["8", "8"])
    assert each == {"my_rewards.py:short": [1.0, 0.0], "accuracy": [1.0, 0.0]} and totals == [2.5, 0.0]
    for spec, message in [("broken", "raised ZeroDivisionError: division by zero (sample 0: prompt 'q', completion "
                                     "'8', reference None)"),  # the completion it fails on, found alone
                          ("text", "returned 'good' for completion 0 ('8'); expected a finite number"),
                          ("too_few", "returned 1 values for 2 completions")]:
        with pytest.raises(RewardError, match=f"`my_rewards.py:{spec}` " + message.replace("(", r"\(").replace(")", r"\)")):
            compute_rewards([load_reward_function(f"my_rewards.py:{spec}", tmp_path)], [1.0], ["q", "q"], ["8", "9"],
                            [None, None])
    with pytest.raises(ConfigError, match="file missing.py not found"):
        load_reward_function("missing.py:f", tmp_path)
    with pytest.raises(ConfigError, match="has no function `nothing`"):
        load_reward_function("my_rewards.py:nothing", tmp_path)
    with pytest.raises(ConfigError, match="neither a built-in reward"):
        load_reward_function("accurcy", tmp_path)
