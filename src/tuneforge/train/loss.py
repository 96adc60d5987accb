"""Causal-LM loss computed only at label positions, LM head + cross-entropy in chunks.

The usual `model(input_ids, labels=labels)` materialises logits for every position of the batch
([tokens x vocab], in fp32 for the loss) -- for a 150k vocabulary that is often the largest tensor
of the whole step. Here the decoder runs once, the hidden states at positions whose (shifted) label
is not -100 are gathered, and `logits = head(h)` + cross-entropy run `chunk_size` rows at a time,
so only one chunk's logits exist at a time. A plain `nn.Linear` head takes `LinearCrossEntropySum`
(gradients computed chunk by chunk in the forward, one [chunk x vocab] buffer in all); a LoRA head
or logit soft-capping takes autograd per chunk under activation checkpointing.

The math is HF's `ForCausalLMLoss`: fp32 cross-entropy, summed, divided by `num_items_in_batch`
when the Trainer passes it (correct normalisation across gradient accumulation), else by the
number of label tokens.

`weighting` multiplies each token's cross-entropy by a weight detached from the graph, then sums and
normalises the same way (`TokenWeighting`): LLaMA-Factory's `use_dft_loss` (Dynamic Fine-Tuning, LF's
`dft_loss_func`: the probability the model gives the label, `CE_i * exp(-CE_i).detach()`) or `use_eaft_loss`
(LF's `eaft_loss_func`: the entropy of the softmax over the 20 largest logits, divided by 3, to the power
`eaft_alpha`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tuneforge.model.attention import sample_token_count, segment_starts
from tuneforge.model.lm_parts import DECODER_INPUT_KEYS, LMParts
from tuneforge.train.sharding import is_fsdp2, through_wrapper

IGNORE_INDEX = -100
DEFAULT_CHUNK_SIZE = 1024

EAFT_TOP_K = 20  # LF's EAFT: entropy over the 20 largest logits, divided by 3
EAFT_ENTROPY_SCALE = 3.0


@dataclass(frozen=True)
class TokenWeighting:
    """A detached weight per label token: `dft` (LF's use_dft_loss) or `eaft` (use_eaft_loss, `alpha` = eaft_alpha)."""

    kind: str
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("dft", "eaft"):
            raise ValueError(f"token weighting must be dft or eaft, got {self.kind!r}")

    @torch.no_grad()
    def weights(self, logits: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Weights [N] for fp32 `logits` [N, V] and their cross-entropies `losses` [N]."""
        if self.kind == "dft":
            return torch.exp(-losses.detach())
        top = torch.topk(logits.detach(), k=min(EAFT_TOP_K, logits.shape[-1]), dim=-1).values
        log_probs = top - torch.logsumexp(top, dim=-1, keepdim=True)
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
        return torch.pow(entropy / EAFT_ENTROPY_SCALE, self.alpha)


def token_losses_sum(logits: torch.Tensor, targets: torch.Tensor, weighting: TokenWeighting | None = None) -> torch.Tensor:
    """Sum over rows of the fp32 cross-entropy of `logits` [N, V] at `targets` [N]; with `weighting`, each row's
    loss times its detached weight (LF's `_dft_cross_entropy` / `_eaft_cross_entropy` before dividing)."""
    if weighting is None:
        return F.cross_entropy(logits.float(), targets, reduction="sum")
    logits = logits.float()
    losses = F.cross_entropy(logits, targets, reduction="none")
    return (losses * weighting.weights(logits, losses)).sum()


def head_logits(head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """`head(hidden)`, soft-capped as the model's forward does it (Gemma 2's `final_logit_softcapping`): the one
    place every chunk loop over label rows (sft loss and eval, preference log-probs, ASFT) makes its logits."""
    logits = head(hidden)
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


def _chunk_cross_entropy_sum(
    hidden: torch.Tensor, targets: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], softcap: float | None,
    weighting: TokenWeighting | None = None,
) -> torch.Tensor:
    return token_losses_sum(head_logits(head, hidden, softcap), targets, weighting)


class LinearCrossEntropySum(torch.autograd.Function):
    """sum_i CE(hidden[i] W^T + b, targets[i]), chunk by chunk, gradients computed in the forward.

    Per chunk: logits, their log-sum-exp and the loss; then the logits buffer becomes the
    gradient in place (softmax - one-hot) and is multiplied straight into d hidden (and d W, d b
    when they train). Only d hidden [N, H] outlives the chunk: no [N, V] log-softmax is saved for
    backward and nothing is recomputed. Backward only scales the stored gradients. With `weighting`, row i's
    loss and gradient are scaled by its weight, a constant for autograd (the DFT / EAFT losses).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size: int, weighting: TokenWeighting | None = None):
        rows = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # Under bf16 autocast the head's three products (logits, d hidden, d W) run in bf16, as autograd would run
        # a plain head's backward; the explicit casts are made once (the in-place / out= products below are
        # outside autocast's reach). The softmax and the sums stay float32. fp16 autocast keeps the gradient
        # products in float32: they are not scaled by the loss scaler here, and d W, a sum over up to
        # `chunk_size` rows, could pass fp16's range where the scaler would never see why.
        device_type = hidden.device.type
        if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.bfloat16:
            hidden, weight = hidden.to(torch.bfloat16), weight.to(torch.bfloat16)  # no-ops where they are bf16
        for start in range(0, rows, chunk_size):
            h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
            logits = F.linear(h, weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            losses = lse - logits.gather(1, t[:, None]).squeeze(1)
            weights = weighting.weights(logits, losses) if weighting is not None else None  # constants
            total += (losses * weights).sum() if weights is not None else losses.sum()
            grad_logits = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            grad_logits[torch.arange(len(t), device=t.device), t] -= 1.0
            if weights is not None:
                grad_logits.mul_(weights[:, None])
            grad_logits = grad_logits.to(h.dtype)
            if grad_hidden is not None:
                part = grad_hidden[start : start + chunk_size]
                if part.dtype == h.dtype:
                    torch.mm(grad_logits, weight, out=part)
                else:
                    part.copy_(torch.mm(grad_logits, weight))
            if grad_weight is not None:
                if grad_weight.dtype == h.dtype:
                    grad_weight.addmm_(grad_logits.t(), h)
                else:
                    grad_weight += torch.mm(grad_logits.t(), h)
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_total.to(grad_hidden.dtype if grad_hidden is not None else torch.float32)
        return (
            grad_hidden * scale if grad_hidden is not None else None,
            grad_weight * scale if grad_weight is not None else None,
            grad_bias * scale if grad_bias is not None else None,
            None,
            None,
            None,
        )


def chunked_cross_entropy_sum(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Module,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    final_logit_softcapping: float | None = None,
    weighting: TokenWeighting | None = None,
) -> torch.Tensor:
    """Sum of CE(head(hidden[i]), targets[i]) over rows, `chunk_size` rows of logits at a time
    (with `weighting`, each term times its detached weight).

    `hidden` is [N, H] (only rows that have a target), `targets` is [N].
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0  # keeps the graph connected so backward() still works
    if _is_plain_linear(head) and final_logit_softcapping is None and torch.is_grad_enabled():
        return in_one_head_call(head, lambda _, rows: LinearCrossEntropySum.apply(
            rows, head.weight, head.bias, targets, chunk_size, weighting), hidden)
    # One chunk: recomputing its logits in backward would save nothing (backward needs them all
    # at once anyway) and cost a second head GEMM.
    use_checkpoint = torch.is_grad_enabled() and hidden.requires_grad and hidden.shape[0] > chunk_size

    def chunks(head_forward, rows: torch.Tensor) -> torch.Tensor:
        total = None
        for start in range(0, rows.shape[0], chunk_size):
            h, t = rows[start : start + chunk_size], targets[start : start + chunk_size]
            if use_checkpoint:
                # Recompute this chunk's logits in backward instead of keeping them.
                part = checkpoint(_chunk_cross_entropy_sum, h, t, head_forward, final_logit_softcapping, weighting,
                                  use_reentrant=False)
            else:
                part = _chunk_cross_entropy_sum(h, t, head_forward, final_logit_softcapping, weighting)
            total = part if total is None else total + part
        return total

    return in_one_head_call(head, chunks, hidden)


def _is_plain_linear(head: nn.Module) -> bool:
    """`nn.Linear` itself (not a LoRA or quantized layer), also as FSDP2 remade it: `FSDPLinear(FSDPModule, Linear)`."""
    cls = type(head)
    if is_fsdp2(head):
        from torch.distributed.fsdp import FSDPModule

        cls = next(c for c in cls.__mro__ if not issubclass(c, FSDPModule))
    return cls is nn.Linear


def in_one_head_call(head: nn.Module, compute: Callable[[Callable, torch.Tensor], Any], hidden: torch.Tensor) -> Any:
    """`compute(head_forward, hidden)`: a loop over chunks of `hidden` calling `head_forward` on each. FSDP2
    (`fully_shard`) gathers a sharded head's weight around every call of it and hooks its backward to each call's
    outputs: a call per chunk gathers once per chunk, and ranks with different numbers of chunks then disagree on
    the collectives (gloo: "collective mismatch"; in torch 2.11 a chunk recomputed in backward also met the weight
    still sharded). There the whole loop runs as the head's one call, each chunk through the head's own forward
    without the hooks."""
    if not is_fsdp2(head):
        return compute(head, hidden)
    bare_forward = partial(type(head).forward, head)
    return through_wrapper(head, head, lambda hidden: compute(bare_forward, hidden), {"hidden": hidden})


def logits_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None, *, weighting: TokenWeighting | None = None
) -> torch.Tensor:
    """The loss of full logits [B, T, V] against unshifted `labels` [B, T] (the model's own forward), normalised
    as the chunked path: the plain forward's DFT / EAFT loss, equal to LF's `dft_loss_func` / `eaft_loss_func`."""
    shift_labels = labels[:, 1:].to(logits.device)
    keep = shift_labels != IGNORE_INDEX
    return _normalise(token_losses_sum(logits[:, :-1][keep], shift_labels[keep], weighting), keep, num_items_in_batch)


def shifted_label_count(labels: torch.Tensor) -> int:
    """Number of tokens that are predicted: labels after the causal shift that are not -100."""
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


def computed_token_count(inputs: dict[str, Any]) -> int:
    """Tokens the model runs for a batch: the non-pad positions."""
    mask = inputs.get("attention_mask")
    return int(mask.sum()) if mask is not None else inputs["input_ids"].numel()


def real_token_count(inputs: dict[str, Any]) -> int:
    """Tokens of the batch's samples: a prefix a packed row shares counts for every sample that has it."""
    if "attention_mask" not in inputs and "position_ids" in inputs and inputs["input_ids"].shape[0] == 1:
        return sample_token_count(inputs["position_ids"])
    return computed_token_count(inputs)


def chunked_causal_lm_loss(
    parts: LMParts,
    inputs: dict[str, Any],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    num_items_in_batch: torch.Tensor | int | None = None,
    weighting: TokenWeighting | None = None,
) -> torch.Tensor:
    """Mean next-token loss over label tokens (or sum / num_items_in_batch), like HF's default; `weighting`: the
    DFT / EAFT loss (see the module docstring)."""
    hidden, targets, keep = label_positions(parts, inputs)
    loss_sum = chunked_cross_entropy_sum(
        hidden, targets, parts.head, chunk_size=chunk_size, final_logit_softcapping=parts.final_logit_softcapping,
        weighting=weighting,
    )
    return _normalise(loss_sum, keep, num_items_in_batch)


@torch.no_grad()
def chunked_causal_lm_eval(
    parts: LMParts,
    inputs: dict[str, Any],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    num_items_in_batch: torch.Tensor | int | None = None,
    weighting: TokenWeighting | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Evaluation: (the loss of `chunked_causal_lm_loss`, hits, keep). `hits[i]`: the argmax of the logits
    equals the i-th label token (labels in `keep` order); `keep` [B, T-1] marks the shifted label positions.
    Logits exist one chunk at a time, as for the loss."""
    hidden, targets, keep = label_positions(parts, inputs)

    def chunks(head_forward, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss_sum = torch.zeros((), dtype=torch.float32, device=rows.device)
        hits = torch.zeros(targets.shape, dtype=torch.bool, device=rows.device)
        for start in range(0, rows.shape[0], chunk_size):
            logits = head_logits(head_forward, rows[start : start + chunk_size], parts.final_logit_softcapping)
            t = targets[start : start + chunk_size]
            loss_sum += token_losses_sum(logits, t, weighting)
            hits[start : start + chunk_size] = logits.argmax(dim=-1) == t
        return loss_sum, hits

    loss_sum, hits = in_one_head_call(parts.head, chunks, hidden)
    return _normalise(loss_sum, keep, num_items_in_batch), hits, keep


def label_positions(parts: LMParts, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoder once; (hidden states that predict a label [N, H], those labels [N], keep mask [B, T-1])."""
    labels = inputs["labels"]
    decoder_inputs = {k: v for k, v in inputs.items() if k in DECODER_INPUT_KEYS}
    # use_cache=False: with a cache, transformers does not detect packed sequences (see collate.py).
    outputs = parts.decoder(**decoder_inputs, use_cache=False)
    hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
    shift_labels = labels[:, 1:].to(hidden.device)
    keep = shift_labels != IGNORE_INDEX
    return hidden[:, :-1, :][keep], shift_labels[keep], keep


def _normalise(loss_sum: torch.Tensor, keep: torch.Tensor, num_items_in_batch) -> torch.Tensor:
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(loss_sum.device)
        return loss_sum / num_items_in_batch
    return loss_sum / keep.sum().clamp(min=1)


def sample_accuracies(hits: torch.Tensor, keep: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    """Token accuracy of every sample of the batch that has label tokens (LLaMA-Factory's `ComputeAccuracy`:
    per sample, the share of label tokens the argmax predicts). Samples are the rows of a padded batch, or
    the pieces of a packed row (a new one wherever `position_ids` do not go on by one: model/attention.py)."""
    position_ids = inputs.get("position_ids")
    rows, width = keep.shape[0], keep.shape[1] + 1
    if position_ids is None:
        sample = torch.arange(rows, device=keep.device)[:, None].expand(rows, width)
    else:  # one id per sample
        starts = segment_starts(position_ids.to(keep.device)).long()
        sample = starts.flatten().cumsum(0).view(rows, width) - 1
    owner = sample[:, 1:][keep]  # a label belongs to the sample of the token it is
    count = torch.bincount(owner, minlength=int(sample.max()) + 1)
    correct = torch.bincount(owner, weights=hits.float(), minlength=count.numel())
    has_labels = count > 0
    return correct[has_labels] / count[has_labels]
