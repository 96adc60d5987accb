#!/bin/bash
# One-command GPU check (issue 14): LoRA, QLoRA and full SFT speed and memory on a random-weight
# Qwen2-0.5B shape (bench/make_qwen2_model.py), bf16, cutoff 1024, the shipped bilingual demo data,
# each through `tuneforge bench` (tokens/s, s/step, peak CUDA memory); then the LoRA case under
# torchrun on all visible GPUs, under DeepSpeed ZeRO-2, full under ZeRO-3, LoRA under FSDP2 and FSDP1 (full in one process);
# short ZeRO-3 (LoRA) and FSDP1 (full, LF's accelerate config) trainings whose saves are loaded back with plain
# transformers/peft (bench/gpu_check_load.py); and whether the LLaMA-Factory side by side can run.
#
#   bash bench/gpu_check.sh                 # on the GPU machine (device tool: carry .gpu)
#   GPU_CHECK_TINY=1 PYTHON=.venv/bin/python bash bench/gpu_check.sh   # logic check on a CPU (~2 min;
#                                          move .gpu/whl aside first: its wheels are for the GPU box's Python 3.12)
#
# Every part runs under its own `timeout` and inside one overall budget (GPU_CHECK_BUDGET s, default
# 480); a failed or skipped part is reported and the next one runs. The table at the end and
# $OUT/gpu_check.json (bench/results/ when $OUT is unset) hold each case's status and bench result;
# the logs go to $OUT/gpu_check_logs/.
# The machine has no internet: wheels it lacks are installed from .gpu/whl (bench/gpu_check_prepare.sh
# fills it, and .gpu/tok with the demo model's tokenizer files) into $GPU_CHECK_SITE (default /tmp/site).
# Knobs: PYTHON (python3), GPU_CHECK_TINY (0), GPU_CHECK_STEPS / GPU_CHECK_WARMUP (10 / 3),
# GPU_CHECK_BATCH (the configs' 32), GPU_CHECK_TOKENIZER (.gpu/tok), GPU_CHECK_WORK (/tmp/gpu_check),
# GPU_CHECK_ONLY (case names to run, e.g. "fsdp1 fsdp2"; default all).
set -u
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
PY=${PYTHON:-python3}
TINY=${GPU_CHECK_TINY:-0}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
SITE=${GPU_CHECK_SITE:-/tmp/site}
TOK=${GPU_CHECK_TOKENIZER:-.gpu/tok}
BUDGET=${GPU_CHECK_BUDGET:-480}
RESULTS=${OUT:-$REPO/bench/results}
if [ "$TINY" = 1 ]; then
  STEPS=${GPU_CHECK_STEPS:-2}; WARMUP=${GPU_CHECK_WARMUP:-1}
  EXTRA=(bf16=false "per_device_train_batch_size=${GPU_CHECK_BATCH:-4}")
  JSON_NAME=gpu_check_tiny.json
else
  STEPS=${GPU_CHECK_STEPS:-10}; WARMUP=${GPU_CHECK_WARMUP:-3}
  EXTRA=(); [ -n "${GPU_CHECK_BATCH:-}" ] && EXTRA=("per_device_train_batch_size=$GPU_CHECK_BATCH")
  JSON_NAME=gpu_check.json
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export TUNEFORGE_CACHE=${TUNEFORGE_CACHE:-/tmp/tfcache} TOKENIZERS_PARALLELISM=false
rm -rf "$WORK"; mkdir -p "$WORK/status" "$RESULTS" "$RESULTS/gpu_check_logs"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[gpu_check +$(elapsed)s] $*"; }

# status NAME STATUS [REASON]: one line per case, read by the summary at the end
status() { printf '%s\t%s\n' "$2" "${3:-}" > "$WORK/status/$1"; say "$1: $2${3:+ -- $3}"; }

