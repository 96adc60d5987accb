"""`build_datasets`: dataset names in a run config -> encoded train/eval datasets + a report.

    specs (registry) -> rows (loaders, num_samples/max_samples) -> Conversations (formats, bad rows
    reported) -> mix (concat / interleave) -> encode (data/stage_encode.py, in `preprocessing_num_workers`
    processes: data/workers.py) -> Arrow files, a chunk of rows at a time, read back memory-mapped (data/arrow_files.py;
    the cache entry, data/split_cache.py) -> val_size split -> sft `packing: true`: LF's bins (data/packing.py)

One dataset read whole in one process goes through these steps a row at a time (`rows.stream_conversations`): the
encoder starts on the first rows while the file is still being read, and the rows are never all in memory.

`eval_on_each_dataset: true` (LF): every eval dataset is encoded on its own (`DatasetBundle.eval_sets`) and
evaluated on its own (metrics `eval_<name>_loss`, ...; the Trainer's dict of eval datasets).

`tokenized_path` (LF): when that folder exists and is not empty, the encoded datasets are loaded from it and no
data is read (the other data keys are ignored, as in LF); otherwise the run encodes its data as usual, saves the
result there, and goes on. The folder's layout:

    <tokenized_path>/dataset_dict.json, train/, validation/        datasets' `DatasetDict.save_to_disk`, as LF:
                                                                    the final train and eval splits (packed when
                                                                    `packing: true`); with eval_on_each_dataset
                                                                    one `validation_<name>/` per eval dataset
    <tokenized_path>/tuneforge_data.json                            {"format", "stage", "eval_names",
                                                                    "report": the data report of the encoding}
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.data.arrow_files import WRITE_CHUNK, read_dataset, temporary_folder, write_chunks
from tuneforge.data.facts import augment_conversations
from tuneforge.data.media import run_vision_inputs
from tuneforge.data.packing import encoding_args, pack_split, packing_mode
from tuneforge.data.registry import DatasetSpec, load_dataset_specs
from tuneforge.config.args import split_names
from tuneforge.config.parser import RunConfig
from tuneforge.config.stages import stage_record
from tuneforge.data.report import DataReport
from tuneforge.data.rows import can_stream, read_conversations, stream_conversations
from tuneforge.data.split_cache import cache_key, cache_root, load_cached, publish, staging_folder
from tuneforge.data.stage_encode import (ROW_ENCODERS, encoded_features, feedback_items, feedback_note, features,
                                         pt_block_chunks)
from tuneforge.data.workers import encode_rows, worker_count
from tuneforge.errors import ConfigError, DataError

TOKENIZED_FORMAT = "tuneforge-tokenized-1"
TOKENIZED_INFO = "tuneforge_data.json"


@dataclass
class DatasetBundle:
    train: Any  # datasets.Dataset with the stage's columns (stage_encode.KIND_COLUMNS; + position_ids when packed)
    eval: Any  # datasets.Dataset or None (with eval_sets: all of them, concatenated)
    report: DataReport
    eval_sets: dict[str, Any] | None = None  # eval_on_each_dataset: eval dataset name -> its own Dataset
    vision: Any = None  # a vision-language model's image settings (data/media.py VisionInputs), for the collator

    @property
    def trainer_eval(self) -> Any:
        """What the Trainer evaluates: one Dataset, or a dict (one evaluation per dataset, `eval_<name>_...`)."""
        return self.eval_sets if self.eval_sets is not None else self.eval


def build_datasets(cfg: RunConfig, tokenizer, template, stage: str = "sft") -> DatasetBundle:
    """The run's encoded splits. In a multi-process run each node's first process encodes (and caches)
    first and the others then read its cache, as LF does: one encoding, and no rank waits on a
    collective timeout while the others tokenize. With `data_shared_file_system` (LF: the nodes share
    the cache's file system) only the first process of all encodes first."""
    with cfg.training.main_process_first(local=not cfg.data.data_shared_file_system, desc="encoding the datasets"):
        return _build_datasets(cfg, tokenizer, template, stage)


def _build_datasets(cfg: RunConfig, tokenizer, template, stage: str) -> DatasetBundle:
    data = cfg.data
    if data.streaming:  # IterableDatasets encoded while training (data/streaming.py)
        from tuneforge.data.streaming import build_streaming_datasets

        return build_streaming_datasets(cfg, tokenizer, template, stage)
    if data.tokenized_path and _has_tokenized_data(data.tokenized_path):
        return load_tokenized_for_run(cfg, tokenizer, stage)
    bundle = _encode_datasets(cfg, tokenizer, template, stage)
    if data.tokenized_path and cfg.training.should_save:  # LF: the main process saves
        save_tokenized(data.tokenized_path, bundle, stage)
    return bundle


def load_tokenized_for_run(cfg: RunConfig, tokenizer, stage: str) -> DatasetBundle:
    """`tokenized_path`'s samples; saved by a vision-language model's run, with the run's image settings."""
    path = cfg.data.tokenized_path
    bundle = load_tokenized(path, stage)
    if "images" in bundle.train.column_names:
        bundle.vision = run_vision_inputs(cfg, tokenizer, stage, [])
        if bundle.vision is None:
            raise DataError(f"tokenized_path: {path} holds samples with images, but the model "
                            f"({cfg.model.model_name_or_path}) does not take images")
    return bundle


def _encode_datasets(cfg: RunConfig, tokenizer, template, stage: str) -> DatasetBundle:
    data = cfg.data
    seed = cfg.training.seed
    seed = 42 if seed is None else int(seed)  # HF's default seed
    config_dir = Path(cfg.config_path).parent if cfg.config_path else None
    val_size = data.val_size

    if not split_names(data.dataset):
        raise ConfigError("`dataset` is not set: name at least one dataset (from dataset_info.json or a file path)")
    if split_names(data.eval_dataset) and val_size:
        raise ConfigError("set either `val_size` or `eval_dataset`, not both")
    dataset_dir = data.dataset_dir or "data"
    train_specs = load_dataset_specs(data.dataset, dataset_dir, config_dir)
    eval_specs = load_dataset_specs(data.eval_dataset, dataset_dir, config_dir)
    vision = run_vision_inputs(cfg, tokenizer, stage, train_specs + eval_specs)
    check_stage(train_specs + eval_specs, stage)

    report = DataReport()
    train = build_split(train_specs, "train", cfg, tokenizer, template, stage, seed, report, vision)
    eval_sets = None
    if eval_specs and data.eval_on_each_dataset:  # LF: each eval dataset on its own, not mixed
        names = [spec.name for spec in eval_specs]
        if len(set(names)) < len(names):
            raise ConfigError(f"eval_on_each_dataset: `eval_dataset` names a dataset twice ({', '.join(names)})")
        eval_sets = {spec.name: build_split([spec], "eval", cfg, tokenizer, template, stage, seed, report, vision)
                     for spec in eval_specs}
        evaluation = _concatenate(list(eval_sets.values()))
    else:
        evaluation = build_split(eval_specs, "eval", cfg, tokenizer, template, stage, seed, report,
                                 vision) if eval_specs else None
    if data.eval_on_each_dataset and not eval_specs:
        report.notes.append("eval_on_each_dataset has no effect without `eval_dataset` (as in LLaMA-Factory)")
    if val_size and len(train) > 0:
        test_size = int(val_size) if val_size > 1 else float(val_size)
        try:
            # the split's indices in a folder of this run's: by default they go next to the memory-mapped cache
            # files, where two runs of one cache entry would overwrite each other's
            indices = temporary_folder()
            parts = train.train_test_split(test_size=test_size, seed=seed, load_from_cache_file=False,
                                           train_indices_cache_file_name=str(indices / "train.arrow"),
                                           test_indices_cache_file_name=str(indices / "test.arrow"))
        except ValueError as err:
            raise ConfigError(f"val_size={val_size} cannot split {len(train)} training samples: {err}") from err
        train, evaluation = parts["train"], parts["test"]
    if stage_record(stage).data == "supervised" and packing_mode(data) == "bins":  # LF's packing: after the split, as LF does
        train = pack_split(train, data, report, "train")
        if eval_sets is not None:
            eval_sets = {name: pack_split(split, data, report, f"eval ({name})") for name, split in eval_sets.items()}
            evaluation = _concatenate(list(eval_sets.values()))
        else:
            evaluation = pack_split(evaluation, data, report, "eval") if evaluation is not None else None

    report.train_samples = len(train)
    report.eval_samples = len(evaluation) if evaluation is not None else 0
    report.check_not_empty("train", len(train))
    if eval_specs:
        report.check_not_empty("eval", report.eval_samples)
    for name, split in (eval_sets or {}).items():
        if len(split) == 0:
            raise DataError(f"eval_on_each_dataset: eval dataset {name} has no samples left (see the data report)")
    return DatasetBundle(train, evaluation, report, eval_sets, vision)


def _concatenate(splits):
    from datasets import concatenate_datasets

    return splits[0] if len(splits) == 1 else concatenate_datasets(splits)


# ----------------------------------------------------------------------------- tokenized_path
def _has_tokenized_data(path: str) -> bool:
    """LF's `has_tokenized_data`: a folder that exists and is not empty."""
    return os.path.isdir(path) and len(os.listdir(path)) > 0


def tokenized_summary(path: str, stage: str) -> str | None:
    """What a run would load from `tokenized_path` (None: nothing there yet, the run encodes and saves); --dry-run."""
    if not _has_tokenized_data(path):
        return None
    report = _tokenized_info(path, stage)["report"]
    return (f"loaded from tokenized_path {path}: {report.get('train_samples', 0)} train / "
            f"{report.get('eval_samples', 0)} eval sample(s), encoded for stage {stage}; the datasets are not read")


def _tokenized_info(path: str, stage: str) -> dict[str, Any]:
    """tokenized_path's tuneforge_data.json, checked: a tuneforge encoding for this stage."""
    info_file = Path(path) / TOKENIZED_INFO
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"tokenized_path: {path} is not empty but holds no tuneforge tokenized data ({info_file}: "
                        f"{err}); point tokenized_path at a new folder to encode and save the data there") from None
    if info.get("format") != TOKENIZED_FORMAT:
        raise DataError(f"tokenized_path: {info_file} has format {info.get('format')!r}, expected {TOKENIZED_FORMAT!r}")
    if info.get("stage") != stage:
        raise ConfigError(f"tokenized_path: {path} holds data encoded for stage {info.get('stage')}, "
                          f"not for stage {stage}")
    return info


