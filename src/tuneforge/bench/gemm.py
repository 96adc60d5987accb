"""Measured matmul peak of this machine: the denominator of the benchmark's MFU.

A vendor's datasheet peak means little on a shared 2-core CPU; what a training step can reach is
what `torch.matmul` reaches on square matrices with the current thread count. The result is cached
in `$TUNEFORGE_CACHE/gemm_peak.json`, keyed by device, torch version, threads and dtype, so only
the first benchmark on a machine pays the ~2 s it takes.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

CACHE_FILE = "gemm_peak.json"


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    from tuneforge.utils.hardware import cpuinfo_value

    model = cpuinfo_value("model name")
    return model or platform.processor() or platform.machine()


def cache_key(dtype_name: str) -> str:
    import torch

    device = "cuda" if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()} threads"
    return f"{device_name()} | {device} | torch {torch.__version__} | {dtype_name}"


def measure_gemm_gflops(dtype_name: str = "float32", size: int = 1024, min_seconds: float = 0.6) -> float:
    """Best GFLOP/s of `size x size @ size x size` in `dtype_name` over repeated timed batches."""
    import torch

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        size = max(size, 8192)  # small GEMMs do not fill a GPU
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    flops = 2.0 * size**3

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    torch.matmul(a, b)  # first call: kernel selection, AMX tile config, clocks
    sync()
    first = time.perf_counter() - start
    if first > min_seconds:  # an emulated dtype (bf16 without hardware support) is this slow
        return flops / first / 1e9
    best = 0.0
    reps = max(1, int(0.1 / max(first, 1e-6)))  # batches of ~0.1 s
    deadline = time.perf_counter() + min_seconds
    while True:
        start = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        sync()
        best = max(best, reps * flops / (time.perf_counter() - start) / 1e9)
        if time.perf_counter() > deadline:
            return best


def gemm_peak_gflops(dtype_name: str, cache_dir: Path | None = None, *, refresh: bool = False) -> float:
    """Cached measured peak (GFLOP/s) for `dtype_name` on this device and thread count;
    `refresh` measures again and keeps the higher of the two."""
    if cache_dir is None:
        from tuneforge.model.demo import cache_root

        cache_dir = cache_root()
    path = Path(cache_dir) / CACHE_FILE
    key = cache_key(dtype_name)
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    cached = table.get(key) if isinstance(table.get(key), (int, float)) else None
    if not refresh and cached is not None:
        return float(cached)
    # Another process can only slow a measurement down: the highest one is the machine's peak.
    value = max(round(measure_gemm_gflops(dtype_name), 1), float(cached or 0.0))
    table[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
    os.replace(tmp, path)  # concurrent benchmarks never see a half-written file
    return value
