"""Whether this machine computes bfloat16 natively: the one rule behind `auto_bf16` and the bf16-on-CPU warning.

On a CPU, PyTorch's bf16 matrix products are fast only with AMX or AVX512-BF16 instructions (oneDNN); without
them (an AVX2 CPU such as the AMD EPYC Zen 3) bf16 is emulated, hundreds of times slower than float32
(bench/RESULTS.md, the header). Read from /proc/cpuinfo's flags, so asking does not import torch.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpuinfo_value(field: str) -> str:
    """The value of the first `field` line of Linux /proc/cpuinfo (`model name`, `flags`, ...); "" where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith(field):
            return line.split(":", 1)[1].strip()
    return ""


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags; empty where /proc/cpuinfo does not exist."""
    return frozenset(cpuinfo_value("flags").split())


def cpu_native_bf16() -> bool:
    """Whether the CPU has bf16 matrix instructions (AMX-BF16 or AVX512-BF16)."""
    return any(flag in cpu_flags() for flag in NATIVE_BF16_CPU_FLAGS)


def native_bf16(on_cpu: bool) -> bool:
    """Whether training on this machine's device (`on_cpu`: the CPU, else the CUDA GPU) computes bf16 natively."""
    if on_cpu:
        return cpu_native_bf16()
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
