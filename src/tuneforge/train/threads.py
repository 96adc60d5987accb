"""Thread policy: train on the cores other processes leave free.

torch's OpenMP threads spin while they wait for each other. On a 2-core machine with a second
busy process (the web UI chatting, a test run, another job), a 2-thread training step then
waits for a core the other process holds: measured 68 real tokens/s with 2 threads vs 130 with
1 thread for the demo LoRA run (225 with 2 threads on a quiet machine; bench/RESULTS.md).

`ThreadPolicy` looks every few seconds at how much CPU the *other* processes used
(all busy CPU time minus this process's own) and sets torch's thread count to the cores they
leave free (at least 1, at most the count training started with). The HF Trainer drives it through
`ThreadPolicyCallback`; PPO's own loop calls it after every rollout and update. A user's `OMP_NUM_THREADS`
keeps the thread count fixed; the web UI sets it as a maximum for its jobs together with
`TUNEFORGE_ADAPT_THREADS=1`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from transformers import TrainerCallback

logger = logging.getLogger("tuneforge")

# (busy CPU seconds of the whole machine, CPU seconds of this process, wall seconds)
Sample = tuple[float, float, float]


def sample_cpu() -> Sample:
    import psutil

    times = psutil.cpu_times()
    busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
    own = psutil.Process().cpu_times()
    return busy, own.user + own.system, time.monotonic()


def threads_for_free_cores(max_threads: int, others_busy_cores: float) -> int:
    """Threads to use when other processes keep `others_busy_cores` cores busy."""
    return max(1, min(max_threads, max_threads - int(others_busy_cores + 0.5)))


def fixed_by_user() -> bool:
    return "OMP_NUM_THREADS" in os.environ and os.environ.get("TUNEFORGE_ADAPT_THREADS") != "1"


class ThreadPolicy:
    """The policy for any training loop: `start(device)` once, `on_step()` after each piece of work
    (cheap: it decides at most every `every_seconds`), `stop()` at the end (restores the thread count).
    The HF Trainer drives it through `ThreadPolicyCallback`; loops of our own (PPO) call it directly."""

    def __init__(self, *, every_seconds: float = 10.0, sample: Callable[[], Sample] = sample_cpu,
                 set_threads: Callable[[int], None] | None = None, get_threads: Callable[[], int] | None = None) -> None:
        import torch

        self.every_seconds = every_seconds
        self.sample = sample
        self.set_threads = set_threads or torch.set_num_threads
        self.get_threads = get_threads or torch.get_num_threads
        self.enabled = not fixed_by_user()
        self.max_threads = 0
        self.last: Sample | None = None

    def start(self, device=None) -> None:
        if self.enabled and device is not None and getattr(device, "type", "cpu") != "cpu":
            self.enabled = False  # GPU runs: the CPU threads only feed the GPU
        if self.enabled:
            self.max_threads = self.get_threads()
            self.enabled = self.max_threads > 1
            self.last = self.sample()

    def on_step(self) -> None:
        if not self.enabled or self.last is None:
            return
        now = self.sample()
        busy0, own0, wall0 = self.last
        busy1, own1, wall1 = now
        if wall1 - wall0 < self.every_seconds:
            return
        self.last = now
        others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)
        want = threads_for_free_cores(self.max_threads, others)
        current = self.get_threads()
        if want != current:
            self.set_threads(want)
            logger.info("threads: other processes use ~%.1f cores, training now uses %d thread(s) (was %d)",
                        others, want, current)

    def stop(self) -> None:
        if self.enabled and self.max_threads and self.get_threads() != self.max_threads:
            self.set_threads(self.max_threads)


class ThreadPolicyCallback(TrainerCallback):
    """`ThreadPolicy` for the HF Trainer: checked at every optimizer step's end."""

    def __init__(self, **kwargs) -> None:
        self.policy = ThreadPolicy(**kwargs)

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    def on_train_begin(self, args, state, control, **kwargs):
        self.policy.start(getattr(args, "device", None))

    def on_step_end(self, args, state, control, **kwargs):
        self.policy.on_step()

    def on_train_end(self, args, state, control, **kwargs):
        self.policy.stop()
