"""`build_datasets`: dataset names in a run config -> encoded train/eval datasets + a report.

    specs (registry) -> rows (loaders, num_samples/max_samples) -> Conversations (formats, bad rows
    reported) -> mix (concat / interleave) -> encode (data/stage_encode.py, in `preprocessing_num_workers`
    processes: data/workers.py; cached on disk) -> val_size split -> sft `packing: true`: LF's bins (data/packing.py)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.data.facts import augment_conversations
from tuneforge.data.loaders import _files_of
from tuneforge.data.packing import encoding_args, pack_split, packing_mode
from tuneforge.data.registry import DatasetSpec, load_dataset_specs
from tuneforge.config.args import DataArguments, split_names
from tuneforge.config.parser import RunConfig
from tuneforge.config.stages import stage_record
from tuneforge.data.report import DataReport
from tuneforge.data.rows import read_conversations
from tuneforge.data.stage_encode import ROW_ENCODERS, feedback_items, feedback_note, features, pt_blocks, to_dataset
from tuneforge.data.workers import encode_rows
from tuneforge.errors import ConfigError, DataError, NotSupportedError

CACHE_VERSION = "tuneforge-data-1"


@dataclass
class DatasetBundle:
    train: Any  # datasets.Dataset with the stage's columns (stage_encode.KIND_COLUMNS; + position_ids when packed)
    eval: Any  # datasets.Dataset or None
    report: DataReport


def build_datasets(cfg: RunConfig, tokenizer, template, stage: str = "sft") -> DatasetBundle:
    data = cfg.data
    seed = cfg.training.seed
    seed = 42 if seed is None else int(seed)  # HF's default seed
    config_dir = Path(cfg.config_path).parent if cfg.config_path else None
    val_size = data.val_size

    if data.streaming:
        raise NotSupportedError("`streaming: true` is not supported yet; datasets are loaded and cached in full")
    if not split_names(data.dataset):
        raise ConfigError("`dataset` is not set: name at least one dataset (from dataset_info.json or a file path)")
    if split_names(data.eval_dataset) and val_size:
        raise ConfigError("set either `val_size` or `eval_dataset`, not both")
    dataset_dir = data.dataset_dir or "data"
    train_specs = load_dataset_specs(data.dataset, dataset_dir, config_dir)
    eval_specs = load_dataset_specs(data.eval_dataset, dataset_dir, config_dir)
    check_stage(train_specs + eval_specs, stage)

    report = DataReport()
    train = build_split(train_specs, "train", cfg, tokenizer, template, stage, seed, report)
    evaluation = build_split(eval_specs, "eval", cfg, tokenizer, template, stage, seed, report) if eval_specs else None
    if val_size and len(train) > 0:
        test_size = int(val_size) if val_size > 1 else float(val_size)
        try:
            parts = train.train_test_split(test_size=test_size, seed=seed)
        except ValueError as err:
            raise ConfigError(f"val_size={val_size} cannot split {len(train)} training samples: {err}") from err
        train, evaluation = parts["train"], parts["test"]
    if stage_record(stage).data == "supervised" and packing_mode(data) == "bins":  # LF's packing: after the split, as LF does
        train = pack_split(train, data, report, "train")
        evaluation = pack_split(evaluation, data, report, "eval") if evaluation is not None else None

    report.train_samples = len(train)
    report.eval_samples = len(evaluation) if evaluation is not None else 0
    report.check_not_empty("train", len(train))
    if eval_specs:
        report.check_not_empty("eval", report.eval_samples)
    return DatasetBundle(train, evaluation, report)


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
def build_split(specs, split, cfg: RunConfig, tokenizer, template, stage, seed, report: DataReport):
    from datasets import Dataset

    data = cfg.data
    cache_dir = _cache_root() / _cache_key(specs, split, data, tokenizer, template, stage, seed, _augments(cfg, split, stage))
    if cache_dir.is_dir() and not data.overwrite_cache:
        try:
            dataset = Dataset.load_from_disk(str(cache_dir / "data"))
            cached = DataReport.from_json(json.loads((cache_dir / "report.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, FileNotFoundError):
            pass  # a broken cache entry is rebuilt below
        else:
            report.datasets.update(cached.datasets)
            report.notes.extend(cached.notes)
            report.notes.append(f"{split}: tokenized data loaded from cache {cache_dir}")
            return dataset

    part = DataReport()
    mixed = read_conversations(specs, split, data, seed, part)
    if _augments(cfg, split, stage):  # fact data: more phrasings per fact (data/facts.py)
        mixed, added = augment_conversations(mixed, seed)
        part.notes.append(f"{split}: augment_facts added {added} question(s) to {len(mixed) - added} row(s)")

    encode_data = encoding_args(data)  # LF: `packing: true` encodes with cutoff_len - 1
    kind = stage_record(stage).data
    items = feedback_items(mixed, data) if kind == "feedback" else mixed
    columns = encode_rows(ROW_ENCODERS[kind], items, (template, tokenizer, encode_data), part, split,
                          data.preprocessing_num_workers)
    if kind == "feedback":
        note = feedback_note(columns, split)
        if note:
            part.notes.append(note)
    elif kind == "text":
        columns = pt_blocks(columns["documents"], encode_data)
    dataset = to_dataset(columns, features(kind))
    _save_cache(cache_dir, dataset, part)
    report.datasets.update(part.datasets)
    report.notes.extend(part.notes)
    return dataset


# ----------------------------------------------------------------------------- cache
def _cache_root() -> Path:
    return Path(os.environ.get("TUNEFORGE_CACHE") or Path.home() / ".cache" / "tuneforge") / "datasets"


def _file_fingerprint(spec: DatasetSpec) -> Any:
    if spec.load_from != "file":
        return [spec.hf_hub_url, spec.ms_hub_url, spec.script_url, spec.revision]
    prints = []
    for file in _files_of(spec.local_path):
        digest = hashlib.sha1()
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        prints.append([str(file.resolve()), digest.hexdigest()])
    return prints


def _tokenizer_fingerprint(tokenizer) -> Any:
    vocab = hashlib.sha1(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    template = hashlib.sha1(str(getattr(tokenizer, "chat_template", "")).encode()).hexdigest()
    return [type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), vocab, template,
            tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
            bool(getattr(tokenizer, "add_bos_token", False))]


def _template_fingerprint(template) -> Any:
    if template is None:
        return None
    custom = getattr(template, "fingerprint", None)  # a Template may describe itself fully
    if callable(custom):
        return custom()
    if dataclasses.is_dataclass(template):  # built-in templates: frozen dataclasses of plain data
        return repr(template)
    return [type(template).__name__, getattr(template, "name", None), getattr(template, "efficient_eos", None),
            getattr(template, "default_system", None), list(getattr(template, "stop_words", ()) or ())]


# DataArguments fields that do not change the encoded samples; every other field is part of the cache key,
# so a new field invalidates old caches instead of being silently ignored by them.
NOT_IN_CACHE_KEY = frozenset({
    "dataset", "eval_dataset", "dataset_dir",  # the specs (with their files' fingerprints) stand for them
    "overwrite_cache", "preprocessing_num_workers",  # the same samples either way (tested)
    "val_size", "eval_on_each_dataset",  # applied after the split is encoded
    "streaming", "buffer_size", "tokenized_path", "data_shared_file_system", "media_dir",  # refused when set
})


def _augments(cfg: RunConfig, split: str, stage: str) -> bool:
    return split == "train" and stage_record(stage).data == "supervised" and bool(cfg.facts.augment_facts)


def _cache_key(specs, split, data: DataArguments, tokenizer, template, stage, seed, augmented: bool = False) -> str:
    key = {
        "augment_facts": augmented,
        "version": CACHE_VERSION,
        "stage": stage,
        "split": split,
        "seed": seed,
        "specs": [[repr(s), _file_fingerprint(s)] for s in specs],
        "data": {f.name: getattr(data, f.name) for f in dataclasses.fields(data) if f.name not in NOT_IN_CACHE_KEY},
        "tokenizer": _tokenizer_fingerprint(tokenizer),
        "template": _template_fingerprint(template) if stage_record(stage).data != "text" else None,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _save_cache(cache_dir: Path, dataset, report: DataReport) -> None:
    """Write next to the final place, then rename: a crash never leaves a half-written entry."""
    tmp = None
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir.parent, prefix=".tmp-"))
        _quietly(dataset.save_to_disk, str(tmp / "data"))
        (tmp / "report.json").write_text(json.dumps(report.to_json()), encoding="utf-8")
        if cache_dir.exists():
            shutil.rmtree(cache_dir)
        os.replace(tmp, cache_dir)
    except OSError:  # caching is an optimisation; a read-only cache folder must not stop a run
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _quietly(function, *args):
    """Run without datasets' progress bars (a tiny save should not print three bars)."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        return function(*args)
    finally:
        if not was_disabled:
            enable_progress_bars()
