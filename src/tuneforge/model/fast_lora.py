"""One autograd node per LoRA linear layer instead of peft's five.

peft computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as separate ops: two extra
autograd nodes for the adapter GEMMs plus an elementwise multiply and add, each with a backward,
in every adapted layer (210 layers for all-linear LoRA on SmolLM2-135M). `LoraLinearFunction`
does the same math with the scaling folded into `addmm` (`out += s * (x A^T) B^T`) and a
hand-written backward that reuses `g B` for both the input and the A gradient and orders the
rank-r products the way MKL runs them fastest; the frozen base weight never gets a gradient.

Only plain LoRA takes this path: no dropout, no DoRA/variants, a plain `nn.Linear` base (not a
quantized one), one active adapter, all tensors in one dtype, no autocast. Anything else -- and
disabled or merged adapters -- runs peft's own forward unchanged. The modules stay peft modules
(same class hierarchy, same state dict), so saving, loading and merging are peft's.
"""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn


class LoraLinearFunction(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T with W, b frozen; gradients for x, A and B."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        rows = x.reshape(-1, x.shape[-1])
        down = rows @ lora_a.t()  # [N, r]
        out = torch.mm(rows, weight.t()) if bias is None else torch.addmm(bias, rows, weight.t())
        out.addmm_(down, lora_b.t(), alpha=scaling)
        ctx.save_for_backward(rows, down, weight, lora_a, lora_b)
        ctx.scaling, ctx.x_shape = scaling, x.shape
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        rows, down, weight, lora_a, lora_b = ctx.saved_tensors
        scaling = ctx.scaling
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
        # The rank-r products are computed with the token dimension N as the *wide* output
        # ([r, N] / [r, out] results, then transposed views): MKL runs e.g. g @ B ([N, out] @
        # [out, r]) 2.5x slower than (B^T @ g^T)^T on this CPU (bench/RESULTS.md).
        grad_down_t = lora_b.t() @ grad_rows.t()  # [r, N], unscaled
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(grad_rows, weight).addmm_(grad_down_t.t(), lora_a, alpha=scaling).view(ctx.x_shape)
        if ctx.needs_input_grad[3]:
            grad_a = (grad_down_t @ rows).mul_(scaling)
        if ctx.needs_input_grad[4]:
            grad_b = (down.t() @ grad_rows).mul_(scaling).t().contiguous()
        return grad_x, None, None, grad_a, grad_b, None


class FastLoraLinear(PeftLoraLinear):
    """peft's LoRA `Linear` whose forward takes `LoraLinearFunction` when it can."""

    def _fast_parts(self, x: torch.Tensor, args, kwargs):
        if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        name = self.active_adapters[0]
        if name not in self.lora_A or name in self.lora_variant:
            return None
        if not isinstance(self.lora_dropout[name], nn.Identity):
            return None
        base = self.base_layer
        weight, bias = base.weight, base.bias
        lora_a, lora_b = self.lora_A[name].weight, self.lora_B[name].weight
        if weight.requires_grad or (bias is not None and bias.requires_grad):
            return None
        if not (x.dtype == weight.dtype == lora_a.dtype == lora_b.dtype):
            return None
        if torch.is_autocast_enabled(x.device.type):
            return None
        return weight, bias, lora_a, lora_b, self.scaling[name]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        parts = self._fast_parts(x, args, kwargs)
        if parts is None:
            return super().forward(x, *args, **kwargs)
        return LoraLinearFunction.apply(x, *parts)


def enable_fast_lora(model: nn.Module) -> int:
    """Switch every plain peft LoRA `Linear` of `model` to `FastLoraLinear`; returns how many.

    Layers whose base is not a plain `nn.Linear` (bitsandbytes, GPTQ, ...) or that use
    fan_in_fan_out weights keep their class.
    """
    switched = 0
    for module in model.modules():
        if type(module) is PeftLoraLinear and type(module.base_layer) is nn.Linear and not module.fan_in_fan_out:
            module.__class__ = FastLoraLinear
            switched += 1
    return switched