def load_tokenized(path: str, stage: str) -> DatasetBundle:
    """The bundle `save_tokenized` wrote to `path` (the module docstring has the layout); no data is read."""
    from datasets import load_from_disk

    info = _tokenized_info(path, stage)
    splits = quietly(load_from_disk, str(path))
    report = DataReport.from_json(info.get("report", {}))
    report.notes.append(f"tokenized data loaded from tokenized_path {path}; the other data keys are not read "
                        "(as in LLaMA-Factory)")
    eval_names = info.get("eval_names")
    eval_sets = {name: splits[f"validation_{name}"] for name in eval_names} if eval_names else None
    evaluation = _concatenate(list(eval_sets.values())) if eval_sets else splits.get("validation")
    return DatasetBundle(splits["train"], evaluation, report, eval_sets)


def save_tokenized(path: str, bundle: DatasetBundle, stage: str) -> None:
    """LF's save of the encoded splits (`train`, `validation` or `validation_<name>`), and tuneforge's report next
    to them; written to a staging folder first and put in place with one rename."""
    from datasets import DatasetDict

    splits = {"train": bundle.train}
    if bundle.eval_sets is not None:
        splits.update({f"validation_{name}": split for name, split in bundle.eval_sets.items()})
    elif bundle.eval is not None:
        splits["validation"] = bundle.eval
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        quietly(DatasetDict(splits).save_to_disk, str(staging))
        info = {"format": TOKENIZED_FORMAT, "stage": stage,
                "eval_names": list(bundle.eval_sets) if bundle.eval_sets is not None else None,
                "report": bundle.report.to_json()}
        (staging / TOKENIZED_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if target.is_dir():
            target.rmdir()  # empty (a folder with files is loaded instead)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    bundle.report.notes.append(f"tokenized data saved to tokenized_path {path}: later runs with this "
                               "tokenized_path load it instead of reading the data")


