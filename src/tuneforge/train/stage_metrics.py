"""A stage's own metrics between two log lines (dpo / kto / rm rewards and log-probs, grpo's rollout statistics).

Each value an objective reports is a micro-batch's mean, optionally with the number of samples it is the mean of
(`(mean, samples)`: kto's chosen and rejected answers differ in number from batch to batch); the logged value is
the run's mean over every micro-batch since the last log line and over every process, as TRL (and so LF) logs
them -- not rank 0's alone.
"""

from __future__ import annotations

from collections.abc import Mapping

from tuneforge.utils.distributed import means_over_processes

SPLITS = ("train", "eval")


class StageMetrics:
    def __init__(self) -> None:
        self._totals: dict[str, dict[str, list[float]]] = {split: {} for split in SPLITS}  # key: [sum, count]

    def add(self, split: str, metrics: Mapping[str, float | tuple[float, int]]) -> None:
        for key, value in metrics.items():
            mean, weight = value if isinstance(value, tuple) else (value, 1)
            total = self._totals[split].setdefault(key, [0.0, 0.0])
            total[0], total[1] = total[0] + float(mean) * weight, total[1] + weight

    def pop_means(self, split: str) -> dict[str, float]:
        """The means since the last call, and start again. A collective in a multi-process run: every rank calls
        it at the same point (the trainer's log, where HF gathers the loss too)."""
        means = means_over_processes(self._totals[split])
        self._totals[split] = {}
        if "rewards/margins" not in means and {"rewards/chosen", "rewards/rejected"} <= means.keys():
            means["rewards/margins"] = means["rewards/chosen"] - means["rewards/rejected"]  # kto: unpaired samples
        return means
