"""`tuneforge train` under torchrun, launched the way LLaMA-Factory launches it.

`FORCE_TORCHRUN=1`, or more than one visible GPU, makes `tuneforge train x.yaml` re-execute itself as
`python -m torch.distributed.run ... -m tuneforge train x.yaml`. The environment variables mean what they
mean for `llamafactory-cli train`: NNODES, NODE_RANK, NPROC_PER_NODE, MASTER_ADDR, MASTER_PORT, and for
elastic runs RDZV_ID with MIN_NNODES / MAX_NNODES and MAX_RESTARTS. A process torchrun started (LOCAL_RANK
set) never launches again; a plain `torchrun ... -m tuneforge train x.yaml` works the same way.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from tuneforge.errors import ConfigError
from tuneforge.utils.distributed import free_port
from tuneforge.utils.env import env_enabled



def _positive(environ: Mapping[str, str], name: str, default: str) -> str:
    value = environ.get(name, default)
    if not value.isdigit() or int(value) < (0 if name in ("NODE_RANK", "MAX_RESTARTS") else 1):
        raise ConfigError(f"environment variable {name}={value!r}: expected a whole number"
                          f"{'' if name in ('NODE_RANK', 'MAX_RESTARTS') else ' >= 1'}")
    return value


def torchrun_command(train_args: Sequence[str], environ: Mapping[str, str], device_count: int) -> list[str] | None:
    """The torchrun command line that runs `tuneforge train <train_args>`, or None to run in this process."""
    if "LOCAL_RANK" in environ:  # already one of torchrun's processes
        return None
    forced = env_enabled("FORCE_TORCHRUN", environ)
    if not forced and device_count <= 1:
        return None
    nnodes = _positive(environ, "NNODES", "1")
    nproc = _positive(environ, "NPROC_PER_NODE", str(max(device_count, 1)))
    master_addr = environ.get("MASTER_ADDR", "127.0.0.1")
    master_port = _positive(environ, "MASTER_PORT", str(free_port()))
    command = [sys.executable, "-m", "torch.distributed.run"]
    if environ.get("RDZV_ID"):  # elastic: nodes may join and leave between MIN_NNODES and MAX_NNODES
        if environ.get("MIN_NNODES") and environ.get("MAX_NNODES"):
            nnodes = f"{_positive(environ, 'MIN_NNODES', '1')}:{_positive(environ, 'MAX_NNODES', '1')}"
        command += ["--nnodes", nnodes, "--nproc-per-node", nproc, "--rdzv-id", environ["RDZV_ID"],
                    "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{master_addr}:{master_port}",
                    "--max-restarts", _positive(environ, "MAX_RESTARTS", "0")]
    else:
        command += ["--nnodes", nnodes, "--node-rank", _positive(environ, "NODE_RANK", "0"),
                    "--nproc-per-node", nproc, "--master-addr", master_addr, "--master-port", master_port]
    return [*command, "-m", "tuneforge", "train", *train_args]


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
