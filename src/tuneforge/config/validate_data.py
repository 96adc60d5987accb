"""Config checks of the data keys, prediction and the fact-data keys (part of `validate.check_consistency`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, NotSupportedError
from . import lf_v1
from .args import split_names


def dataset_dir_candidates(dataset_dir: str, config_dir: str | Path | None) -> list[Path]:
    """Where a relative `dataset_dir` is looked for: the working directory, then the config file's folder."""
    if Path(dataset_dir).is_absolute():
        return [Path(dataset_dir)]
    return [Path.cwd() / dataset_dir] + ([Path(config_dir) / dataset_dir] if config_dir is not None else [])


def check_data(v) -> None:
    if v["cutoff_len"] < 1:
        raise ConfigError(f"{v.where('cutoff_len')}: `cutoff_len` must be at least 1, got {v['cutoff_len']}")
    if v["mask_history"] and v["train_on_prompt"]:
        raise ConfigError(
            f"{v.where('mask_history', 'train_on_prompt')}: `mask_history` and `train_on_prompt` "
            "cannot both be true"
        )
    datasets, eval_datasets = split_names(v["dataset"]), split_names(v["eval_dataset"])
    val_size = v["val_size"]
    if val_size < 0:
        raise ConfigError(f"{v.where('val_size')}: `val_size` must be >= 0, got {val_size}")
    if val_size > 1e-6 and not datasets:
        raise ConfigError(f"{v.where('val_size')}: `val_size` needs `dataset` to split from")
    if val_size > 1e-6 and eval_datasets:
        raise ConfigError(
            f"{v.where('val_size', 'eval_dataset')}: set either `val_size` or `eval_dataset`, not both"
        )
    probs = v["interleave_probs"]
    if probs is not None:
        where = v.where("interleave_probs")
        if v["mix_strategy"] == "concat":
            raise ConfigError(f"{where}: `interleave_probs` needs `mix_strategy: interleave_under` or `interleave_over`")
        try:
            numbers = [float(p) for p in (probs.split(",") if isinstance(probs, str) else probs)]
        except ValueError:
            raise ConfigError(f"{where}: `interleave_probs` must be numbers, got {probs!r}") from None
        for names, key in ((datasets, "dataset"), (eval_datasets, "eval_dataset")):
            if names and len(names) != len(numbers):
                raise ConfigError(
                    f"{where}: `interleave_probs` has {len(numbers)} values but `{key}` names {len(names)} datasets"
                )
    if v["neat_packing"] and v["packing"] is False:
        raise ConfigError(f"{v.where('neat_packing')}: `neat_packing: true` needs packing; remove `packing: false`")
    if v["neat_packing"] and v["stage"] not in ("sft", "pt"):  # LF refuses it too (pt: config/stages.py)
        raise ConfigError(f"{v.where('neat_packing')}: `neat_packing` packs sft samples; stage is `{v['stage']}`")
    workers = v["preprocessing_num_workers"]
    if workers is not None and workers < 0:
        raise ConfigError(f"{v.where('preprocessing_num_workers')}: `preprocessing_num_workers` must be >= 0 "
                          f"(0 or 1: encode in this process), got {workers}")
    if v["preprocessing_batch_size"] < 1:
        raise ConfigError(f"{v.where('preprocessing_batch_size')}: `preprocessing_batch_size` must be at least 1, "
                          f"got {v['preprocessing_batch_size']}")
    if v["max_samples"] is not None and v["max_samples"] < 1:
        raise ConfigError(
            f"{v.where('max_samples')}: `max_samples` must be at least 1 (leave it unset to use every row), "
            f"got {v['max_samples']}"
        )
    _check_streaming(v)
    _check_dataset_dir(v)


