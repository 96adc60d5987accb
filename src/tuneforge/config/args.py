"""The LLaMA-Factory key surface as four frozen dataclasses, plus HF training arguments.

Names and defaults follow LLaMA-Factory 0.9.x (`hparams/*_args.py`), so an LF YAML file means the same
thing here. Deliberate differences (see docs/internals.md): `template` None means "auto" (the
tokenizer's own chat template), `truncation` is new, `lora_alpha` None means 2 * rank (derived by
`effective_lora_alpha`, never written back), `packing` None means "on for sft (padding-free)".

Every field is accepted by the parser; keys tuneforge does not implement yet are listed in
`support.py` and rejected there when set to a non-default value.

Comma-separated list keys (`dataset`, `lora_target`, ...) are normalised to tuples while the object
is constructed, as LLaMA-Factory does in `__post_init__`; after that nothing changes.
"""

from dataclasses import dataclass, field
from typing import Any, Literal


# Keys whose value is a comma-separated string (or a list) of names: normalised to tuple[str, ...].
LIST_KEYS = frozenset(
    {
        "adapter_name_or_path",
        "dataset",
        "eval_dataset",
        "lora_target",
        "additional_target",
        "freeze_trainable_modules",
        "freeze_extra_modules",
        "oft_target",
        "galore_target",
        "apollo_target",
    }
)

StrList = str | list[str] | tuple[str, ...]


def _f(default: Any, help: str, **metadata: Any) -> Any:
    """One field: a default and a one-line help string."""
    return field(default=default, metadata={"help": help, **metadata})