def quietly(function, *args):
    """Run without datasets' progress bars (a tiny save should not print three bars)."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        return function(*args)
    finally:
        if not was_disabled:
            enable_progress_bars()


def check_stage(specs: list[DatasetSpec], stage: str) -> None:
    """Each dataset has the kind of data the stage's record (config/stages.py) asks for."""
    kind = stage_record(stage).data
    for spec in specs:
        if kind != "pairwise" and spec.ranking:
            raise DataError(f"{spec.where} is a ranking dataset (ranking: true, chosen/rejected answers), "
                            f"but stage '{stage}' needs plain samples. Use stage rm/dpo, or another dataset.")
        if kind == "pairwise" and not spec.ranking:
            raise DataError(f"{spec.where} is not a ranking dataset, but stage '{stage}' needs chosen/rejected "
                            "pairs. Set `ranking: true` and the chosen/rejected columns in dataset_info.json.")
        if kind == "feedback" and not spec.columns.kto_tag:
            raise DataError(f"{spec.where} has no `kto_tag` column, which stage '{stage}' needs")


# ----------------------------------------------------------------------------- one split
def build_split(specs, split, cfg: RunConfig, tokenizer, template, stage, seed, report: DataReport, vision=None):
    """One split's encoded samples, a memory-mapped Dataset: from the cache, or read, encoded into Arrow files
    chunk by chunk (data/arrow_files.py) and published as a cache entry. `vision`: a vision-language model's
    image settings (data/media.py)."""
    data = cfg.data
    cache_dir = cache_root() / cache_key(specs, split, data, tokenizer, template, stage, seed,
                                         _augments(cfg, split, stage), vision)
    if cache_dir.is_dir() and not data.overwrite_cache:
        cached = load_cached(cache_dir)
        if cached is not None:
            dataset, cached_report = cached
            report.datasets.update(cached_report.datasets)
            report.notes.extend(cached_report.notes)
            report.notes.append(f"{split}: tokenized data loaded from cache {cache_dir}")
            return dataset

    staging = staging_folder(cache_dir)
    try:
        with cyclic_gc_paused():
            names, part = _read_and_encode(specs, split, cfg, tokenizer, template, stage, seed, staging / "data",
                                           vision)
        (staging / "report.json").write_text(json.dumps(part.to_json()), encoding="utf-8")
    except OSError as err:  # the encoded samples live in these files: without them there is nothing to train on
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"could not write the encoded {split} split to {staging}: {err}; free disk space there or "
                        "point TUNEFORGE_CACHE at a folder with room") from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    folder = publish(staging, cache_dir)
    report.datasets.update(part.datasets)
    report.notes.extend(part.notes)
    return read_dataset(folder / "data" / name for name in names)


