"""Whether this machine computes bfloat16 natively: the one rule behind `auto_bf16` and the bf16-on-CPU warning.

On a CPU, PyTorch's bf16 matrix products are fast only with AMX or AVX512-BF16 instructions (oneDNN); without
them (an AVX2 CPU such as the AMD EPYC Zen 3) bf16 is emulated, hundreds of times slower than float32
(bench/RESULTS.md, the header). Read from /proc/cpuinfo's flags, so asking does not import torch.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where that file does not exist."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_native_bf16() -> bool:
    """Whether the CPU has bf16 matrix instructions (AMX-BF16 or AVX512-BF16)."""
    return any(flag in cpu_flags() for flag in NATIVE_BF16_CPU_FLAGS)


def native_bf16(on_cpu: bool) -> bool:
    """Whether training on this machine's device (`on_cpu`: the CPU, else the CUDA GPU) computes bf16 natively."""
    if on_cpu:
        return cpu_native_bf16()
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
