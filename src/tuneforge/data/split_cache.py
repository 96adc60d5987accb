"""The data cache: one folder per encoded split, named by a hash of everything the samples depend on.

    <TUNEFORGE_CACHE or ~/.cache/tuneforge>/datasets/<cache key>/
        data/shard-00000.arrow ...      the encoded samples, Arrow stream files read memory-mapped, in name order
        report.json                     the data report of that encoding

An entry is written in a staging folder next to it and put in place with one rename, so a crash never leaves a
half-written entry; when the cache folder cannot be written, the split lives in a temporary folder for the run.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tuneforge.config.args import DataArguments
from tuneforge.config.stages import stage_record
from tuneforge.data.arrow_files import read_dataset, temporary_folder
from tuneforge.data.loaders import _files_of
from tuneforge.data.facts import AUGMENTATION_VERSION
from tuneforge.data.registry import DatasetSpec
from tuneforge.data.report import DataReport

CACHE_VERSION = "tuneforge-data-2"  # 2: Arrow shard files instead of `save_to_disk`


def cache_root() -> Path:
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
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        # the whole fast tokenizer (vocabulary, merges, normalizer, pre-tokenizer, added tokens): two tokenizers
        # with one vocabulary can still cut text differently. Its JSON starts with the per-call settings
        # (version, truncation, padding), which are left out; the rest is in a fixed order (ids, not a hash map).
        spec = backend.to_str()
        vocab = hashlib.sha1(spec[max(spec.find('"added_tokens"'), 0):].encode()).hexdigest()
    else:
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
    "val_size", "eval_on_each_dataset",  # applied after the split is encoded (eval_on_each: one spec per split)
    "tokenized_path",  # where the result is also saved; the same samples either way
    "streaming", "buffer_size",  # a streamed run has no cache (data/streaming.py)
    "data_shared_file_system",  # which process encodes first; the same samples
    "media_dir",  # in the vision fingerprint (data/media.py), resolved
})


def cache_key(specs, split, data: DataArguments, tokenizer, template, stage, seed, augmented: bool | dict = False,
              vision=None) -> str:
    key = {
        "augment_facts": augmented and {"settings": augmented, "version": AUGMENTATION_VERSION},
        "version": CACHE_VERSION,
        "stage": stage,
        "split": split,
        "seed": seed,
        "specs": [[repr(s), _file_fingerprint(s)] for s in specs],
        "data": {f.name: getattr(data, f.name) for f in dataclasses.fields(data) if f.name not in NOT_IN_CACHE_KEY},
        "tokenizer": _tokenizer_fingerprint(tokenizer),
        "template": _template_fingerprint(template) if stage_record(stage).data != "text" else None,
    }
    if vision is not None:  # a vision-language model's image settings and processor (data/media.py)
        key["vision"] = vision.fingerprint()
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_cached(cache_dir: Path) -> tuple[Any, DataReport] | None:
    """(memory-mapped dataset, report) of a cache entry, or None when it is incomplete or unreadable (rebuilt)."""
    files = sorted((cache_dir / "data").glob("*.arrow"))
    if not files:
        return None
    try:
        report = DataReport.from_json(json.loads((cache_dir / "report.json").read_text(encoding="utf-8")))
        return read_dataset(files), report
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        return None


def staging_folder(cache_dir: Path) -> Path:
    """An empty folder to encode into: next to `cache_dir`, or a temporary one (removed at exit) when the cache
    folder cannot be written -- caching is an optimisation and must not stop a run."""
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=cache_dir.parent, prefix=".tmp-"))
    except OSError:
        return temporary_folder()


def publish(staging: Path, cache_dir: Path) -> Path:
    """Put a finished staging folder in place as `cache_dir` (replacing an old entry); where its files now are."""
    try:
        if cache_dir.exists():
            shutil.rmtree(cache_dir)
        os.replace(staging, cache_dir)
        return cache_dir
    except OSError:
        atexit.register(shutil.rmtree, staging, True)
        return staging
