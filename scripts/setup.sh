#!/usr/bin/env bash
# Create .venv and install tuneforge into it. Idempotent: a second run only checks.
#
# torch is installed FIRST and pinned, because a bare `torch` requirement with no torch present pulls
# a multi-GB CUDA build. On a GPU machine, install the torch build you want into .venv before
# running this script (or set TUNEFORGE_TORCH_SPEC, e.g. "torch==2.13.0") and it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TUNEFORGE_TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# pip repeats one harmless warning per package for index locations this machine does not have.
quiet_pip() { "${PIP[@]}" "$@" 2> >(grep -v "^WARNING: Location" >&2); }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  quiet_pip install "$TORCH_SPEC"
fi
echo "[setup] installing tuneforge (editable) and its dependencies"
quiet_pip install -e ".[dev,webui,api,metrics,tensorboard,swanlab,badam,adam-mini,qlora]"
# GaLore / APOLLO without dependency resolution (it could fetch another torch); their bitsandbytes dependency
# (for their 8-bit variants) comes with the qlora extra above.
quiet_pip install --no-deps galore-torch apollo-torch
# DeepSpeed without its own dependency resolution (it would fetch another torch); its few pure-python needs
# by name. On a CPU it runs ZeRO-2/3 over gloo (tests/test_deepspeed.py); its CPU ops compile on first use.
quiet_pip install --no-deps "deepspeed==0.19.8"
quiet_pip install einops hjson msgpack ninja py-cpuinfo
# Ray Train for `USE_RAY=1` / `ray_num_workers` (tests/test_ray.py runs 2 CPU workers)
quiet_pip install "ray[train]>=2.40"

# torchvision/torchaudio from PyPI are CUDA builds that break `import transformers` on a CPU box.
if .venv/bin/python -c "import torchvision" 2>/dev/null; then :; else
  if .venv/bin/python -m pip show torchvision >/dev/null 2>&1; then
    echo "[setup] removing a broken torchvision (it prevents transformers from importing)"
    "${PIP[@]}" uninstall -y torchvision
  fi
fi
# tcmalloc: CPU training steps spend far less time in page faults than under glibc's malloc (bench/RESULTS.md,
# "The allocator"); `tuneforge train` preloads it by itself when it is installed (`cpu_allocator: auto`).
# Best effort: only where apt-get runs as root; elsewhere `tuneforge train` prints how to install it.
if ! ldconfig -p 2>/dev/null | grep -q "libtcmalloc"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing tcmalloc (libtcmalloc-minimal4) for faster CPU training"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1; } ||
      echo "[setup] could not install libtcmalloc-minimal4: CPU training runs on glibc's malloc"
  fi
fi
.venv/bin/tuneforge env
