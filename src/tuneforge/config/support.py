"""What tuneforge does not implement yet: one table per kind, so a feature is switched on in one place.

- `STAGES`: training stage -> None when supported, else why not.
- `UNSUPPORTED_KEYS`: known LLaMA-Factory / HF keys that are accepted only at their default value.
- `UNSUPPORTED_VALUES`: keys that are implemented, except for some values.
- `LEGACY_TRAINING_KEYS`: transformers-4 training keys (removed in transformers 5) that LF files still use,
  and what tuneforge does with them.

Keys listed nowhere here are implemented (or have no effect outside an unsupported feature, e.g. the
`vllm_*` settings without `infer_backend: vllm`). Everything read-only.
"""

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..utils.vision_models import SUPPORTED_NAMES
from .stages import STAGES as _STAGE_RECORDS

_MULTIMODAL = (f"only image inputs of {SUPPORTED_NAMES} models are supported yet; other vision/audio-language "
               "models, videos and audio are not")
_ENGINE = "only the huggingface inference backend is implemented"
_LIGER = ("Liger kernels are not integrated yet; they are Triton kernels for CUDA / ROCm GPUs (tuneforge computes "
          "the loss in chunks itself)")
_FP8 = ("FP8 training is not implemented yet; it needs an NVIDIA GPU with FP8 tensor cores (Ada, Hopper or newer) "
        "and torchao or Transformer Engine")

STAGES = MappingProxyType({name: stage.unsupported for name, stage in _STAGE_RECORDS.items()})  # name -> why not

FINETUNING_TYPES = ("lora", "freeze", "full", "oft")
UNSUPPORTED_FINETUNING_TYPES = MappingProxyType({})  # type -> why not (none left)

UNSUPPORTED_KEYS = MappingProxyType(
    {
        # model loading
        "adapter_folder": "load adapters with `adapter_name_or_path` instead",
        "split_special_tokens": "slow-tokenizer options are not implemented",
        "shift_attn": "LongLoRA shift attention is not implemented",
        "use_unsloth": "unsloth is not integrated; tuneforge has its own padding-free, chunked-loss path",
        "use_unsloth_gc": "unsloth is not integrated",
        "enable_liger_kernel": _LIGER,
        "use_liger_kernel": _LIGER,
        "fp8": _FP8,
        "fp8_backend": _FP8,
        "fp8_enable_fsdp_float8_all_gather": _FP8,
        "use_kt": "KTransformers is not integrated; it needs a CUDA GPU for attention (the experts run on its AMX / "
                  "AVX-512 CPU kernels)",
        "export_hub_model_id": "pushing to the hub is not implemented; upload export_dir yourself",
        # multimodal: images for the Qwen-VL family (data/media.py); the video keys act on a `videos` column only,
        # which the data layer refuses (ONLY_WITH); these are other families' or media's
        "image_do_pan_and_scan": "Gemma3's pan-and-scan; " + _MULTIMODAL,
        "crop_to_patches": "InternVL's patch cropping; " + _MULTIMODAL,
        "use_audio_in_video": _MULTIMODAL,
        "audio_sampling_rate": _MULTIMODAL,
        "train_mm_proj_only": _MULTIMODAL,
        # data
        "eval_num_beams": "generation during evaluation is not implemented yet",
        "ignore_pad_token_for_loss": "pad tokens are always excluded from the loss",
        "reasoning_effort": "reasoning-effort switches for reasoning templates are not implemented yet",
        # methods and optimisers
        "use_mca": "Megatron Core training is not implemented (it needs CUDA GPUs: Megatron-Core with Transformer "
                   "Engine)",
        # distributed training
        "master_addr": "Ray Train (USE_RAY=1) picks the process-group address and port itself",
        "master_port": "Ray Train (USE_RAY=1) picks the process-group address and port itself",
        # LLaMA-Factory 0.9.5 keys of features not built yet (config/lf_extra_args.py)
        "use_hyper_parallel": "LF's HyperParallel backend is not integrated",
        "profile_modules": "module timing with CUDA events is not implemented yet",
        "download_mode": "evaluation tasks are read from local folders (task_dir); nothing is downloaded",
    }
)

# key -> (accepted values, why the others are not). The default is always among the accepted values.
UNSUPPORTED_VALUES = MappingProxyType(
    {
        "infer_backend": (("huggingface",), _ENGINE),
        "quantization_method": (("bnb",), "only bitsandbytes on-the-fly quantization is implemented"),
        "packing_strategy": (("length",), "semantic-aware packing is not implemented yet"),
        "low_cpu_mem_usage": ((True,), "transformers 5 always loads weights without an extra copy in memory"),
        "use_kv_cache": ((True,), "tuneforge's decoding always uses the KV cache"),
    }
)

