"""GRPO's rollouts: which prompts each optimizer step sees, sampling `num_generations` completions per prompt
with the policy, scoring them with the reward functions, and the group advantages (grpo_core.py).

One optimizer step = `gradient_accumulation_steps` micro-batches of `per_device_train_batch_size` prompts. The
whole step's completions are sampled together (one batched `generate`, left-padded, KV cache), so `dapo` can
normalise by the step's completion tokens and `scale_rewards: batch` sees the step's rewards. With
`num_iterations` N the sampler hands the same step's prompts N times in a row and the rollouts are reused: the
policy is optimised N times on them (the ratio to the sampling policy then moves away from 1 and is clipped).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from tuneforge.train.grpo_core import group_advantages, zero_variance_fraction
from tuneforge.train.rewards import compute_rewards

GENERATION_CHUNK = 64  # sequences per `generate` call


class RepeatedStepSampler(torch.utils.data.Sampler):
    """Indices in (seeded, per-epoch shuffled) order, one optimizer step's prompts at a time, each step's
    `step_size` indices yielded `repeats` times in a row (num_iterations)."""

    def __init__(self, size: int, step_size: int, repeats: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.step_size, self.repeats, self.seed, self.shuffle = size, step_size, repeats, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls it at every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size * self.repeats

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.size))
        for start in range(0, self.size, self.step_size):
            for _ in range(self.repeats):
                yield from order[start:start + self.step_size]


class GRPOCollator:
    """Prompt rows (`prompt` data kind: input_ids = the prompt, labels = the reference answer's ids) -> lists."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, features) -> dict[str, Any]:
        return {"prompt_ids": [list(f["input_ids"]) for f in features],
                "references": self.references([f["labels"] for f in features])}

    def references(self, labels) -> list[str | None]:
        """The reference answer of each row's label ids (None: the row has none)."""
        texts = (self.tokenizer.decode([t for t in ids if t >= 0], skip_special_tokens=True).strip() for ids in labels)
        return [text or None for text in texts]


@dataclass
class StepRollouts:
    """One optimizer step's rollouts, split into its micro-batches; reused `num_iterations` times."""

    micro_batches: list[dict[str, Any]]
    completion_tokens: int
    key: tuple = ()
    uses: int = 0
    stats: dict[str, float] = field(default_factory=dict)


class RolloutMaker:
    """Samples, scores and turns rewards into advantages for one step's micro-batches of prompts."""

    def __init__(self, tokenizer, reward_functions, reward_weights, *, num_generations: int, num_iterations: int,
                 scale_rewards: str, generate_kwargs: dict, stop_ids, reward_model=None) -> None:
        self.tokenizer = tokenizer
        self.functions, self.weights = list(reward_functions), list(reward_weights)
        self.num_generations, self.num_iterations = num_generations, num_iterations
        self.scale_rewards = scale_rewards
        self.generate_kwargs = generate_kwargs
        self.stop_ids = [int(i) for i in stop_ids]
        self.reward_model = reward_model  # ReferenceModelReward among the functions, fed the token ids
        self.cache: StepRollouts | None = None

    def for_step(self, model, batches: list[dict[str, Any]]) -> StepRollouts:
        key = tuple(tuple(map(tuple, b["prompt_ids"])) for b in batches)
        if self.cache is not None and self.cache.key == key and self.cache.uses < self.num_iterations:
            self.cache.uses += 1
            return self.cache
        self.cache = self._make(model, batches)
        self.cache.key, self.cache.uses = key, 1
        return self.cache

    def _make(self, model, batches) -> StepRollouts:
        g = self.num_generations
        prompts = [p for b in batches for p in b["prompt_ids"] for _ in range(g)]
        references = [r for b in batches for r in b["references"] for _ in range(g)]
        started = time.perf_counter()
        completions = self.sample(model, prompts)
        seconds = time.perf_counter() - started
        prompt_texts = [text for b in batches for p in b["prompt_ids"]  # decoded once, repeated per completion
                        for text in [self.tokenizer.decode(p, skip_special_tokens=True)] * g]
        texts = [self.tokenizer.decode(c, skip_special_tokens=True) for c in completions]
        if self.reward_model is not None:
            self.reward_model.ids = (prompts, completions)
        totals, per_function = compute_rewards(self.functions, self.weights, prompt_texts, texts, references)
        rewards = torch.tensor(totals, dtype=torch.float32)
        advantages = group_advantages(rewards, g, self.scale_rewards)
        tokens = sum(map(len, completions))
        stats = {"reward": float(rewards.mean()),
                 "reward_std": float(rewards.view(-1, g).std(dim=1).mean()),
                 "zero_std_frac": zero_variance_fraction(rewards, g),
                 "completion_length": tokens / len(completions),
                 "truncated_frac": sum(1 for c in completions if not c or c[-1] not in self.stop_ids) / len(completions),
                 "gen_tokens_per_s": tokens / max(seconds, 1e-9)}
        stats.update({f"rewards/{name}": sum(values) / len(values) for name, values in per_function.items()})
        micro, start = [], 0
        for b in batches:
            end = start + len(b["prompt_ids"]) * g
            micro.append({"prompt_ids": prompts[start:end], "completion_ids": completions[start:end],
                          "advantages": advantages[start:end], "accumulation": len(batches),
                          "memo": SimpleNamespace(old_logps=None, ref_logps=None),  # filled by the first pass
                          "sample": (prompt_texts[start], texts[start], references[start])})
            start = end
        return StepRollouts(micro, tokens, stats=stats)

    @torch.no_grad()
    def sample(self, model, prompts: list[list[int]]) -> list[list[int]]:
        """One completion per prompt (sampled with the generating keys), cut after its first stop token."""
        was_training = model.training
        model.eval()
        out: list[list[int]] = []
        try:
            for start in range(0, len(prompts), GENERATION_CHUNK):
                out += self._generate(model, prompts[start:start + GENERATION_CHUNK])
        finally:
            model.train(was_training)
        return out

    def _generate(self, model, prompts):
        return generate_left_padded(model.generate, prompts, self.tokenizer.pad_token_id, self.stop_ids,
                                    next(model.parameters()).device, self.generate_kwargs)


def generate_left_padded(generate, prompts: list[list[int]], pad_id: int | None, stop_ids: list[int], device,
                         generate_kwargs: dict) -> list[list[int]]:
    """`generate` (a model's) on left-padded prompts, so every completion starts in the same column; each
    completion cut after its first stop token, which it keeps (the rollouts of ppo and grpo)."""
    pad = pad_id if pad_id is not None else stop_ids[0]
    width = max(map(len, prompts))
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt):] = 1
    generated = generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=True,
                         eos_token_id=stop_ids, pad_token_id=pad, **generate_kwargs)
    completions = []
    for row in generated[:, width:].tolist():
        stop = next((i for i, t in enumerate(row) if t in stop_ids), None)
        completions.append(row if stop is None else row[: stop + 1])
    return completions


class ReferenceModelReward:
    """`reward_funcs: reward_model`: the score of the config's `reward_model` (train/reward_sources.py) for each
    prompt + completion, read from the token ids the rollout maker sets before scoring."""

    def __init__(self, source) -> None:
        self.source = source
        self.ids: tuple[list, list] | None = None

    def __call__(self, prompts, completions, references) -> list[float]:
        prompt_ids, completion_ids = self.ids
        return [float(x) for x in self.source.score(prompt_ids, completion_ids)]