def _check_streaming(v) -> None:
    """LF's limits of `streaming: true` (data/streaming.py): an iterable dataset has no length."""
    if not v["streaming"]:
        return
    where = v.where("streaming")
    if v["do_train"] and (v["max_steps"] is None or v["max_steps"] <= 0):
        raise ConfigError(f"{v.where('max_steps', 'streaming')}: `streaming: true` needs `max_steps` (a streamed "
                          "dataset has no length to count epochs by); set max_steps, or remove streaming")
    if v["max_samples"] is not None:
        raise ConfigError(f"{v.where('max_samples', 'streaming')}: `max_samples` cannot be used with `streaming: true` "
                          "(as in LLaMA-Factory)")
    if 0 < v["val_size"] < 1:
        raise ConfigError(f"{v.where('val_size', 'streaming')}: with `streaming: true`, `val_size` must be a number "
                          f"of samples (an integer), got {v['val_size']}")
    if v["buffer_size"] < 1:
        raise ConfigError(f"{v.where('buffer_size')}: `buffer_size` must be at least 1, got {v['buffer_size']}")
    if v["stage"] in ("ppo", "grpo"):
        raise NotSupportedError(f"{where}: `streaming: true` is not supported for stage {v['stage']} (it reads all its "
                                "prompts before training); remove streaming")


def check_predict(v) -> None:
    """What prediction needs, by stage, as in LLaMA-Factory 0.9.5: sft generates (`predict_with_generate`), rm
    scores the chosen/rejected answers (loss and accuracy); the other stages' workflows have no prediction."""
    if not v["do_predict"]:
        return
    stage = v["stage"]
    if stage not in ("sft", "rm"):
        raise ConfigError(f"{v.where('do_predict')}: `do_predict` does nothing with stage {stage} (LLaMA-Factory's "
                          f"{stage} workflow has no prediction step either; only sft and rm predict); remove it, or "
                          "use `do_eval` for the evaluation loss")
    if stage == "sft" and not v["predict_with_generate"]:
        raise ConfigError(f"{v.where('do_predict', 'predict_with_generate')}: `do_predict` with stage sft generates "
                          "the answers it saves: set `predict_with_generate: true` (LLaMA-Factory refuses it too: "
                          "\"Please enable `predict_with_generate` to save model predictions\"); for the loss on "
                          "a dataset use `do_eval` with `eval_dataset`")
    if stage == "sft" and not v["eval_dataset"]:
        raise ConfigError(f"{v.where('do_predict')}: `do_predict` reads the rows to answer from `eval_dataset`: set "
                          "`eval_dataset: <names from dataset_info.json>` (LLaMA-Factory also takes the `val_size` "
                          "split, which tuneforge does not predict on yet)")
    if stage == "rm" and not v["eval_dataset"] and v["val_size"] <= 1e-6:
        raise ConfigError(f"{v.where('do_predict')}: `do_predict` scores the pairs of the evaluation set: set "
                          "`eval_dataset: <names from dataset_info.json>` or `val_size`")


def check_facts(v) -> None:
    """tuneforge's fact-data keys (config/facts_args.py)."""
    if v["augment_facts"]:
        if v["stage"] != "sft":
            raise ConfigError(f"{v.where('augment_facts')}: `augment_facts` adds questions for sft data; "
                              f"stage is `{v['stage']}`")
        if v["val_size"] > 1e-6:
            raise ConfigError(f"{v.where('augment_facts', 'val_size')}: `augment_facts` with `val_size` would put "
                              "paraphrases of training rows into the validation split; use `eval_dataset` instead")
    if v["augment_chain_questions"] and not v["augment_facts"]:
        raise ConfigError(f"{v.where('augment_chain_questions')}: `augment_chain_questions` adds to the questions "
                          "`augment_facts: true` adds; set that too")
    if v["augment_chain_questions"] < 0:
        raise ConfigError(f"{v.where('augment_chain_questions')}: `augment_chain_questions` is a count (0 or more)")
    target = v["recall_target"]
    if target is not None:
        if not 0 < target <= 1:
            raise ConfigError(f"{v.where('recall_target')}: `recall_target` is a fraction in (0, 1], got {target}")
        if v["stage"] != "sft" or not v["do_train"]:
            raise ConfigError(f"{v.where('recall_target')}: `recall_target` stops an sft training run; "
                              f"this config has stage `{v['stage']}`, do_train {v['do_train']}")
        if v["recall_check_epochs"] <= 0 or v["recall_check_samples"] < 1:
            raise ConfigError(f"{v.where('recall_check_epochs', 'recall_check_samples')}: `recall_check_epochs` must "
                              "be positive and `recall_check_samples` at least 1")
    _check_float32_from_recall(v)