def split_names(value: Any) -> tuple[str, ...]:
    """LF's list keys (`dataset`, `lora_target`, `adapter_name_or_path`, ...): `"a, b"` or `["a", "b"]` ->
    `("a", "b")`; empty pieces dropped; None or nothing left -> (). The one home of this rule."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(item).strip() for item in items if str(item).strip())


def _normalise_lists(obj: Any) -> None:
    """Turn the comma-separated keys of a frozen dataclass into tuples (construction time only)."""
    for name in LIST_KEYS:
        if hasattr(obj, name):
            object.__setattr__(obj, name, split_names(getattr(obj, name)) or None)  # unset stays None


@dataclass(frozen=True)
class ModelArguments:
    """Which model, tokenizer and adapters to load, and how (LF `ModelArguments`)."""

    # base model and tokenizer
    model_name_or_path: str | None = _f(None, "Local folder, hub id, .gguf file or `builtin:smollm2`.")
    adapter_name_or_path: StrList | None = _f(None, "Adapter folder(s) to load, comma-separated.")
    adapter_folder: str | None = _f(None, "Folder holding several adapters to load.")
    cache_dir: str | None = _f(None, "Where downloaded models are cached.")
    use_fast_tokenizer: bool = _f(True, "Use the fast (Rust) tokenizer when the model has one.")
    resize_vocab: bool = _f(False, "Resize the vocabulary and embeddings to the tokenizer.")
    split_special_tokens: bool = _f(False, "Tokenize special tokens as plain text (slow tokenizers).")
    add_tokens: str | None = _f(None, "Plain tokens to add to the tokenizer, comma-separated.")
    add_special_tokens: str | None = _f(None, "Special tokens to add to the tokenizer, comma-separated.")
    new_special_tokens_config: str | None = _f(None, "YAML file describing new special tokens.")
    init_special_tokens: Literal["noise_init", "desc_init", "desc_init_w_noise"] = _f(
        "noise_init", "How new special-token embeddings are initialised."
    )
    model_revision: str = _f("main", "Hub revision (branch, tag or commit) of the model.")
    low_cpu_mem_usage: bool = _f(True, "Load weights without a full extra copy in memory.")
    rope_scaling: Literal["linear", "dynamic", "yarn", "llama3"] | None = _f(None, "RoPE scaling method.")
    # Not a config key (`derived`: no YAML/command-line key, no help row), as LF's init=False field: the run's
    # `cutoff_len` in `tuneforge train` runs, None at inference; it sizes the `rope_scaling` factor (model/loader.py).
    model_max_length: int | None = _f(None, "Longest input the model is loaded for (derived from cutoff_len).",
                                      derived=True)
    flash_attn: Literal["auto", "disabled", "eager", "sdpa", "fa2", "fa3"] = _f(
        "auto", "Attention kernel: auto (= sdpa), sdpa, disabled/eager, fa2 or fa3 (CUDA; fa2 without it: a warning "
        "and sdpa, as LF)."
    )
    shift_attn: bool = _f(False, "LongLoRA shift short attention (S^2-Attn).")
    mixture_of_depths: Literal["convert", "load"] | None = _f(None, "Convert to or load a mixture-of-depths model.")
    use_unsloth: bool = _f(False, "Use unsloth's LoRA kernels.")
    use_unsloth_gc: bool = _f(False, "Use unsloth's gradient checkpointing.")
    enable_liger_kernel: bool = _f(False, "Use liger kernels.")
    moe_aux_loss_coef: float | None = _f(None, "Weight of the MoE router auxiliary loss.")
    disable_gradient_checkpointing: bool = _f(False, "Never use gradient checkpointing.")
    use_reentrant_gc: bool = _f(True, "Use reentrant gradient checkpointing when it is on.")
    upcast_layernorm: bool = _f(False, "Keep layer-norm weights in fp32.")
    upcast_lmhead_output: bool = _f(False, "Compute the LM-head output in fp32.")
    train_from_scratch: bool = _f(False, "Randomly initialise the model weights.")
    infer_backend: Literal["huggingface", "vllm", "sglang", "ktransformers"] = _f(
        "huggingface", "Inference engine."
    )
    offload_folder: str = _f("offload", "Folder for offloaded weights.")
    use_kv_cache: bool = _f(True, "Use the KV cache when generating.")
    use_v1_kernels: bool | None = _f(False, "Use LF v1 high-performance kernels.")
    infer_dtype: Literal["auto", "float16", "bfloat16", "float32"] = _f("auto", "Weight dtype at inference.")
    hf_hub_token: str | None = _f(None, "Hugging Face Hub token (or set HF_TOKEN).")
    ms_hub_token: str | None = _f(None, "ModelScope Hub token (USE_MODELSCOPE_HUB=1, ms_hub_url datasets).")
    om_hub_token: str | None = _f(None, "Modelers (OpenMind) Hub token (USE_OPENMIND_HUB=1, om_hub_url datasets).")
    print_param_status: bool = _f(False, "Print every parameter's dtype and trainability.")
    trust_remote_code: bool = _f(False, "Run model/tokenizer code shipped with the checkpoint.")
    # quantization
    quantization_method: Literal["bnb", "gptq", "awq", "aqlm", "quanto", "eetq", "hqq", "mxfp4", "fp8"] = _f(
        "bnb", "On-the-fly quantization library."
    )
    quantization_bit: int | None = _f(None, "Quantize the base model to 4 or 8 bits (QLoRA).")
    quantization_type: Literal["fp4", "nf4"] = _f("nf4", "4-bit data type for bitsandbytes.")
    double_quantization: bool = _f(True, "Double quantization in 4-bit bitsandbytes.")
    quantization_device_map: Literal["auto"] | None = _f(None, "Device map for a 4-bit model at inference.")
    fp8: bool = _f(False, "FP8 mixed-precision training (Hopper GPUs).")
    fp8_backend: str = _f("auto", "FP8 backend: auto, torchao, te or msamp.")
    fp8_enable_fsdp_float8_all_gather: bool = _f(False, "FP8 all-gather under FSDP2.")
    # multimodal processor
    image_max_pixels: int = _f(768 * 768, "Maximum pixels of an image input.")
    image_min_pixels: int = _f(32 * 32, "Minimum pixels of an image input.")
    image_do_pan_and_scan: bool = _f(False, "Gemma3 pan-and-scan for images.")
    crop_to_patches: bool = _f(False, "InternVL: crop images to patches.")
    video_max_pixels: int = _f(256 * 256, "Maximum pixels of a video frame.")
    video_min_pixels: int = _f(16 * 16, "Minimum pixels of a video frame.")
    video_fps: float = _f(2.0, "Frames sampled per second of video.")
    video_maxlen: int = _f(128, "Maximum frames sampled from a video.")
    use_audio_in_video: bool = _f(False, "Use the audio track of video inputs.")
    audio_sampling_rate: int = _f(16000, "Sampling rate of audio inputs.")
    # export
    export_dir: str | None = _f(None, "Folder to write the exported (merged) model to.")
    export_size: int = _f(5, "Shard size of the exported model in GB.")
    export_device: Literal["cpu", "auto"] = _f("cpu", "Device used while exporting.")
    export_quantization_bit: int | None = _f(None, "Quantize the exported model to this many bits.")
    export_quantization_dataset: str | None = _f(None, "Calibration data for export quantization.")
    export_quantization_nsamples: int = _f(128, "Calibration samples for export quantization.")
    export_quantization_maxlen: int = _f(1024, "Calibration sequence length for export quantization.")
    export_legacy_format: bool = _f(False, "Save .bin files instead of .safetensors.")
    export_format: Literal["safetensors", "gguf"] = _f("safetensors", "safetensors: a Hugging Face model folder; gguf: one "
                                                       ".gguf file for llama.cpp / Ollama (tuneforge).")
    gguf_type: Literal["f16", "bf16", "q8_0", "f32"] = _f("f16", "Weight type of a GGUF export (tuneforge).")
    export_hub_model_id: str | None = _f(None, "Push the exported model to this hub repository.")
    # other inference engines (only read with infer_backend other than huggingface)
    vllm_maxlen: int = _f(4096, "vLLM maximum sequence length.")
    vllm_gpu_util: float = _f(0.7, "vLLM GPU memory fraction.")
    vllm_enforce_eager: bool = _f(False, "vLLM: disable CUDA graphs.")
    vllm_max_lora_rank: int = _f(32, "vLLM maximum LoRA rank.")
    vllm_config: dict | str | None = _f(None, "Extra vLLM engine config (JSON).")
    sglang_maxlen: int = _f(4096, "SGLang maximum sequence length.")
    sglang_mem_fraction: float = _f(0.7, "SGLang memory fraction.")
    sglang_tp_size: int = _f(-1, "SGLang tensor-parallel size.")
    sglang_config: dict | str | None = _f(None, "Extra SGLang engine config (JSON).")
    sglang_lora_backend: Literal["triton", "flashinfer"] = _f("triton", "SGLang LoRA GEMM backend.")
    use_kt: bool = _f(False, "KTransformers optimisations for LoRA training.")
    kt_optimize_rule: str | None = _f(None, "KTransformers optimize-rule file.")
    cpu_infer: int | None = _f(32, "KTransformers CPU cores.")
    chunk_size: int | None = _f(8192, "KTransformers CPU chunk size.")
    mode: str | None = _f("normal", "KTransformers mode: normal or long_context.")
    kt_maxlen: int = _f(4096, "KTransformers engine maximum sequence length.")
    kt_use_cuda_graph: bool = _f(True, "KTransformers engine CUDA graphs.")
    kt_mode: str = _f("normal", "KTransformers engine mode.")
    kt_force_think: bool = _f(False, "KTransformers engine force-think toggle.")

    def __post_init__(self) -> None:
        _normalise_lists(self)


@dataclass(frozen=True)
class DataArguments:
    """Which datasets, which template, and how they become token ids (LF `DataArguments`)."""

    template: str | None = _f(None, "Chat template name; unset or `auto` = the tokenizer's own template.")
    dataset: StrList | None = _f(None, "Training dataset name(s) from dataset_info.json, comma-separated.")
    eval_dataset: StrList | None = _f(None, "Evaluation dataset name(s), comma-separated.")
    dataset_dir: str = _f("data", "Folder holding dataset_info.json and the data files.")
    media_dir: str | None = _f(None, "Folder of images/videos/audios (default: dataset_dir).")
    cutoff_len: int = _f(2048, "Maximum tokens per sample (prompt + response).")
    truncation: Literal["keep_prompt", "drop"] = _f(
        "keep_prompt", "Over-long samples: keep_prompt = truncate like LF, drop = skip and report them."
    )
    train_on_prompt: bool = _f(False, "Also train on prompt tokens.")
    mask_history: bool = _f(False, "Train on the last assistant turn only.")
    streaming: bool = _f(False, "Stream the dataset instead of loading it.")
    buffer_size: int = _f(16384, "Shuffle buffer size when streaming.")
    mix_strategy: Literal["concat", "interleave_under", "interleave_over", "interleave_once"] = _f(
        "concat", "How several datasets are mixed."
    )
    interleave_probs: str | list[float] | tuple[float, ...] | None = _f(
        None, "Sampling probability per dataset for interleaved mixing, comma-separated."
    )
    overwrite_cache: bool = _f(False, "Re-tokenize instead of using cached datasets.")
    preprocessing_batch_size: int = _f(1000, "Rows per pre-processing batch.")
    preprocessing_num_workers: int | None = _f(None, "Processes used for pre-processing.")
    max_samples: int | None = _f(None, "Use at most this many rows of each dataset.")
    eval_num_beams: int | None = _f(None, "Beams for generation during evaluation.")
    ignore_pad_token_for_loss: bool = _f(True, "Exclude pad tokens from the loss.")
    val_size: float = _f(0.0, "Validation split: a fraction in [0,1) or a row count.")
    eval_on_each_dataset: bool = _f(False, "Evaluate every eval dataset separately.")
    packing: bool | None = _f(None, "Pack samples into rows; unset = on for sft (padding-free) and pt.")
    neat_packing: bool = _f(False, "Packing without attention across samples.")
    packing_strategy: Literal["length", "semantic_aware"] = _f("length", "How samples are grouped for packing.")
    packing_similarity_threshold: float = _f(0.7, "Similarity threshold for semantic-aware packing.")
    packing_embedding_model: str = _f(
        "sentence-transformers/all-MiniLM-L6-v2", "Embedding model for semantic-aware packing."
    )
    tool_format: str | None = _f(None, "Tool-call format used in function-calling samples.")
    default_system: str | None = _f(None, "Replace the template's default system prompt.")
    enable_thinking: bool | None = _f(True, "Thinking mode for reasoning-model templates.")
    reasoning_effort: str = _f("xhigh", "Reasoning effort for reasoning-model templates.")
    preserve_thinking: bool | None = _f(None, "Keep thinking text of earlier turns.")
    tokenized_path: str | None = _f(None, "Save or load tokenized datasets at this path.")
    data_shared_file_system: bool = _f(False, "Datasets live on a file system shared by all nodes.")

    def __post_init__(self) -> None:
        _normalise_lists(self)
        if isinstance(self.interleave_probs, str):
            pieces = [p.strip() for p in self.interleave_probs.split(",") if p.strip()]
            object.__setattr__(self, "interleave_probs", tuple(float(p) for p in pieces))
        elif isinstance(self.interleave_probs, list):
            object.__setattr__(self, "interleave_probs", tuple(float(p) for p in self.interleave_probs))


@dataclass(frozen=True)
class FinetuningArguments:
    """Training stage and fine-tuning method (LF `FinetuningArguments`)."""

    stage: str = _f("sft", "Training stage: sft, pt, rm, dpo, kto, ppo, grpo.")
    finetuning_type: str = _f("lora", "Fine-tuning method: lora, freeze, full or oft.")
    # freeze
    freeze_trainable_layers: int = _f(2, "Freeze: last n layers trainable (negative: first n).")
    freeze_trainable_modules: StrList = _f("all", "Freeze: trainable module names in those layers, or all.")
    freeze_extra_modules: StrList | None = _f(None, "Freeze: extra trainable modules outside the layers.")
    # lora
    additional_target: StrList | None = _f(None, "Extra modules trained fully and saved with the adapter.")
    lora_alpha: int | None = _f(None, "LoRA scale; unset = 2 * lora_rank.")
    lora_dropout: float = _f(0.0, "LoRA dropout.")
    lora_rank: int = _f(8, "LoRA rank.")
    lora_target: StrList = _f("all", "Modules that get LoRA, comma-separated; all = every linear layer.")
    loraplus_lr_ratio: float | None = _f(None, "LoRA+: learning-rate ratio lr_B / lr_A.")
    loraplus_lr_embedding: float = _f(1e-6, "LoRA+: learning rate of LoRA embedding layers.")
    use_rslora: bool = _f(False, "Rank-stabilised LoRA scaling (alpha / sqrt(rank)).")
    use_dora: bool = _f(False, "Weight-decomposed LoRA (DoRA).")
    pissa_init: bool = _f(False, "Initialise the adapter with PiSSA.")
    pissa_iter: int = _f(16, "FSVD iterations for PiSSA; -1 = full SVD.")
    pissa_convert: bool = _f(False, "Convert a PiSSA adapter to a plain LoRA adapter when saving.")
    create_new_adapter: bool = _f(False, "Start a new adapter on top of loaded ones.")
    # oft
    module_dropout: float = _f(0.0, "OFT dropout: the probability that a block of a layer's rotation is skipped.")
    oft_rank: int = _f(0, "OFT: number of blocks per layer; set either this or oft_block_size (then 0).")
    oft_block_size: int = _f(32, "OFT block size (0 when oft_rank is set).")
    oft_target: StrList = _f("all", "Modules that get OFT, comma-separated; left at all, lora_target decides (as in LF).")
    # preference / RL stages
    pref_beta: float = _f(0.1, "Beta of the preference loss.")
    pref_ftx: float = _f(0.0, "SFT loss weight in DPO.")
    pref_bco_weight: float = _f(0.0, "BCO loss weight in DPO.")
    pref_loss: Literal["sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo"] = _f("sigmoid", "DPO loss type.")
    dpo_label_smoothing: float = _f(0.0, "cDPO label smoothing in [0, 0.5].")
    kto_chosen_weight: float = _f(1.0, "KTO weight of desirable samples.")
    kto_rejected_weight: float = _f(1.0, "KTO weight of undesirable samples.")
    simpo_gamma: float = _f(0.5, "SimPO target reward margin.")
    ppo_buffer_size: int = _f(1, "PPO mini-batches per experience buffer.")
    ppo_epochs: int = _f(4, "PPO epochs per optimisation step.")
    ppo_score_norm: bool = _f(False, "PPO score normalisation.")
    ppo_target: float = _f(6.0, "PPO target KL.")
    ppo_whiten_rewards: bool = _f(False, "PPO: whiten rewards.")
    ref_model: str | None = _f(None, "Reference model for DPO/PPO.")
    ref_model_adapters: str | None = _f(None, "Adapters of the reference model.")
    ref_model_quantization_bit: int | None = _f(None, "Quantization bits of the reference model.")
    reward_model: str | None = _f(None, "Reward model for PPO.")
    reward_model_adapters: str | None = _f(None, "Adapters of the reward model.")
    reward_model_quantization_bit: int | None = _f(None, "Quantization bits of the reward model.")
    reward_model_type: Literal["lora", "oft", "full", "api"] = _f("lora", "Type of the PPO reward model.")
    ld_alpha: float | None = _f(None, "LD-DPO alpha.")
    # optimisers and memory-saving methods
    use_galore: bool = _f(False, "GaLore optimizer: gradient low-rank projection (needs tuneforge[galore]).")
    galore_target: StrList = _f("all", "GaLore target modules.")
    galore_rank: int = _f(16, "GaLore rank.")
    galore_update_interval: int = _f(200, "GaLore projection update interval.")
    galore_scale: float = _f(2.0, "GaLore scale.")
    galore_proj_type: Literal["std", "reverse_std", "right", "left", "full"] = _f("std", "GaLore projection.")
    galore_layerwise: bool = _f(False, "GaLore layer-wise updates.")
    use_apollo: bool = _f(False, "APOLLO optimizer (needs tuneforge[apollo]).")
    apollo_target: StrList = _f("all", "APOLLO target modules.")
    apollo_rank: int = _f(16, "APOLLO rank.")
    apollo_update_interval: int = _f(200, "APOLLO projection update interval.")
    apollo_scale: float = _f(32.0, "APOLLO scale.")
    apollo_proj: Literal["svd", "random"] = _f("random", "APOLLO projection algorithm.")
    apollo_proj_type: Literal["std", "right", "left"] = _f("std", "APOLLO projection type.")
    apollo_scale_type: Literal["channel", "tensor"] = _f("channel", "APOLLO scaling type.")
    apollo_layerwise: bool = _f(False, "APOLLO layer-wise updates.")
    apollo_scale_front: bool = _f(False, "APOLLO norm-growth limiter before scaling.")
    use_badam: bool = _f(False, "BAdam optimizer: one block trains at a time (needs tuneforge[badam]).")
    badam_mode: Literal["layer", "ratio"] = _f("layer", "BAdam mode.")
    badam_start_block: int | None = _f(None, "BAdam first block.")
    badam_switch_mode: Literal["ascending", "descending", "random", "fixed"] | None = _f(
        "ascending", "BAdam block switching order."
    )
    badam_switch_interval: int | None = _f(50, "BAdam steps between block switches.")
    badam_update_ratio: float = _f(0.05, "BAdam ratio-wise update ratio.")
    badam_mask_mode: Literal["adjacent", "scatter"] = _f("adjacent", "BAdam mask mode.")
    badam_verbose: int = _f(0, "BAdam verbosity.")
    # experiment tracking
    use_swanlab: bool = _f(False, "Log to SwanLab.")
    swanlab_project: str | None = _f("llamafactory", "SwanLab project.")
    swanlab_workspace: str | None = _f(None, "SwanLab workspace.")
    swanlab_run_name: str | None = _f(None, "SwanLab run name.")
    swanlab_mode: Literal["cloud", "local", "offline"] = _f(
        "cloud", "SwanLab mode: cloud (needs a login), local (needs swanlab[dashboard]), offline (sync later).")
    swanlab_api_key: str | None = _f(None, "SwanLab API key.")
    swanlab_logdir: str | None = _f(None, "SwanLab log folder.")
    swanlab_lark_webhook_url: str | None = _f(None, "SwanLab Lark webhook URL.")
    swanlab_lark_secret: str | None = _f(None, "SwanLab Lark secret.")
    # general
    pure_bf16: bool = _f(False, "Keep trainable weights in bf16 too (no fp32 master copy).")
    use_llama_pro: bool = _f(False, "LLaMA Pro: train only expanded blocks.")
    use_adam_mini: bool = _f(False, "Adam-mini optimizer (needs tuneforge[adam-mini]).")
    use_mca: bool = _f(False, "Megatron Core Adapter training.")
    use_muon: bool = _f(False, "Muon optimizer for hidden-layer matrices, AdamW for the rest.")
    use_dft_loss: bool = _f(False, "DFT loss.")
    use_eaft_loss: bool = _f(False, "EAFT loss: each token's cross-entropy times (top-20 entropy / 3) ** eaft_alpha.")
    eaft_alpha: float = _f(1.0, "EAFT adaptive-weight power (with use_eaft_loss).")
    use_asft_loss: bool = _f(False, "ASFT loss: the DFT loss + asft_alpha x KL(reference || policy) per label token.")
    asft_alpha: float = _f(0.1, "Weight of the KL term of the ASFT loss (with use_asft_loss).")
    freeze_vision_tower: bool = _f(True, "Multimodal: freeze the vision tower.")
    freeze_multi_modal_projector: bool = _f(True, "Multimodal: freeze the projector.")
    freeze_language_model: bool = _f(False, "Multimodal: freeze the language model.")
    train_mm_proj_only: bool = _f(False, "Multimodal: train the projector only.")
    compute_accuracy: bool = _f(False, "Report token-level accuracy at evaluation.")
    disable_shuffling: bool = _f(False, "Keep the training set in order (no shuffling).")
    early_stopping_steps: int | None = _f(None, "Stop when metric_for_best_model has not improved for n evals.")
    plot_loss: bool = _f(False, "Save training_loss.png after training.")
    include_effective_tokens_per_second: bool = _f(False, "Add effective_tokens_per_sec (real tokens/s) to the metrics.")

    def __post_init__(self) -> None:
        _normalise_lists(self)

    @property
    def effective_lora_alpha(self) -> int:
        return effective_lora_alpha(self)


def effective_lora_alpha(finetuning: FinetuningArguments) -> int:
    """LoRA alpha actually used: `lora_alpha` when set, else 2 * `lora_rank` (LF's rule)."""
    return finetuning.lora_alpha if finetuning.lora_alpha else 2 * finetuning.lora_rank


# Fine-tuning methods that train a peft adapter (LF's PEFT_METHODS): saved as adapter folders, loaded with
# `adapter_name_or_path`, merged by `tuneforge export`.
ADAPTER_METHODS = ("lora", "oft")


@dataclass(frozen=True)
class GeneratingArguments:
    """Decoding settings for chat, evaluation and the API (LF `GeneratingArguments`)."""

    do_sample: bool = _f(True, "Sample; false = greedy decoding.")
    temperature: float = _f(0.95, "Sampling temperature.")
    top_p: float = _f(0.7, "Nucleus sampling probability mass.")
    top_k: int = _f(50, "Top-k sampling.")
    num_beams: int = _f(1, "Beam search width; 1 = no beam search.")
    max_length: int = _f(1024, "Maximum total length; used when max_new_tokens <= 0.")
    max_new_tokens: int = _f(1024, "Maximum tokens to generate.")
    repetition_penalty: float = _f(1.0, "Repetition penalty; 1.0 = none.")
    length_penalty: float = _f(1.0, "Length penalty for beam search.")
    skip_special_tokens: bool = _f(True, "Drop special tokens when decoding.")

    def to_generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `model.generate`: `max_new_tokens` wins over `max_length` when > 0."""
        kwargs = {
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "num_beams": self.num_beams,
            "repetition_penalty": self.repetition_penalty,
            "length_penalty": self.length_penalty,
        }
        if self.max_new_tokens > 0:
            kwargs["max_new_tokens"] = self.max_new_tokens
        else:
            kwargs["max_length"] = self.max_length
        return kwargs


def __getattr__(name: str):
    # `TrainingArguments` subclasses transformers' class: imported on first use, so reading and validating a
    # config does not wait for transformers (config/training_fields.py)
    if name == "TrainingArguments":
        from .training_args import TrainingArguments

        return TrainingArguments
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
