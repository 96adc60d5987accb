"""`torch_compile: true`: compile each decoder layer in place ("regional" compilation).

transformers' own `torch_compile` wraps the whole model, but tuneforge's loss calls the decoder
and the LM head directly (train/loss.py), which would bypass that wrapper and silently run
uncompiled. Compiling the repeated decoder layer instead works with every loss path, compiles
one graph that all layers reuse (minutes less than the whole model), and keeps module names and
state-dict keys unchanged (`nn.Module.compile` compiles in place).

Measured on the 2-core CPU (bench/RESULTS.md): ~45-55 s of compilation for no speed-up on the
demo model, so it stays off by default, as in LLaMA-Factory.
"""

from __future__ import annotations

import logging

from torch import nn

logger = logging.getLogger("tuneforge")


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The model's list of decoder layers (`model.model.layers` behind any peft wrapper)."""
    from tuneforge.model.lm_parts import unwrap_peft

    base = unwrap_peft(model)
    decoder = getattr(base, "base_model", None) or getattr(base, "model", None)
    layers = getattr(decoder, "layers", None)
    return layers if isinstance(layers, nn.ModuleList) and len(layers) > 0 else None


def compile_decoder_layers(model: nn.Module, *, backend: str | None = None, mode: str | None = None) -> int:
    """Compile every decoder layer in place; returns how many (0 when none were found)."""
    layers = decoder_layers(model)
    if layers is None:
        logger.warning("torch_compile: no decoder layers found on %s; training runs uncompiled", type(model).__name__)
        return 0
    for layer in layers:
        # dynamic: padding-free batches change length every step.
        layer.compile(backend=backend or "inductor", mode=mode, dynamic=True)
    logger.info("torch_compile: %d decoder layers compiled (%s); the first steps include compilation",
                len(layers), backend or "inductor")
    return len(layers)


def compile_regionally(model: nn.Module, training_args):
    """Compile the decoder layers ourselves; the Trainer gets a copy of the training arguments with its
    whole-model compile switched off (the chunked loss would bypass a compiled whole model)."""
    import copy

    compile_decoder_layers(model, backend=training_args.torch_compile_backend, mode=training_args.torch_compile_mode)
    training_args = copy.copy(training_args)
    training_args.torch_compile, training_args.torch_compile_backend, training_args.torch_compile_mode = False, None, None
    return training_args