def _check_float32_from_recall(v) -> None:
    """`float32_from_recall` ends a mixed-precision run in float32 (train/precision_switch.py)."""
    start = v["float32_from_recall"]
    if start is None:
        return
    where = v.where("float32_from_recall")
    target = v["recall_target"]
    if target is None:
        raise ConfigError(f"{where}: `float32_from_recall` acts on the recall checks of `recall_target`; set that too")
    if not 0 < start < target:
        raise ConfigError(f"{where}: `float32_from_recall` is a fraction above 0 and below `recall_target` "
                          f"({target}), got {start}")
    if not (v["bf16"] or v["fp16"] or v["auto_bf16"]):
        raise ConfigError(f"{where}: `float32_from_recall` ends bf16 / fp16 mixed precision; this run computes in "
                          "float32 throughout -- set `bf16: true` (or `auto_bf16: true`) or remove the key")
    if v["pure_bf16"]:
        raise ConfigError(f"{where}: with `pure_bf16` the weights themselves are bf16, there is no float32 to go on "
                          "in; remove one of the two")
    if v["deepspeed"] or v["fsdp"]:
        raise NotSupportedError(f"{where}: `float32_from_recall` with {'DeepSpeed' if v['deepspeed'] else 'FSDP'} "
                                "(which sets the precision itself) is not supported yet")
    if v["quantization_bit"] is not None:
        raise NotSupportedError(f"{where}: `float32_from_recall` on a quantized model (QLoRA) is not supported yet")


def check_evaluation(v) -> None:
    """LF's evaluation keys (config/eval_args.py; the task folder itself is read by evaluate/mcq_data.py)."""
    if v["lang"] not in ("en", "zh"):
        raise ConfigError(f"{v.where('lang')}: `lang` is {v['lang']!r}; expected en or zh (the prompt language)")
    if v["n_shot"] < 0 or v["batch_size"] < 1:
        raise ConfigError(f"{v.where('n_shot', 'batch_size')}: `n_shot` must be >= 0 and `batch_size` >= 1")
    _check_early_stopping(v)


def _check_early_stopping(v) -> None:
    """LF's `early_stopping_steps` is HF's EarlyStoppingCallback (patience counted in evaluations), which asserts
    these at the first step; said here by key instead."""
    patience = v["early_stopping_steps"]
    if patience is None or not v["do_train"]:
        return
    where = v.where("early_stopping_steps")
    if patience < 1:
        raise ConfigError(f"{where}: `early_stopping_steps` is a number of evaluations without improvement, at "
                          f"least 1; got {patience}")
    if v["stage"] in ("ppo", "grpo"):
        raise ConfigError(f"{where}: `early_stopping_steps` watches evaluations, which stage {v['stage']} does not "
                          "run")
    if v["eval_strategy"] == "no" or not (v["val_size"] or split_names(v["eval_dataset"])):
        raise ConfigError(f"{where}: `early_stopping_steps` stops when `metric_for_best_model` has not improved for "
                          f"{patience} evaluations; the run needs evaluations: `eval_strategy: steps` with "
                          "`eval_steps`, and `val_size` or `eval_dataset`")
    if not v["load_best_model_at_end"]:
        raise ConfigError(f"{where}: `early_stopping_steps` needs `load_best_model_at_end: true` (HF's "
                          "EarlyStoppingCallback; the best checkpoint is kept and loaded at the end) with "
                          "`save_strategy` matching `eval_strategy`")


def _check_dataset_dir(v) -> None:
    """A `dataset_dir` naming a file (often dataset_info.json itself) where a folder is expected."""
    dataset_dir = v["dataset_dir"]
    if not dataset_dir or dataset_dir == "ONLINE" or dataset_dir.startswith("REMOTE:"):
        return
    if lf_v1.is_dataset_yaml(dataset_dir):  # a v1 config's train_dataset
        return
    candidates = dataset_dir_candidates(dataset_dir, v.config_dir)
    files = [path for path in candidates if path.is_file()]
    if files and not any(path.is_dir() for path in candidates):
        raise ConfigError(
            f"{v.where('dataset_dir')}: `dataset_dir` must be a folder (the one that holds dataset_info.json), "
            f"got the file '{dataset_dir}'; set `dataset_dir: {Path(dataset_dir).parent.as_posix()}`"
        )
