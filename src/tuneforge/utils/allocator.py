"""`cpu_allocator`: CPU training under tcmalloc instead of glibc's malloc (PyTorch's own CPU advice).

A CPU training step allocates and frees hundreds of MB of tensors (activations, gradients, the tied
embedding's [vocab x hidden] gradients). glibc gives the large blocks back to the kernel when they are freed
and takes them again the next step, so every step pays page faults and the kernel's zeroing of fresh pages:
~130,000 faults per step of the fact recipe (bench/RESULTS.md, "The allocator"). tcmalloc keeps freed
memory for reuse. It can only replace malloc before the process starts (LD_PRELOAD), so the CLI starts
itself again with it preloaded (`os.execve`: same process id, arguments and file descriptors) right after
the config is read -- the processes of the torchrun it then starts inherit the variable (a process some launcher
started is not replaced: under torch's elastic agent that hangs). PyTorch's
`torch.backends.xeon.run_cpu` launcher does the same with `--enable-tcmalloc`.

Knows nothing of the config: the caller passes the key's value.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

TCMALLOC_FILES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so")
# Any of these in LD_PRELOAD: the user chose an allocator; it is left alone.
PRELOADED_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")
INSTALL_HINT = "Debian / Ubuntu: apt install libtcmalloc-minimal4; conda: conda install gperftools"
# Set in the processes torchrun / accelerate launch / deepspeed start (tuneforge's own torchrun launch included).
LAUNCHER_VARIABLES = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID")
# Device files of a GPU driver: their presence means training may run on a GPU (checked without torch).
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def library_dirs(env: Mapping[str, str]) -> list[Path]:
    """Where a tcmalloc library is looked for: the Python environment's own lib folders, then the system's."""
    dirs = [Path(env[var]) / "lib" for var in ("CONDA_PREFIX", "VIRTUAL_ENV") if env.get(var)]
    dirs.append(Path(sys.prefix) / "lib")
    multiarch = getattr(sys.implementation, "_multiarch", None)
    for root in ("/usr/local/lib", "/usr/lib", "/lib"):
        if multiarch:
            dirs.append(Path(root) / multiarch)
        dirs.append(Path(root))
    dirs.append(Path("/usr/lib64"))
    return dirs


def find_tcmalloc(dirs: Sequence[Path]) -> str | None:
    """The first tcmalloc shared library in `dirs`, as an absolute path; None where there is none."""
    for folder in dirs:
        for name in TCMALLOC_FILES:
            candidate = folder / name
            if candidate.is_file():
                return str(candidate)
    return None


def preloaded_allocator(env: Mapping[str, str]) -> str | None:
    """The allocator library already in LD_PRELOAD, if any."""
    for entry in env.get("LD_PRELOAD", "").replace(":", " ").split():
        if any(name in Path(entry).name for name in PRELOADED_ALLOCATORS):
            return entry
    return None


def gpu_device_present() -> bool:
    return any(os.path.exists(path) for path in GPU_DEVICE_FILES)


def allocator_to_preload(choice: str, env: Mapping[str, str], *, on_cpu: bool,
                         dirs: Sequence[Path] | None = None) -> tuple[str | None, str | None]:
    """(library to preload by starting again, or None; a line for the user, or None) for `cpu_allocator: choice`.

    `auto`: tcmalloc when the run trains on the CPU and the library is installed, a hint when it is not;
    `tcmalloc`: tcmalloc on any device, an error (ValueError) when it is not installed; `system`: nothing.
    An allocator already in LD_PRELOAD is kept whatever the choice; a process a launcher started is never replaced.
    """
    if choice == "system":
        return None, None
    already = preloaded_allocator(env)
    if already:
        return None, f"CPU memory allocator: {Path(already).name} (LD_PRELOAD)"
    if any(name in env for name in LAUNCHER_VARIABLES):
        # a process torchrun / accelerate / deepspeed started: replacing it hangs it under torch's elastic agent
        # (seen with accelerate launch + FSDP2); they inherit LD_PRELOAD from a launcher started under tcmalloc
        return None, ("CPU memory allocator: glibc's malloc in this launched process; for tcmalloc start the "
                      "launcher with LD_PRELOAD=<libtcmalloc_minimal.so.4>" if choice == "tcmalloc" else None)
    if choice == "auto" and not on_cpu:
        return None, None
    library = find_tcmalloc(library_dirs(env) if dirs is None else dirs)
    if library is None:
        if choice == "tcmalloc":
            raise ValueError(f"no tcmalloc library found ({', '.join(TCMALLOC_FILES[:2])}); {INSTALL_HINT}")
        return None, (f"CPU training on glibc's malloc: with tcmalloc installed ({INSTALL_HINT}) each step "
                      "spends far less time in page faults (bench/RESULTS.md; `cpu_allocator: system` hides this)")
    return library, f"CPU memory allocator: tcmalloc ({library})"


def restart_with_preload(library: str, env: Mapping[str, str]) -> None:
    """Replace this process with the same command line, `library` added to LD_PRELOAD. Does not return."""
    new_env = dict(env)
    new_env["LD_PRELOAD"] = " ".join(filter(None, [library, env.get("LD_PRELOAD", "")]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), new_env)
