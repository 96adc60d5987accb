"""GRPO's keys (`stage: grpo`), named and defaulted as TRL 1.x's `GRPOConfig` (LLaMA-Factory has no GRPO).

The sampling keys are the generating ones every stage shares (`max_new_tokens` is the completion budget,
`temperature`, `top_p`, `top_k`); `per_device_train_batch_size` counts prompts, each sampled
`num_generations` times. The keys below are refused with another stage (they would do nothing there).
"""

from dataclasses import dataclass, field
from typing import Any, Literal

from .args import StrList


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class GRPOArguments:
    num_generations: int = _f(8, "GRPO: completions sampled per prompt (a group).")
    reward_funcs: StrList = _f("accuracy", "GRPO: reward functions, comma-separated: accuracy, format, length, "
                                       "`file.py:function`, or `reward_model` (the config's reward_model).")
    reward_weights: StrList | None = _f(None, "GRPO: one weight per reward function, comma-separated (default 1 each).")
    beta: float = _f(0.0, "GRPO: weight of the KL penalty to the reference model (0: no reference model).")
    epsilon: float = _f(0.2, "GRPO: clipping range of the probability ratio (below 1).")
    epsilon_high: float | None = _f(None, "GRPO: upper clipping range (DAPO: 0.28); default epsilon.")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = _f("dapo", "GRPO: how token losses are averaged.")
    scale_rewards: Literal["group", "batch", "none"] = _f("group", "GRPO: divide advantages by the reward std of "
                                                                   "the group, the batch, or not at all (Dr. GRPO).")
    num_iterations: int = _f(1, "GRPO: optimisation passes over each batch of rollouts.")


GRPO_KEYS = tuple(GRPOArguments.__dataclass_fields__)
