"""ASFT (LLaMA-Factory's `use_asft_loss`, `asft_alpha`, stage sft): the DFT loss plus alpha x KL to a reference.

As LF 0.9.5's `asft_loss_func`, per label token: DFT_i = CE_i * p_i (p_i, the label's probability, detached) and
KL_i = sum_v q_v (log q_v - log p_v) with q the reference model's softmax (the policy's drift away from it);
loss = (sum DFT_i + alpha * sum KL_i) / label tokens. LF takes the mean of each micro-batch; here the sums are
divided by `num_items_in_batch` (the label tokens of the accumulated batch), the same with one micro-batch per
step. The reference: `ref_model` when set; for LoRA the policy with its adapter disabled (LF has no reference
for LoRA and fails); otherwise a frozen copy of the starting model (as LF). Logits of the policy and of the
reference exist one chunk of label positions at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tuneforge.model.lm_parts import resolve_lm_parts
from tuneforge.train.loss import DEFAULT_CHUNK_SIZE, IGNORE_INDEX, label_positions
from tuneforge.train.sharding import is_fsdp2

ASFT_LOG_KEYS = ("dft", "kl")


def asft_sums(logits: torch.Tensor, ref_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[sum of DFT_i, sum of KL_i] over rows of fp32 policy and reference logits [N, V]."""
    logits, ref_logits = logits.float(), ref_logits.float()
    losses = F.cross_entropy(logits, targets, reduction="none")
    dft = (losses * torch.exp(-losses.detach())).sum()
    ref_log_q = F.log_softmax(ref_logits, dim=-1)
    kl = (ref_log_q.exp() * (ref_log_q - F.log_softmax(logits, dim=-1))).sum()
    return torch.stack([dft, kl])


class ASFTObjective:
    """Loss + metrics of one sft batch (the trainer's `objective`)."""

    input_columns = ("input_ids", "labels")

    def __init__(self, alpha: float, ref_model=None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.alpha, self.ref_model, self.chunk_size = alpha, ref_model, chunk_size

    def compute(self, model, inputs, num_items_in_batch=None) -> tuple[torch.Tensor, dict[str, float]]:
        parts, _ = resolve_lm_parts(model, inputs)
        reference = self.ref_model if self.ref_model is not None else model
        ref_parts = resolve_lm_parts(reference, inputs)[0] if self.ref_model is not None else parts
        chunked = parts is not None and ref_parts is not None and not hasattr(model, "module") and not is_fsdp2(model)
        if chunked:
            hidden, targets, keep = label_positions(parts, inputs)
            with torch.no_grad(), self._reference_mode(model):
                ref_hidden = label_positions(ref_parts, inputs)[0]
            sums = self._chunked_sums(model, parts, ref_parts, hidden, ref_hidden, targets)
        else:  # the model's own forward: full logits (wrappers, models outside the chunked-path list)
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            logits = model(**model_inputs, use_cache=False).logits
            with torch.no_grad(), self._reference_mode(model):
                ref_logits = reference(**model_inputs, use_cache=False).logits
            shift_labels = inputs["labels"][:, 1:]
            keep = shift_labels != IGNORE_INDEX
            sums = asft_sums(logits[:, :-1][keep], ref_logits[:, :-1][keep], shift_labels[keep])
        count = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
        if isinstance(count, torch.Tensor):
            count = count.to(sums.device)
        dft, kl = sums[0] / count, sums[1] / count
        return dft + self.alpha * kl, {"dft": float(dft.detach()), "kl": float(kl.detach())}

    def _reference_mode(self, model):
        """The LoRA policy with its adapter disabled when it is its own reference; else nothing to switch."""
        import contextlib

        if self.ref_model is not None:
            return contextlib.nullcontext()
        return getattr(model, "module", model).disable_adapter()

    def _chunked_sums(self, model, parts, ref_parts, hidden, ref_hidden, targets) -> torch.Tensor:
        def head(lm_parts, h):
            logits = lm_parts.head(h)
            cap = lm_parts.final_logit_softcapping
            return torch.tanh(logits / cap) * cap if cap is not None else logits

        def chunk(h, rh, t):
            with torch.no_grad(), self._reference_mode(model):  # a LoRA head: the reference's is without it
                ref_logits = head(ref_parts, rh)
            return asft_sums(head(parts, h), ref_logits, t)

        total = hidden.new_zeros(2, dtype=torch.float32)
        use_checkpoint = torch.is_grad_enabled() and hidden.requires_grad and hidden.shape[0] > self.chunk_size
        for start in range(0, hidden.shape[0], self.chunk_size):
            piece = slice(start, start + self.chunk_size)
            args = (hidden[piece], ref_hidden[piece], targets[piece])
            total = total + (checkpoint(chunk, *args, use_reentrant=False) if use_checkpoint else chunk(*args))
        return total
