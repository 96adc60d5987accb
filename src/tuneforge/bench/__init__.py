"""Benchmark (`tuneforge bench`): timed training steps, measured GEMM peak, model FLOPs and MFU."""