# Keys (or key prefixes) that only matter together with a feature refused above: as in LF, they do
# nothing without it, so setting them alone is harmless. tests/test_config_honesty.py checks that every
# other key is read by code outside config/ or refused.
ONLY_WITH = MappingProxyType(
    {
        "vllm_": "infer_backend: vllm", "sglang_": "infer_backend: sglang",
        "kt_": "use_kt", "cpu_infer": "use_kt", "mode": "use_kt",
        "packing_similarity_threshold": "packing_strategy: semantic_aware",
        "packing_embedding_model": "packing_strategy: semantic_aware",
        "hyper_parallel_args": "use_hyper_parallel",
        "video_": "column: videos",  # a dataset's `videos` column: refused (data/registry.py UNSUPPORTED_COLUMNS)
    }
)


# Keys of other LLaMA-Factory engines: a file that uses them is for that engine, not a typo. Reported as
# one line naming the engine instead of one "unknown key" per setting.
FOREIGN_KEYS = MappingProxyType({
    "keys of a LLaMA-Factory v1 config (`USE_V1=1 llamafactory-cli train`) next to `model_name_or_path` (v0); "
    "write the file in one format (v1: `model`, `train_dataset`, `peft_config`, ...)": frozenset({
        "model", "model_class", "kernel_config", "quant_config", "dist_config", "peft_config", "init_config",
        "train_dataset", "eval_dataset_config", "micro_batch_size", "global_batch_size", "batching_strategy",
        "sample_backend"}),
    "Megatron-Core settings (LF's `USE_MCA=1` with mcore_adapter); Megatron training is not implemented (it "
    "needs CUDA GPUs: Megatron-Core with Transformer Engine)": frozenset({
        "tensor_model_parallel_size", "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size",
        "expert_model_parallel_size", "context_parallel_size", "sequence_parallel", "bias_activation_fusion",
        "apply_rope_fusion", "use_distributed_optimizer", "overlap_param_gather", "overlap_grad_reduce",
        "moe_grouped_gemm", "moe_token_dispatcher_type", "recompute_granularity", "recompute_method",
        "recompute_num_layers"}),
})


def foreign_engine(keys) -> tuple[str, list[str]] | None:
    """(which engine, its keys found) when unknown `keys` belong to another LF engine, else None."""
    for engine, names in FOREIGN_KEYS.items():
        found = sorted(k for k in keys if k in names)
        if found:
            return engine, found
    return None


def only_with(key: str) -> str | None:
    """The refused feature `key` belongs to (see ONLY_WITH), or None."""
    return next((feature for name, feature in ONLY_WITH.items()
                 if key == name or (name.endswith("_") and key.startswith(name))), None)


@dataclass(frozen=True)
class LegacyKey:
    """A transformers-4 training key (removed in transformers 5) that LF files still use.

    action: "alias" (same meaning under `target`), "warmup_fraction" (warmup_steps < 1 is a fraction in
    transformers 5), "sampler" (group_by_length -> train_sampling_strategy), "noop" (accepted, no
    effect, see `reason`), "default_only" (accepted at `default`, NotSupportedError otherwise).
    """

    action: str
    default: Any
    help: str
    target: str | None = None
    reason: str = ""


LEGACY_TRAINING_KEYS = MappingProxyType(
    {
        "warmup_ratio": LegacyKey("warmup_fraction", 0.0, "Fraction of the training steps used for warmup."),
        "evaluation_strategy": LegacyKey("alias", "no", "Old name of eval_strategy.", target="eval_strategy"),
        "no_cuda": LegacyKey("alias", False, "Old name of use_cpu.", target="use_cpu"),
        "group_by_length": LegacyKey("sampler", False, "Batch samples of similar length together."),
        "include_tokens_per_second": LegacyKey(
            "noop", False, "Report tokens/s.", reason="tuneforge always reports tokens/s"
        ),
        "save_safetensors": LegacyKey(
            "default_only", True, "Save checkpoints as safetensors.", reason="checkpoints are always safetensors"
        ),
        "fsdp_transformer_layer_cls_to_wrap": LegacyKey(
            "default_only", None, "Decoder layer class FSDP wraps (transformers 4; now in fsdp_config).",
            reason="transformers 5 reads it from `fsdp_config: {transformer_layer_cls_to_wrap: [...]}`; without it FSDP "
                   "wraps the model's own decoder layers",
        ),
    }
)


def stage_problem(stage: str) -> str | None:
    """Why `stage` cannot run (None when it can); unknown stages get the list of known ones."""
    if stage not in STAGES:
        return f"unknown stage `{stage}`; expected one of: {', '.join(STAGES)}"
    reason = STAGES[stage]
    return None if reason is None else f"stage `{stage}` is not supported yet by tuneforge ({reason})"


def supported_stages() -> tuple[str, ...]:
    return tuple(stage for stage, reason in STAGES.items() if reason is None)
