"""LF v1's `batching_strategy`: how the samples of a step become micro-batches.

- `normal`: `per_device_train_batch_size` samples per micro-batch, padded (v0's `packing: false`);
- `padding_free`: the same samples, concatenated into one row (tuneforge's default for sft);
- `dynamic_batching` / `dynamic_padding_free`: micro-batches sized by a token budget of `cutoff_len` x
  `per_device_train_batch_size` -- counted as padded tokens (longest sample x samples) or as the sum of the
  sample lengths -- filled greedily in shuffled order (data/token_batches.py).
Unset: `packing` decides, as in LF v0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError

TOKEN_BUDGET_STRATEGIES = ("dynamic_batching", "dynamic_padding_free")


@dataclass(frozen=True)
class BatchingArguments:
    batching_strategy: Literal["normal", "padding_free", "dynamic_batching", "dynamic_padding_free"] | None = field(
        default=None, metadata={"help": "LF v1: normal (padded) | padding_free | dynamic_batching | "
                                        "dynamic_padding_free (micro-batches of cutoff_len x batch size tokens)."})

    @property
    def token_budget(self) -> bool:
        return self.batching_strategy in TOKEN_BUDGET_STRATEGIES


def check_batching(v: Any) -> None:
    """`batching_strategy` against the keys it would contradict (part of `validate.check_consistency`)."""
    strategy = v["batching_strategy"]
    if strategy is None:
        return
    where = v.where("batching_strategy")
    if v.given("packing") or v["neat_packing"]:
        raise ConfigError(f"{where}: set either `batching_strategy` (LF v1) or `packing` / `neat_packing` (LF v0), "
                          "not both")
    if v["stage"] != "sft":
        raise ConfigError(f"{where}: `batching_strategy` forms sft micro-batches; stage is `{v['stage']}`")
    if strategy not in TOKEN_BUDGET_STRATEGIES:
        return
    if v["streaming"]:
        raise ConfigError(f"{where}: `{strategy}` sizes micro-batches by sample length, which a streamed dataset "
                          "does not give in advance; remove `streaming: true`")
    if strategy == "dynamic_batching" and v["do_train"] and (v["max_steps"] is None or v["max_steps"] <= 0):
        raise ConfigError(f"{v.where('max_steps', 'batching_strategy')}: `dynamic_batching` needs `max_steps` (LF "
                          "v1 requires it: the number of micro-batches per epoch depends on the sample lengths)")
