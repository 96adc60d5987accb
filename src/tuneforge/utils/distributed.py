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
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def free_port() -> int:
    """A TCP port nobody listens on right now (for a launcher's MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
