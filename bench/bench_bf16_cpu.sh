#!/bin/bash
# Float32 vs bf16 training steps of the fact recipe, side by side, before (a worktree of BEFORE, default e0846ad:
# attention under CPU bf16 autocast in bf16) and now; each variant in turn, ROUNDS times (bench/RESULTS.md section 17).
#   bash bench/bench_bf16_cpu.sh [BEFORE] [ROUNDS]      # from the repository root, on a quiet machine
set -u
before=${1:-e0846ad}; rounds=${2:-2}
root=$(pwd); out=$root/bench/results/cpu_bf16_speed_ab; old=$(mktemp -d)/before
mkdir -p "$out"
git worktree add -q "$old" "$before"
trap 'git worktree remove --force "$old"' EXIT
for round in $(seq "$rounds"); do
  for run in before_fp32 before_bf16 now_bf16 now_fp32; do
    case $run in before_*) src=$old/src;; *) src=$root/src;; esac
    case $run in *_bf16) extra=bf16=true;; *) extra=;; esac
    printf '%s round %s: ' "$run" "$round"
    PYTHONPATH=$src .venv/bin/python -m tuneforge bench "$old/examples/memorize_facts.yaml" $extra --steps 8 --warmup 2 \
      --out "$out/${run}_$round.json" 2>&1 | grep -E "s/step|real tokens/s" | tr -s ' \n' ' '
    echo
  done
done
