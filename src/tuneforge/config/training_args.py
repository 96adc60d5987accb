"""tuneforge's `TrainingArguments`: HF `Seq2SeqTrainingArguments` plus the training keys LLaMA-Factory adds.

Importing this module imports transformers; the config layer reads the training keys from
`training_fields.json` instead (training_fields.py) and builds this class only for a valid config.
"""

from dataclasses import dataclass, field
from typing import Literal

from transformers import Seq2SeqTrainingArguments

from .args import _f


@dataclass
class TrainingArguments(Seq2SeqTrainingArguments):
    """HF `Seq2SeqTrainingArguments` plus the training keys LLaMA-Factory adds on top.

    transformers 5 dropped `overwrite_output_dir`; LF kept it, and it decides whether an existing
    output_dir is resumed from, so it lives here. The Ray keys (USE_RAY=1 or `ray_num_workers` > 1: a Ray Train
    TorchTrainer, cli/ray_launch.py) are LF 0.9.4's RayArguments.
    """

    overwrite_output_dir: bool = _f(False, "Start over in an existing output_dir instead of resuming.")
    # transformers 5 dropped it (TENSORBOARD_LOGGING_DIR replaced it); LF files still set it
    logging_dir: str | None = _f(None, "TensorBoard log folder (`report_to: tensorboard`); unset = output_dir/runs/<time>.")
    # LF files write `fsdp: [full_shard, auto_wrap]` (transformers 4 took a list); read both forms
    fsdp: str | list[str] | None = _f(None, "FSDP mode(s): full_shard, shard_grad_op, offload, auto_wrap.")
    ray_run_name: str | None = _f(None, "Ray run name: Ray's results go to <ray_storage_path>/<ray_run_name>.")
    ray_storage_path: str = _f("./saves", "Where Ray Train keeps its results and checkpoints.")
    ray_storage_filesystem: Literal["s3", "gs", "gcs"] | None = _f(None, "Ray storage file system (bucket paths).")
    ray_num_workers: int = _f(1, "Ray training workers (> 1, or USE_RAY=1, trains under Ray).")
    resources_per_worker: dict | str = field(
        default_factory=lambda: {"GPU": 1}, metadata={"help": "Ray resources each worker reserves, e.g. {\"CPU\": 1}."}
    )
    placement_strategy: Literal["SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"] = _f("PACK", "Ray worker placement.")
    ray_init_kwargs: dict | str | None = _f(None, "Keyword arguments of ray.init (a mapping or JSON).")
    auto_bf16: bool = _f(False, "tuneforge: bf16 mixed precision where the device computes bf16 natively (a CUDA "
                                "GPU with bf16, a CPU with AMX or AVX512-BF16), float32 elsewhere: for configs "
                                "meant to run on any machine; sets `bf16` for the run.")
    cpu_allocator: Literal["auto", "tcmalloc", "system"] = _f(
        "auto", "tuneforge: the memory allocator `tuneforge train` / `bench` / `data preview|check` run under: auto = "
                "tcmalloc when it is installed and the run trains on a CPU (far fewer page faults per step) or the "
                "command only reads data (a faster tokenizer), tcmalloc = always (an error when it is not "
                "installed), system = the C library's malloc (utils/allocator.py).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.deepspeed:
            # HF's `deepspeed` switches ZeRO-3 model loading on for the whole process; a config is read for chat,
            # export and prediction too, which load plain models: only a training run turns it on
            # (train/sharding.py `zero3_loading`)
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
