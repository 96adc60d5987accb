"""PPO's forward over rollouts: prompt + response pairs packed into one padding-free row, the LM head and
the value head only at response positions, and NEFTune noise for the update's forwards."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from tuneforge.errors import ConfigError
from tuneforge.train.ppo_core import entropy_from_logits, logprobs_of
from tuneforge.train.reward_sources import pack_sequences


@dataclass
class PackedResponses:
    """Prompt + response pairs packed into one row; `index[b, r]` is the position that predicts response token r."""

    input_ids: torch.Tensor     # [1, T]
    position_ids: torch.Tensor  # [1, T], restarting at 0 per sequence
    index: torch.Tensor         # [B, R]
    tokens: torch.Tensor        # [B, R] response ids (0 on padding)
    mask: torch.Tensor          # [B, R] float, 1 on response tokens
    lengths: torch.Tensor       # [1, T] float, the length of the sequence each token belongs to

    @classmethod
    def build(cls, prompts, responses, device) -> "PackedResponses":
        input_ids, position_ids = pack_sequences(prompts, responses, device)
        width = max(len(r) for r in responses)
        index = torch.zeros(len(responses), width, dtype=torch.long)
        tokens = torch.zeros(len(responses), width, dtype=torch.long)
        mask = torch.zeros(len(responses), width)
        lengths = []
        offset = 0
        for row, (prompt, response) in enumerate(zip(prompts, responses)):
            start = offset + len(prompt) - 1  # the last prompt token predicts the first response token
            index[row, : len(response)] = torch.arange(start, start + len(response))
            tokens[row, : len(response)] = torch.tensor(response)
            mask[row, : len(response)] = 1.0
            offset += len(prompt) + len(response)
            lengths += [float(len(prompt) + len(response))] * (len(prompt) + len(response))
        return cls(input_ids, position_ids, index.to(device), tokens.to(device), mask.to(device),
                   torch.tensor([lengths], device=device))


def response_forward(model, head, batch: PackedResponses, *, values: bool):
    """(log-probs [B, R], entropy [B, R], values [B, R] or None): the LM head runs only on response positions."""
    hidden = model.hidden_states(batch.input_ids, position_ids=batch.position_ids)[0]
    picked = hidden[batch.index]  # [B, R, H]
    logits = head(picked)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logprobs = logprobs_of(logits, batch.tokens)
    with torch.no_grad():
        entropy = entropy_from_logits(logits.detach())
    value = model.v_head(picked.to(model.v_head.weight.dtype)).squeeze(-1) if values else None
    return logprobs, entropy, value


def output_head(model):
    from tuneforge.model.lm_parts import unwrap_peft

    head = unwrap_peft(model.pretrained_model).get_output_embeddings()
    if head is None:
        raise ConfigError(f"{type(model.pretrained_model).__name__} has no output embeddings (LM head) for PPO")
    return head


@contextmanager
def neftune_noise(model, alpha: float | None, batch: PackedResponses):
    """`neftune_noise_alpha` (NEFTune, as the HF Trainer applies it): uniform noise in [-m, m] added to the
    input embeddings, m = alpha / sqrt(L * hidden_size), for the forwards inside this block. L is the length
    of the sequence the token belongs to, so packing several rollouts into one row does not shrink the noise
    (a padded row of one sequence would get the same m). No-op when alpha is None."""
    if alpha is None:
        yield
        return
    def add_noise(module, inputs, output):
        scale = alpha / torch.sqrt(batch.lengths[..., None] * output.shape[-1])  # [1, T, 1]
        return output + (torch.rand_like(output) * 2 - 1) * scale.to(output.dtype)

    handle = model.pretrained_model.get_input_embeddings().register_forward_hook(add_noise)
    try:
        yield
    finally:
        handle.remove()
