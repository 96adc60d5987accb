#!/bin/bash
# The fact recipe in bf16 for its first 3 epochs, then in float32 from that checkpoint to its recall stop
# (bench/RESULTS.md section 20b). Needs a CPU with AMX or AVX512-BF16 (auto_bf16 chooses float32 elsewhere).
#
#     bash bench/memorize_bf16_then_fp32.sh WORKDIR SEED        # 50 generated Chinese records of that data seed
#
# Writes WORKDIR/{times.txt, recall.json, fresh.json, out/}: the two phases' seconds, `tuneforge eval recall`,
# and bench_fresh_wordings.py's blind check. Phase 1 is stopped once its checkpoint at step 339 (epoch 3.0 of 50
# records with the recipe's augmentation, batch 8) is written; phase 2 resumes it with auto_bf16 off.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:?usage: memorize_bf16_then_fp32.sh WORKDIR SEED}
SEED=${2:?usage: memorize_bf16_then_fp32.sh WORKDIR SEED}
PY=$REPO/.venv/bin/python
SWITCH_STEP=339
mkdir -p "$WORK/data" && cd "$WORK" || exit 1
$PY - "$REPO" "$SEED" <<'P'
import json, sys
sys.path.insert(0, sys.argv[1] + "/data")
from make_school_records import make_school_records
open("data/records.json", "w").write(json.dumps(make_school_records(50, "zh", int(sys.argv[2])), ensure_ascii=False))
open("data/dataset_info.json", "w").write(json.dumps({"records": {"file_name": "records.json"}}))
P
COMMON="$REPO/examples/memorize_facts.yaml dataset_dir=data dataset=records output_dir=out overwrite_cache=true"
start=$(date +%s)
$PY -m tuneforge train $COMMON auto_bf16=true save_strategy=steps save_steps=$SWITCH_STEP > phase1.log 2>&1 &
pid=$!
until [ -f out/checkpoint-$SWITCH_STEP/trainer_state.json ] || ! kill -0 $pid 2>/dev/null; do sleep 5; done
sleep 20  # the checkpoint's last files
kill $pid; wait $pid
switched=$(date +%s)
$PY -m tuneforge train $COMMON resume_from_checkpoint=out/checkpoint-$SWITCH_STEP overwrite_output_dir=false \
    > phase2.log 2>&1 || { echo "phase 2 failed: $WORK/phase2.log"; exit 1; }
echo "phase1 $((switched - start)) s, phase2 $(($(date +%s) - switched)) s" | tee times.txt
$PY -m tuneforge eval recall $COMMON --json --output recall.json > eval.log 2>&1
$PY "$REPO/bench/bench_fresh_wordings.py" out data/records.json --out fresh.json | tail -1