@contextmanager
def cyclic_gc_paused():
    """Python's cycle collector off while a split is read and encoded: millions of new token lists would trigger
    full collections that scan every one of them again (~15% of the encoding time); any cycle made meanwhile
    is collected later."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_and_encode(specs, split, cfg: RunConfig, tokenizer, template, stage, seed, folder: Path, vision=None):
    """Read, convert and encode a split into Arrow files in `folder`: (their names in row order, the report)."""
    data = cfg.data
    part = DataReport()
    kind = stage_record(stage).data
    augments = _augments(cfg, split, stage)
    # rows converted while the file is read, encoded as they come: where nothing needs the whole split at once
    # (workers' own rule, for a split of any size: a small one may be encoded in one process anyway)
    one_process = worker_count(data.preprocessing_num_workers, rows=sys.maxsize) == 1
    streamed = can_stream(specs, data) and not augments and kind != "feedback" and one_process
    mixed = (stream_conversations(specs, split, data, part, vision) if streamed
             else read_conversations(specs, split, data, seed, part, vision))
    if augments:  # fact data: more phrasings per fact (data/facts.py)
        mixed, added = augment_conversations(mixed, seed, cfg.facts.augment_chain_questions)
        part.notes.append(f"{split}: augment_facts added {added} question(s) to {len(mixed) - added} row(s)")

    encode_data = encoding_args(data)  # LF: `packing: true` encodes with cutoff_len - 1
    items = feedback_items(mixed, data) if kind == "feedback" else mixed
    del mixed
    paths = encode_rows(ROW_ENCODERS[kind], items, (template, tokenizer, encode_data), part, split, folder,
                        encoded_features(kind, images=vision is not None), data.preprocessing_num_workers)
    del items
    if kind == "feedback":
        note = feedback_note(read_dataset(paths)["kto_tag"], split)
        if note:
            part.notes.append(note)
    elif kind == "text":  # pt's blocks run across documents: cut once every shard is in
        documents = read_dataset(paths)
        batches = (batch["documents"] for batch in documents.iter(batch_size=WRITE_CHUNK))
        write_chunks(folder / "blocks.arrow", features(kind), pt_block_chunks(batches, encode_data))
        del documents
        for path in paths:
            path.unlink()
        paths = [folder / "blocks.arrow"]
    return [path.name for path in paths], part


def _augments(cfg: RunConfig, split: str, stage: str) -> bool | dict:
    """What fact augmentation does to this split (a part of its cache key): False, True or its settings."""
    on = split == "train" and stage_record(stage).data == "supervised" and bool(cfg.facts.augment_facts)
    return {"chain_questions": cfg.facts.augment_chain_questions} if on and cfg.facts.augment_chain_questions else on