# the seconds a part may take: its own limit, cut to what is left of the budget (0: none left)
allowance() {
  local left=$(( BUDGET - $(elapsed) - 10 ))
  if [ "$left" -lt 20 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

# why a run failed: its last error-looking line, else its last line
why() { { grep -E "Error|error:|Killed|out of memory" "$1" | tail -1; tail -1 "$1"; } | head -1 | cut -c1-220; }

# run NAME LIMIT CMD...: output to $WORK/NAME.log; status ok / failed / timeout / skipped (budget)
run() {
  local name=$1 limit; limit=$(allowance "$2"); shift 2
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [ "$name" != model ] && [[ " $GPU_CHECK_ONLY " != *" $name "* ]]; then
    status "$name" skipped "not in GPU_CHECK_ONLY"; return 2
  fi
  if [ "$limit" = 0 ]; then status "$name" skipped "out of the ${BUDGET}s budget"; return 2; fi
  say "$name: start (limit ${limit}s)"
  local t0=$(date +%s) rc
  timeout -k 10 "$limit" "$@" > "$WORK/$name.log" 2>&1; rc=$?
  cp "$WORK/$name.log" "$RESULTS/gpu_check_logs/" 2>/dev/null
  echo "$(( $(date +%s) - t0 ))" > "$WORK/status/$name.seconds"
  if [ $rc = 0 ]; then status "$name" ok; return 0; fi
  if [ $rc = 124 ] || [ $rc = 137 ]; then status "$name" timeout "killed after ${limit}s: $(tail -1 "$WORK/$name.log" | cut -c1-160)"
  else status "$name" failed "rc $rc: $(why "$WORK/$name.log")"; fi
  tail -n 8 "$WORK/$name.log" | cut -c1-300 | sed 's/^/    | /'
  return 1
}

# ---- 0. install the carried wheels (the exact command of the brief, then one wheel at a time) ----
if ls .gpu/whl/*.whl > /dev/null 2>&1; then
  say "install: $(ls .gpu/whl/*.whl | wc -l) wheels from .gpu/whl into $SITE"
  mkdir -p "$SITE"
  if ! timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .gpu/whl/*.whl > "$WORK/install.log" 2>&1; then
    say "install: all at once failed ($(tail -1 "$WORK/install.log" | cut -c1-160)); one at a time"
    for whl in .gpu/whl/*.whl; do
      timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$whl" >> "$WORK/install.log" 2>&1 || say "install: $(basename "$whl") not installed"
    done
  fi
  export PYTHONPATH=$SITE:$REPO/src
else
  say "install: no .gpu/whl/*.whl (nothing carried); using $PY's own packages"
  export PYTHONPATH=$REPO/src
fi

# ---- 1. the environment ----
# (the JSON is the probe's last line: importing deepspeed prints a warning on stdout)
timeout 90 "$PY" - > "$WORK/env.raw" 2> "$WORK/env.log" <<'PY'
import importlib, json, platform, os
info = {"python": platform.python_version(), "cores": os.cpu_count()}
for name in ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "bitsandbytes",
             "deepspeed", "llamafactory", "flash_attn", "tuneforge"):
    try:
        module = importlib.import_module(name)
        info[name] = getattr(module, "__version__", "?")
    except Exception as exc:  # noqa: BLE001 - report, never stop
        info[name] = f"missing ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
try:
    import torch
    info["cuda"] = torch.version.cuda
    info["gpus"] = torch.cuda.device_count()
    info["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        info["gpu_memory_gib"] = round(total / 2**30, 1)
except Exception as exc:  # noqa: BLE001
    info["gpus"] = 0
    info["torch_error"] = str(exc)[:200]
print(json.dumps(info))
PY
tail -n 1 "$WORK/env.raw" > "$WORK/env.json"
if [ -s "$WORK/env.json" ]; then say "env: $(cat "$WORK/env.json")"; else say "env: probe failed: $(tail -3 "$WORK/env.log")"; fi
envget() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ''))" "$WORK/env.json" "$1" 2>/dev/null; }
NGPU=$(envget gpus); NGPU=${NGPU:-0}
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv,noheader \
  | sed 's/^/    nvidia-smi: /'
[ "$NGPU" = 0 ] && [ "$TINY" != 1 ] && say "WARNING: torch sees no GPU; the cases run on the CPU and will be slow"

# ---- 2. the model: Qwen2-0.5B shape, random weights, the carried tokenizer ----
MODEL=$WORK/qwen2-0.5b-random
MODEL_ARGS=(--tokenizer "$TOK"); [ "$TINY" = 1 ] && MODEL_ARGS+=(--tiny)
[ -f "$TOK/tokenizer.json" ] || say "WARNING: $TOK/tokenizer.json missing (carry .gpu/tok; bench/gpu_check_prepare.sh fills it)"
run model 150 "$PY" bench/make_qwen2_model.py "$MODEL" "${MODEL_ARGS[@]}"
MODEL_OK=$?

bench() {  # bench NAME LIMIT CONFIG [overrides...]
  local name=$1 limit=$2 config=$3; shift 3
  if [ $MODEL_OK != 0 ]; then status "$name" skipped "no model (see the model line)"; return; fi
  run "$name" "$limit" "$PY" -m tuneforge bench "$config" "model_name_or_path=$MODEL" "${EXTRA[@]}" "$@" \
    --steps "$STEPS" --warmup "$WARMUP" --out "$WORK/$name.json"
}

# ---- 3. LoRA, QLoRA, full SFT ----
bench lora 110 bench/configs/gpu_lora.yaml
if [ "$TINY" = 1 ]; then
  status qlora skipped "tiny CPU mode (bitsandbytes 4-bit needs the GPU)"
elif ! timeout 60 "$PY" -c "import bitsandbytes" > "$WORK/bnb.log" 2>&1; then
  status qlora skipped "bitsandbytes does not import: $(grep -v '^\s' "$WORK/bnb.log" | tail -1 | cut -c1-160)"
else
  bench qlora 120 bench/configs/gpu_qlora.yaml
fi
bench full 110 bench/configs/gpu_full.yaml

# ---- 4. DDP: the LoRA case under torchrun on all visible GPUs (HF Trainer's DDP; 1 GPU: 1 process) ----
# `tuneforge bench` runs the same trainer as `tuneforge train` (checked under torchrun on a CPU), and
# gives numbers comparable with the plain LoRA row. With N > 1 processes each rank reports its own
# tokens/s (multiply by N) and the ranks write the same --out file.
NPROC=$NGPU; [ "$NPROC" -ge 1 ] 2>/dev/null || NPROC=1
if [ $MODEL_OK != 0 ]; then
  status ddp skipped "no model"
else
  run ddp 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m tuneforge bench \
    bench/configs/gpu_lora.yaml "model_name_or_path=$MODEL" "${EXTRA[@]}" \
    --steps "$STEPS" --warmup "$WARMUP" --out "$WORK/ddp.json"
fi
echo "$NPROC" > "$WORK/status/ddp.nproc"

# ---- 5. DeepSpeed ZeRO-2: the LoRA case under torchrun with LF's examples/deepspeed/ds_z2_config.json ----
# (the deepspeed package is not in the GPU image: carry a wheel built with `pip wheel deepspeed --no-deps`)
if [ $MODEL_OK != 0 ]; then
  status deepspeed skipped "no model"
elif ! "$PY" -c "import deepspeed" > "$WORK/ds_import.log" 2>&1; then
  status deepspeed skipped "deepspeed does not import: $(grep -v '^\s' "$WORK/ds_import.log" | tail -1 | cut -c1-160)"
else
  run deepspeed 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m tuneforge bench \
    bench/configs/gpu_lora.yaml "model_name_or_path=$MODEL" "${EXTRA[@]}" \
    deepspeed=examples/deepspeed/ds_z2_config.json --steps "$STEPS" --warmup "$WARMUP" --out "$WORK/deepspeed.json"
fi

# ---- 6. ZeRO-3 and FSDP: bench cases, then short trainings whose saves are loaded without the engine ----
# (issue 14: "a loadable result"); FSDP1 is GPU-only in accelerate, FSDP2 also runs on the CPU tests.
if [ $MODEL_OK != 0 ]; then
  for name in zero3 fsdp1 fsdp2 save_zero3 save_fsdp1; do status "$name" skipped "no model"; done
else
  DIST=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m tuneforge)
  if "$PY" -c "import deepspeed" > /dev/null 2>&1; then
    run zero3 120 "${DIST[@]}" bench bench/configs/gpu_full.yaml "model_name_or_path=$MODEL" "${EXTRA[@]}" \
      deepspeed=examples/deepspeed/ds_z3_config.json --steps "$STEPS" --warmup "$WARMUP" --out "$WORK/zero3.json"
    run save_zero3 150 bash -c "${DIST[*]} train bench/configs/gpu_lora.yaml model_name_or_path=$MODEL ${EXTRA[*]} \
      deepspeed=examples/deepspeed/ds_z3_config.json max_steps=4 save_strategy=no output_dir=$WORK/out_zero3 \
      && $PY bench/gpu_check_load.py $MODEL $WORK/out_zero3"
  else
    status zero3 skipped "deepspeed does not import"; status save_zero3 skipped "deepspeed does not import"
  fi
  if [ "$TINY" = 1 ] && [ "$NGPU" = 0 ]; then
    status fsdp1 skipped "tiny CPU mode (accelerate's FSDP1 needs a GPU)"
    status save_fsdp1 skipped "tiny CPU mode (accelerate's FSDP1 needs a GPU)"
  else
    echo '{"fsdp_version": 1}' > "$WORK/fsdp1_config.json"  # transformers 5 makes FSDP2 the default
    # unsharded FSDP1 (one process) refuses LoRA on this tied-embedding model (train/sharding.py): full there
    FSDP1_CONFIG=bench/configs/gpu_lora.yaml; [ "$NPROC" = 1 ] && FSDP1_CONFIG=bench/configs/gpu_full.yaml
    echo "$FSDP1_CONFIG" > "$WORK/status/fsdp1.config"
    run fsdp1 120 "${DIST[@]}" bench "$FSDP1_CONFIG" "model_name_or_path=$MODEL" "${EXTRA[@]}" \
      "fsdp=full_shard auto_wrap" "fsdp_config=$WORK/fsdp1_config.json" --steps "$STEPS" --warmup "$WARMUP" --out "$WORK/fsdp1.json"
    # LF's documented launch: accelerate with examples/accelerate/fsdp_config.yaml (FSDP1), a full fine-tune
    run save_fsdp1 150 bash -c "$PY -m accelerate.commands.launch --config_file examples/accelerate/fsdp_config.yaml \
      --num_processes $NPROC -m tuneforge train bench/configs/gpu_full.yaml model_name_or_path=$MODEL ${EXTRA[*]} \
      max_steps=4 save_strategy=no output_dir=$WORK/out_fsdp1 && $PY bench/gpu_check_load.py $MODEL $WORK/out_fsdp1"
  fi
  echo '{"fsdp_version": 2}' > "$WORK/fsdp2_config.json"
  run fsdp2 120 "${DIST[@]}" bench bench/configs/gpu_lora.yaml "model_name_or_path=$MODEL" "${EXTRA[@]}" \
    "fsdp=full_shard auto_wrap" "fsdp_config=$WORK/fsdp2_config.json" --steps "$STEPS" --warmup "$WARMUP" --out "$WORK/fsdp2.json"
fi

# ---- 7. LLaMA-Factory side by side: the LoRA config through LF 0.9.5 and through tuneforge ----
# (LF and its pinned packages travel as wheels in .gpu/lfwhl, installed into a folder of their own that only LF's
# process puts first on its path; bench/compare_llamafactory.py runs both and writes tokens/s of each)
# compare LF_ARGS...: the side by side with LF started as `$PY -m llamafactory.cli` (LF_ARGS: --lf-path DIR or none)
compare() {
  run llamafactory 240 "$PY" bench/compare_llamafactory.py bench/configs/gpu_lora.yaml "model_name_or_path=$MODEL" \
    "${EXTRA[@]}" --steps "$STEPS" --warmup "$WARMUP" --lf-python "$PY" "$@" --out "$WORK/llamafactory.json"
}
LF=$(envget llamafactory)
if [ $MODEL_OK != 0 ]; then
  status llamafactory skipped "no model"
elif [ -n "${GPU_CHECK_ONLY:-}" ] && [[ " $GPU_CHECK_ONLY " != *" llamafactory "* ]]; then
  status llamafactory skipped "not in GPU_CHECK_ONLY"
elif ls .gpu/lfwhl/llamafactory-*.whl > /dev/null 2>&1; then
  LF_SITE=$WORK/lfsite; mkdir -p "$LF_SITE"
  if timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$LF_SITE" \
       .gpu/lfwhl/*.whl > "$WORK/lf_install.log" 2>&1; then
    compare --lf-path "$LF_SITE"
  else
    status llamafactory skipped "the LF wheels did not install: $(tail -1 "$WORK/lf_install.log" | cut -c1-160)"
  fi
else
  case "$LF" in
    missing*|"") status llamafactory skipped "LLaMA-Factory is not installed here and cannot be (no internet): carry .gpu/lfwhl (bench/gpu_check_prepare.sh)" ;;
    *) compare ;;
  esac
fi

# ---- the table and the JSON ----
WORK="$WORK" OUTFILE="$RESULTS/$JSON_NAME" ELAPSED=$(elapsed) STEPS=$STEPS WARMUP=$WARMUP TINY=$TINY "$PY" - <<'PY'
import json, os
from pathlib import Path

work = Path(os.environ["WORK"])
env = {}
try:
    env = json.loads((work / "env.json").read_text())
except Exception:  # noqa: BLE001
    pass
cases = []
for name, label in (("model", "build Qwen2-0.5B (random)"), ("lora", "LoRA SFT"), ("qlora", "QLoRA SFT (4-bit)"),
                    ("full", "full SFT"), ("ddp", "DDP: LoRA under torchrun"), ("deepspeed", "DeepSpeed ZeRO-2: LoRA, torchrun"),
                    ("zero3", "DeepSpeed ZeRO-3: full"), ("fsdp1", "FSDP1: LoRA, torchrun"),
                    ("fsdp2", "FSDP2: LoRA, torchrun"), ("save_zero3", "ZeRO-3 LoRA: save, load w/o DS"),
                    ("save_fsdp1", "FSDP1 full (accelerate): save, load"),
                    ("llamafactory", "LLaMA-Factory side by side")):
    status_file = work / "status" / name
    state, reason = (status_file.read_text().rstrip("\n").split("\t", 1) + [""])[:2] if status_file.exists() else ("not run", "")
    row = {"case": name, "label": label, "status": state, "reason": reason}
    seconds = work / "status" / f"{name}.seconds"
    if seconds.exists():
        row["wall_seconds"] = int(seconds.read_text())
    if name == "fsdp1" and "full" in ((work / "status" / "fsdp1.config").read_text()
                                      if (work / "status" / "fsdp1.config").exists() else ""):
        row["label"] = "FSDP1: full, torchrun"
    if name == "ddp" and (work / "status" / "ddp.nproc").exists():
        row["nproc_per_node"] = int((work / "status" / "ddp.nproc").read_text())
        row["label"] += f" x{row['nproc_per_node']}"
    result_file = work / f"{name}.json"
    if result_file.exists():
        row["result"] = json.loads(result_file.read_text())
    if name == "llamafactory" and "llamafactory" in row.get("result", {}):  # compare_llamafactory.py's JSON
        both = row.pop("result")
        row["result"], row["tuneforge"], row["ratio"] = both["llamafactory"], both["tuneforge"], both["ratio"]
        row["reason"] = (f"tuneforge {both['tuneforge']['real_tokens_per_s']:.0f} tokens/s on the same config: "
                         f"{both['ratio']:.2f}x LLaMA-Factory's")
    cases.append(row)
report = {"tiny": os.environ["TINY"] == "1", "steps": int(os.environ["STEPS"]), "warmup": int(os.environ["WARMUP"]),
          "elapsed_seconds": int(os.environ["ELAPSED"]), "env": env, "cases": cases}
Path(os.environ["OUTFILE"]).write_text(json.dumps(report, indent=2) + "\n")

def num(value, fmt):
    width = int("".join(c for c in fmt.split(".")[0] if c.isdigit()) or 0)
    return format(value, fmt) if isinstance(value, (int, float)) else "-".rjust(width)

print()
print(f"GPU check: {', '.join(env.get('gpu') or ['no GPU'])} | torch {env.get('torch')} cuda {env.get('cuda')} | "
      f"transformers {env.get('transformers')} | peft {env.get('peft')} | bitsandbytes {str(env.get('bitsandbytes'))[:40]}")
print(f"{os.environ['WARMUP']} warm-up + {os.environ['STEPS']} measured steps per case"
      f"{' (TINY: 2-layer model, float32, CPU-sized batch)' if report['tiny'] else ''}; {report['elapsed_seconds']} s in all")
header = f"{'case':<36} {'tokens/s':>10} {'s/step':>8} {'peak CUDA GiB':>13} {'peak RSS GiB':>12} {'MFU %':>6} {'batch':>5} {'ckpt':>4}  status"
print(header)
print("-" * len(header))
for row in cases:
    r = row.get("result", {})
    mfu = r.get("mfu")
    status = row["status"] + (f" ({row['wall_seconds']} s)" if "wall_seconds" in row and row["status"] == "ok" else "")
    print(f"{row['label']:<36} {num(r.get('real_tokens_per_s'), '10.0f')} {num(r.get('seconds_per_step'), '8.3f')} "
          f"{num(r.get('peak_cuda_gib'), '13.2f')} {num(r.get('peak_rss_gib'), '12.2f')} "
          f"{num(100 * mfu if mfu is not None else None, '6.1f')} {num(r.get('batch_size'), '5d')} "
          f"{('on' if r['gradient_checkpointing'] else 'off') if 'gradient_checkpointing' in r else '-':>4}  {status}")
    if row["reason"]:
        print(f"{'':<38}{row['reason'][:200]}")
print(f"saved {os.environ['OUTFILE']}")
PY
# the device tool brings back at most 8 files: the logs travel as one archive
if [ -n "${OUT:-}" ]; then
  tar czf "$RESULTS/gpu_check_logs.tar.gz" -C "$RESULTS" gpu_check_logs && rm -rf "$RESULTS/gpu_check_logs"
fi
