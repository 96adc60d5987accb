"""LLaMA-Factory 0.9.5 keys that belong to features tuneforge does not have yet.

They are fields here (LF's names, defaults and meaning) so that an LF file that sets one gets
"`key` is not supported yet (why)" from `support.UNSUPPORTED_KEYS` / `support.ONLY_WITH` instead of
"unknown key". When a feature lands, its keys move to the section that implements them.
"""

from dataclasses import dataclass, field
from typing import Any


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class LFExtraArguments:
    # FinetuningArguments: loss variants and the HyperParallel backend
    use_hyper_parallel: bool = _f(False, "Train with LF's HyperParallel backend (FSDP/TP).")
    hyper_parallel_args: str | None = _f(None, "JSON file of HyperParallel strategy arguments.")
    # KTransformersArguments beyond use_kt
    kt_weight_path: str | None = _f(None, "Pre-quantized INT8 expert weights (.kt) for KTransformers.")
    kt_expert_checkpoint_path: str | None = _f(None, "Expert checkpoint for KTransformers' online conversion.")
    kt_use_lora_experts: bool | None = _f(None, "KTransformers: GPU-side LoRA experts.")
    kt_lora_expert_num: int | None = _f(None, "KTransformers: number of GPU-side LoRA experts.")
    kt_lora_expert_intermediate_size: int | None = _f(None, "KTransformers: intermediate size of those experts.")
    # RayArguments: the process-group address for Ray workers
    master_addr: str | None = _f(None, "Address for init_process_group (Ray training).")
    master_port: int | None = _f(None, "Port for init_process_group (Ray training).")
    # ProfilerArguments beyond the torch profiler (config/profiler_args.py)
    profile_modules: str | None = _f(None, "Module name patterns timed with CUDA events.")
    # EvaluationArguments: the task folders are local, nothing is downloaded (the others: config/eval_args.py)
    download_mode: str = _f("reuse_dataset_if_exists", "Download mode of the evaluation datasets.")
