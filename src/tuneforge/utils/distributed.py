"""Which process this is in a multi-process run (torchrun / accelerate launch), and agreeing across them.

Read from the launcher's environment (RANK, LOCAL_RANK, WORLD_SIZE), so it works before the process group
exists; `any_rank` needs the group (it exists once the HF Trainer has set up its devices).
"""

from __future__ import annotations

import os
import socket


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_main_process() -> bool:
    """Rank 0 of the whole run (the one that writes the run's files); True in a single process."""
    return rank() == 0


def any_rank(flag: bool) -> bool:
    """True on every process when it is True on at least one (e.g. a stop request seen by one rank),
    so that all processes take the same branch and no collective call is left waiting."""
    if not _several_processes():
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def means_over_processes(totals: dict[str, list[float]]) -> dict[str, float]:
    """`{key: sum / count}` of `{key: [sum, count]}` added over the processes of a multi-process run (a stage's
    metrics: the run's mean, not rank 0's alone). A collective when several processes run: every rank calls it at
    the same point. A key some ranks lack (nothing to average there this time) averages the ranks that have it."""
    if _several_processes():
        import torch
        import torch.distributed as dist

        key_lists: list = [None] * dist.get_world_size()
        dist.all_gather_object(key_lists, sorted(totals))
        keys = sorted(set().union(*key_lists))
        both = torch.tensor([[totals.get(k, (0.0, 0.0))[i] for k in keys] for i in (0, 1)], dtype=torch.float64,
                            device=_collective_device())
        dist.all_reduce(both)
        totals = {key: [float(both[0, i]), float(both[1, i])] for i, key in enumerate(keys)}
    return {key: total / count for key, (total, count) in totals.items() if count}


def average_over_processes(value):
    """A detached tensor averaged over the processes of a multi-process run (every rank calls it at the same point);
    itself in one process. KTO's KL reference point, as TRL (and so LF) gathers it."""
    if not _several_processes():
        return value
    import torch.distributed as dist

    total = value.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def _several_processes() -> bool:
    """A process group of 2 or more processes exists (the collectives here are needed only then)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device():
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def free_port() -> int:
    """A TCP port nobody listens on right now (for a launcher's MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
