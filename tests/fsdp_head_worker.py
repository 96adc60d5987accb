"""Run by tests/test_fsdp.py under `torch.distributed.run --nproc_per_node 2` (gloo), argument `fsdp2` or `fsdp1`:
the chunked label-only loss with a tied LM head, the ranks having different numbers of label rows and so different
numbers of chunks. FSDP2: embedding and head sharded as one group (as accelerate does for tied weights); FSDP1
(`use_orig_params`, as accelerate sets it): both in the root unit, the layer in its own. Rank 0 prints one JSON line:
each rank's loss and the gathered gradients next to an unsharded reference's."""

from __future__ import annotations

import copy
import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from tuneforge.train.loss import chunked_cross_entropy_sum
from tuneforge.train.sharding import through_wrapper

VOCAB, WIDTH, CHUNK = 40, 8, 4
ROWS = (11, 3)  # label rows per rank: 3 chunks of 4 on rank 0, 1 on rank 1


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(x)


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.layer = Layer()
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # replaced by the loss below, as the trainer does
        return self.layer(self.embed(ids))


def loss_sum(wrapper: nn.Module, model: TiedLM, ids: torch.Tensor, targets: torch.Tensor,
             softcap: float | None) -> torch.Tensor:
    def forward(ids):
        return chunked_cross_entropy_sum(model.layer(model.embed(ids)), targets, model.head, chunk_size=CHUNK,
                                         final_logit_softcapping=softcap)

    return through_wrapper(wrapper, model, forward, {"ids": ids})


def shard(model: TiedLM, version: str) -> nn.Module:
    """The module to call: FSDP2 shards `model` in place; FSDP1 wraps it."""
    if version == "fsdp2":
        fully_shard([model.embed, model.head])
        fully_shard(model.layer)
        fully_shard(model)
        return model
    return FullyShardedDataParallel(model, auto_wrap_policy=ModuleWrapPolicy({Layer}), use_orig_params=True,
                                    device_id=torch.device("cpu"))


def full_gradients(wrapper: nn.Module, model: TiedLM, version: str) -> dict[str, torch.Tensor]:
    if version == "fsdp2":
        return {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    with FullyShardedDataParallel.summon_full_params(wrapper, with_grads=True):
        return {name.replace("_fsdp_wrapped_module.", ""): p.grad.clone() for name, p in model.named_parameters()}


def main(version: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    reference = TiedLM()
    data = [(torch.randint(0, VOCAB, (n,)), torch.randint(0, VOCAB, (n,))) for n in ROWS]
    result = {}
    for softcap in (None, 30.0):  # a plain head (LinearCrossEntropySum) and the checkpointed chunk loop
        sharded = copy.deepcopy(reference)
        sharded.head.weight = sharded.embed.weight
        wrapper = shard(sharded, version)
        ids, targets = data[rank]
        loss = loss_sum(wrapper, sharded, ids, targets, softcap)
        loss.backward()
        grads = full_gradients(wrapper, sharded, version)

        plain = copy.deepcopy(reference)
        plain.head.weight = plain.embed.weight
        plain_losses = [loss_sum(plain, plain, i, t, softcap) for i, t in data]
        (sum(plain_losses) / len(data)).backward()  # FSDP averages the gradients over the ranks
        losses = [torch.zeros(()) for _ in data]
        dist.all_gather(losses, loss.detach())
        result[str(softcap)] = {
            "loss_diff": max(abs(float(a) - float(b.detach())) for a, b in zip(losses, plain_losses)),
            "grad_diff": max(float((grads[n] - p.grad).abs().max()) for n, p in plain.named_parameters()),
        }
    if rank == 0:
        print(json.dumps(result), flush=True)
    dist.barrier()
    # No teardown: destroying the gloo group (or the interpreter's own exit) sometimes aborted a rank under load
    # ("terminate called without an active exception") after the results were out.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
