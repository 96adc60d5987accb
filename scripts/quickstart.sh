#!/usr/bin/env bash
# The README's first command: set everything up, then fine-tune the built-in demo model
# (SmolLM2-135M-Instruct) on the identity data and show its answer to "Who are you?" before and after.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
TF=.venv/bin/tuneforge
QUESTION="Who are you?"

echo
echo "=== before fine-tuning: the built-in demo model answers \"$QUESTION\""
$TF chat examples/demo_chat.yaml adapter_name_or_path=null do_sample=false --prompt "$QUESTION"

echo
echo "=== fine-tuning (LoRA) on data/identity_tuneforge.json"
$TF train examples/demo_lora_sft.yaml

echo
echo "=== after fine-tuning: the same question, with the trained adapter"
$TF chat examples/demo_chat.yaml do_sample=false --prompt "$QUESTION"
