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
from tuneforge.train.loss import DEFAULT_CHUNK_SIZE, IGNORE_INDEX, head_logits, in_one_head_call, label_positions
from tuneforge.train.sharding import through_wrapper

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
        inner = getattr(model, "module", model)  # DDP, FSDP1 and DeepSpeed wrap the model; FSDP2 shards it in place
        parts, _ = resolve_lm_parts(inner, inputs)
        ref_parts = resolve_lm_parts(self.ref_model, inputs)[0] if self.ref_model is not None else parts
        if parts is not None and ref_parts is not None:
            def label_sums(**batch):  # label rows only, also as a wrapper's forward (its own work around it runs)
                hidden, targets, keep = label_positions(parts, batch)
                with torch.no_grad(), self._reference_mode(inner):
                    ref_hidden = label_positions(ref_parts, batch)[0]
                return self._chunked_sums(inner, parts, ref_parts, hidden, ref_hidden, targets), keep

            sums, keep = through_wrapper(model, inner, label_sums, inputs)
        else:  # the model's own forward: full logits (models outside the chunked-path list)
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            logits = model(**model_inputs, use_cache=False).logits
            with torch.no_grad(), self._reference_mode(inner):
                reference = model if self.ref_model is None else self.ref_model
                ref_logits = reference(**model_inputs, use_cache=False).logits
            shift_labels = inputs["labels"][:, 1:]
            keep = shift_labels != IGNORE_INDEX
            sums = asft_sums(logits[:, :-1][keep], ref_logits[:, :-1][keep], shift_labels[keep])
        count = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
        if isinstance(count, torch.Tensor):
            count = count.to(sums.device)
        dft, kl = sums[0] / count, sums[1] / count
        return dft + self.alpha * kl, {"dft": float(dft.detach()), "kl": float(kl.detach())}

    def _reference_mode(self, inner):
        """The LoRA policy with its adapter disabled when it is its own reference; else nothing to switch."""
        import contextlib

        return contextlib.nullcontext() if self.ref_model is not None else inner.disable_adapter()

    def _chunked_sums(self, inner, parts, ref_parts, hidden, ref_hidden, targets) -> torch.Tensor:
        """[sum DFT_i, sum KL_i] over the label rows, `chunk_size` rows of policy and reference logits at a time;
        the loop runs as one call of the policy's head (an FSDP2-sharded head gathers once: loss.in_one_head_call)."""
        use_checkpoint = torch.is_grad_enabled() and hidden.requires_grad and hidden.shape[0] > self.chunk_size

        def chunks(head_forward, rows):
            ref_head = head_forward if ref_parts is parts else ref_parts.head

            def chunk(h, rh, t):
                with torch.no_grad(), self._reference_mode(inner):  # a LoRA head: the reference's is without it
                    ref_logits = head_logits(ref_head, rh, ref_parts.final_logit_softcapping)
                return asft_sums(head_logits(head_forward, h, parts.final_logit_softcapping), ref_logits, t)

            total = rows.new_zeros(2, dtype=torch.float32)
            for start in range(0, rows.shape[0], self.chunk_size):
                piece = slice(start, start + self.chunk_size)
                args = (rows[piece], ref_hidden[piece], targets[piece])
                total = total + (checkpoint(chunk, *args, use_reentrant=False) if use_checkpoint else chunk(*args))
            return total

        return in_one_head_call(parts.head, chunks, hidden)
