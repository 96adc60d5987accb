"""Scores from a reward model (a `stage: rm` output): conversation -> the value at its last token.

    scorer = RewardScorer.from_config(cfg)   # model_name_or_path (+ adapter_name_or_path) of an rm run
    scorer.score([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])  # -> float
    scorer.score_batch([conv_a, conv_b])     # -> [float, float], several conversations per forward

A conversation is encoded exactly as in rm training (template `encode_oneturn`: every message before
the last is the prompt, the last message is the answer; eos appended for `efficient_eos` templates;
`cutoff_len` with infer_seqlen), so scores match what the model learnt to rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tuneforge.errors import DataError


def is_reward_model(cfg) -> bool:
    """True when the model (or its last adapter) folder holds a value head, i.e. chat should score."""
    from tuneforge.model.value_head import default_head_dir, find_value_head

    return find_value_head(default_head_dir(cfg.model)) is not None


class RewardScorer:
    """A `ValueHeadModel` + tokenizer + template. Not thread-safe: one call at a time."""

    def __init__(self, model, tokenizer, template, *, system: str | None = None, cutoff_len: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.system = system
        self.cutoff_len = cutoff_len

    @classmethod
    def from_config(cls, cfg) -> RewardScorer:
        from tuneforge.data.templates import template_for
        from tuneforge.model.tokenizer_loading import load_tokenizer
        from tuneforge.model.value_head import load_value_head_model

        tokenizer = load_tokenizer(cfg.model)
        template = template_for(cfg.data, tokenizer)
        template.fix_tokenizer(tokenizer)
        model = load_value_head_model(cfg.model, cfg.finetuning, is_trainable=False)
        return cls(model, tokenizer, template, system=cfg.data.default_system,
                   cutoff_len=cfg.data.cutoff_len)

    def encode(self, messages: Sequence[Any], system: str | None = None, tools: str | None = None) -> list[int]:
        """Token ids of a conversation that ends with the answer to score."""
        from tuneforge.data.encode import infer_seqlen

        messages = list(messages)
        if len(messages) % 2 != 0 or not messages:
            raise DataError(f"a reward model scores a conversation that ends with an assistant answer; "
                            f"got {len(messages)} message(s) (expected user, assistant[, user, assistant ...])")
        prompt_ids, answer_ids = self.template.encode_oneturn(self.tokenizer, messages, system=system or self.system,
                                                              tools=tools)
        answer_ids = list(answer_ids)
        if getattr(self.template, "efficient_eos", False):
            answer_ids.append(self.tokenizer.eos_token_id)
        if self.cutoff_len:
            source_len, target_len = infer_seqlen(len(prompt_ids), len(answer_ids), int(self.cutoff_len))
            prompt_ids, answer_ids = list(prompt_ids)[:source_len], answer_ids[:target_len]
        return list(prompt_ids) + answer_ids

    def score(self, messages: Sequence[Any], system: str | None = None, tools: str | None = None) -> float:
        return self.score_ids([self.encode(messages, system, tools)])[0]

    def score_batch(self, conversations: Sequence[Sequence[Any]], *, system: str | None = None,
                    batch_size: int = 8) -> list[float]:
        """Scores of many conversations; `batch_size` of them share one padding-free forward."""
        ids = [self.encode(conversation, system) for conversation in conversations]
        scores: list[float] = []
        for start in range(0, len(ids), batch_size):
            scores.extend(self.score_ids(ids[start : start + batch_size]))
        return scores

    @torch.no_grad()
    def score_ids(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Value at the last token of each id sequence (packed into one row, position_ids restarting)."""
        if not sequences:
            return []
        device = self.model.v_head.weight.device
        input_ids = torch.tensor([[t for seq in sequences for t in seq]], dtype=torch.long, device=device)
        position_ids = torch.tensor([[p for seq in sequences for p in range(len(seq))]], dtype=torch.long, device=device)
        return [float(v) for v in self.model.sequence_values(input_ids, position_ids=position_ids)]
