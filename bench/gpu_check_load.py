"""Loads what a distributed training saved with plain transformers (+ peft for an adapter), no DeepSpeed or
FSDP involved, and checks that it is a working model: finite loss on a sentence, a few greedy tokens.
Used by bench/gpu_check.sh after its ZeRO-3 and FSDP trainings.

    python bench/gpu_check_load.py BASE_MODEL OUTPUT_DIR
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def load(base: str, output: Path):
    """The saved result as a model: the adapter over `base`, or the whole model in `output`."""
    if (output / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), output)
        return model, f"adapter ({sum(1 for name, _ in model.named_parameters() if 'lora_' in name)} LoRA tensors)"
    model = AutoModelForCausalLM.from_pretrained(output)
    return model, f"whole model ({sum(p.numel() for p in model.parameters()):,} parameters)"


def main() -> int:
    base, output = sys.argv[1], Path(sys.argv[2])
    model, kind = load(base, output)
    tokenizer = AutoTokenizer.from_pretrained(output if (output / "tokenizer.json").exists() else base)
    batch = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss.item()
        tokens = model.generate(**batch, max_new_tokens=4, do_sample=False)
    print(f"loaded {output}: {kind}; loss {loss:.3f}; greedy {tokens[0, -4:].tolist()}")
    if not math.isfinite(loss):
        print("ERROR: the loaded model's loss is not finite")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
