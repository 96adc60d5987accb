"""`streaming: true` (LLaMA-Factory's dataset streaming): the datasets become HF `IterableDataset`s that read,
convert and encode rows while the run trains, so training starts without encoding (or caching) everything first.

    specs -> one IterableDataset per dataset, rows read lazily from its files and converted (bad rows reported)
          -> mixed: `concat` (one after the other: no mixing, as LF warns) or `interleave_*` (datasets'
             `interleave_datasets` with `interleave_probs` and the seed)
          -> `.map(batched, batch_size=preprocessing_batch_size)`: the pipeline's own row encoders
             (data/stage_encode.py; kto's mismatched answers and pt's blocks within each batch, sft
             `packing: true` bins within each batch: LF's streaming semantics)
          -> train: `.shuffle(buffer_size, seed)`, then an integer `val_size` is `take(n)` for eval and
             `skip(n)` for training (LF's `split_dataset`); `eval_dataset` is shuffled the same way

As in LF: `max_steps` is required (an iterable has no length, config/validate.py), `max_samples` and a fractional
`val_size` are refused, `num_samples` is not applied, and `tokenized_path` can only load (the encoded data is
never complete in a streamed run). Stage ppo reads its prompts up front and is refused. A vision-language
model's rows keep their images (expanded as data/media.py does, read again per batch by its collator). The data
report counts what has been read so far; a sample of the first batch is encoded before training to fail early when
a dataset has no usable rows. Hub datasets are downloaded as usual and then streamed.
"""

from __future__ import annotations

import pickle
from itertools import chain, islice
from pathlib import Path

from tuneforge.config.parser import RunConfig
from tuneforge.config.stages import stage_record
from tuneforge.data.facts import augment_conversations
from tuneforge.data.formats import RowError, check_column_mapping, convert_row
from tuneforge.data.loaders import iter_hub_rows, iter_local_rows, origin_of
from tuneforge.data.media import run_vision_inputs
from tuneforge.data.packing import encoding_args, pack_columns, packed_schema, packing_mode
from tuneforge.data.report import DataReport
from tuneforge.data import split_cache
from tuneforge.data.rows import MIX_STRATEGIES, _STOPPING
from tuneforge.data.stage_encode import ROW_ENCODERS, feedback_items, features, pt_blocks
from tuneforge.errors import ConfigError, NotSupportedError

COLUMN_CHECK_ROWS = 1000  # rows the column-mapping check sees (the whole dataset when not streaming)


class StreamingReport(DataReport):
    """The data report of a streamed run: its counts grow while the run reads the data."""

    def format(self) -> str:
        lines = super().format().splitlines()
        lines[0] = ("data: streamed (streaming: true): rows are read and encoded while training, so the counts "
                    "below are the rows read so far")
        return "\n".join(lines)


def build_streaming_datasets(cfg: RunConfig, tokenizer, template, stage: str):
    """The run's splits as `IterableDataset`s (see the module docstring); a `pipeline.DatasetBundle`."""
    from tuneforge.data import pipeline
    from tuneforge.data.registry import load_dataset_specs
    from tuneforge.config.args import split_names

    data = cfg.data
    kind = stage_record(stage).data
    if kind == "prompt":
        raise NotSupportedError(f"`streaming: true` is not supported for stage {stage}: it reads all its prompts "
                                "before training; remove `streaming`")
    if data.tokenized_path:
        return _load_tokenized(cfg, tokenizer, stage)
    if data.max_samples is not None or (0 < data.val_size < 1):  # config/validate.py refuses these first
        raise ConfigError("streaming: `max_samples` and a fractional `val_size` need the dataset's length")
    if data.mix_strategy not in MIX_STRATEGIES:
        raise ConfigError(f"mix_strategy '{data.mix_strategy}' is not one of {', '.join(MIX_STRATEGIES)}")
    seed = 42 if cfg.training.seed is None else int(cfg.training.seed)
    config_dir = Path(cfg.config_path).parent if cfg.config_path else None
    dataset_dir = data.dataset_dir or "data"
    if not split_names(data.dataset):
        raise ConfigError("`dataset` is not set: name at least one dataset (from dataset_info.json or a file path)")
    train_specs = load_dataset_specs(data.dataset, dataset_dir, config_dir)
    eval_specs = load_dataset_specs(data.eval_dataset, dataset_dir, config_dir)
    vision = run_vision_inputs(cfg, tokenizer, stage, train_specs + eval_specs)  # image settings, or None
    pipeline.check_stage(train_specs + eval_specs, stage)

    report = StreamingReport()
    report.notes.append(f"streaming: datasets read and encoded while training, shuffled with buffer_size "
                        f"{data.buffer_size}")
    if any(spec.num_samples is not None for spec in train_specs + eval_specs):
        report.notes.append("streaming: `num_samples` in dataset_info.json is not applied (as in LLaMA-Factory)")
    if data.mix_strategy == "concat" and len(train_specs) > 1:
        report.notes.append("streaming: with mix_strategy concat the datasets are read one after the other, not "
                            "mixed (LLaMA-Factory warns the same); use an interleave_* strategy to mix them")

    def split_of(specs, split, into):
        return stream_split(specs, split, cfg, tokenizer, template, stage, seed, into, vision)

    for specs, split in ((train_specs, "train"), (eval_specs, "eval")):
        if specs:  # fail now, not at the first step, when no row of a split can be used
            try:
                next(iter(split_of(specs, split, DataReport())))
            except StopIteration:
                probe = DataReport()
                for _ in split_of(specs, split, probe):
                    pass
                probe.check_not_empty(split, 0)

    train = split_of(train_specs, "train", report).shuffle(buffer_size=data.buffer_size, seed=seed)
    evaluation, eval_sets = None, None
    if data.val_size:
        count = int(data.val_size)
        evaluation, train = train.take(count), train.skip(count)
        report.notes.append(f"streaming: the first {count} shuffled sample(s) are the eval split (val_size)")
    elif eval_specs and data.eval_on_each_dataset:  # LF: each eval dataset on its own, not shuffled
        eval_sets = {spec.name: split_of([spec], "eval", report) for spec in eval_specs}
        from datasets import concatenate_datasets

        evaluation = concatenate_datasets(list(eval_sets.values()))
    elif eval_specs:
        evaluation = split_of(eval_specs, "eval", report).shuffle(buffer_size=data.buffer_size, seed=seed)
    # what a resumed run compares (train/resume.py): the data's identity (files, settings, tokenizer), not samples
    train.tuneforge_fingerprint = split_cache.cache_key(train_specs, "train", data, tokenizer, template, stage, seed,
                                                      pipeline._augments(cfg, "train", stage), vision)
    return pipeline.DatasetBundle(train, evaluation, report, eval_sets, vision)


def _load_tokenized(cfg: RunConfig, tokenizer, stage: str):
    """LF: streaming loads an existing tokenized_path as an iterable dataset; it cannot save one."""
    from tuneforge.data import pipeline

    path = cfg.data.tokenized_path
    if not pipeline._has_tokenized_data(path):
        raise ConfigError(f"tokenized_path: {path} holds no tokenized data yet, and a streamed run cannot save it "
                          "(it never has the whole encoded dataset); run once without `streaming` to save it")
    bundle = pipeline.load_tokenized_for_run(cfg, tokenizer, stage)
    bundle.train = bundle.train.to_iterable_dataset()
    bundle.train.tuneforge_fingerprint = f"tokenized_path:{Path(path).resolve()}"
    return bundle


def stream_split(specs, split, cfg: RunConfig, tokenizer, template, stage, seed, report: DataReport, vision=None):
    """One split as an encoded `IterableDataset`: the datasets' rows mixed, then encoded in batches of
    `preprocessing_batch_size` rows with the pipeline's encoders; what happens is counted in `report`. `vision`: a
    vision-language model's image settings (data/media.py): each row's `<image>` tags expanded, its paths kept."""
    from datasets import concatenate_datasets, interleave_datasets

    data = cfg.data
    kind = stage_record(stage).data
    sources = [_conversation_stream(spec, split, report, vision) for spec in specs]
    if len(sources) == 1 or data.mix_strategy == "concat":
        mixed = sources[0] if len(sources) == 1 else concatenate_datasets(sources)
    else:
        probs = list(data.interleave_probs) if data.interleave_probs is not None else None
        if probs is not None and len(probs) != len(sources):
            raise ConfigError(f"interleave_probs has {len(probs)} value(s) but there are {len(sources)} datasets")
        mixed = interleave_datasets(sources, probabilities=probs, seed=seed, stopping_strategy=_STOPPING[data.mix_strategy])

    encode_data = encoding_args(data)  # LF: `packing: true` encodes with cutoff_len - 1
    packed = kind == "supervised" and packing_mode(data) == "bins"
    augment = split == "train" and kind == "supervised" and bool(cfg.facts.augment_facts)
    schema = features(kind, images=vision is not None)
    if packed:
        schema = packed_schema(images=vision is not None)
    batches = [0]

    def encode(batch):
        items = [pickle.loads(item) for item in batch["item"]]
        for name, _ in items:
            report.stats(name, split).rows_used += 1
        if augment:  # fact data: more phrasings per fact (data/facts.py), within the batch
            items, _ = augment_conversations(items, seed + batches[0], cfg.facts.augment_chain_questions)
        batches[0] += 1
        if kind == "feedback":
            items = feedback_items(items, data)  # mismatched answers within the batch, as LF
        columns = ROW_ENCODERS[kind](items, template, tokenizer, encode_data, report, split)
        if kind == "text":
            columns = pt_blocks(columns["documents"], encode_data)  # blocks within the batch, as LF
        if packed:
            columns = pack_columns(columns, int(encode_data.cutoff_len))
        return {name: columns[name] for name in schema}

    return mixed.map(encode, batched=True, batch_size=data.preprocessing_batch_size, remove_columns=["item"],
                     features=schema)


def _conversation_stream(spec, split, report: DataReport, vision=None):
    """One dataset's converted rows, read lazily: an `IterableDataset` of pickled (name, Conversation); with
    `vision`, images resolved and `<image>` expanded (a row whose images do not fit is reported as dropped)."""
    from datasets import Features, IterableDataset, Value

    def rows():
        source = iter_local_rows(spec.local_path) if spec.load_from == "file" else iter_hub_rows(spec)
        head = list(islice(source, COLUMN_CHECK_ROWS))
        check_column_mapping(spec, (row.values for row in head), origin_of(spec))
        for row in chain(head, source):
            report.read(spec.name, 1, split)
            try:
                conversation = convert_row(row.values, spec, row.source)
            except RowError as err:
                report.dropped(spec.name, f"invalid {spec.formatting} row", f"{err.source} ({err.problem})", split)
                report.stats(spec.name, split).rows_used += 1
                continue
            try:
                conversation = conversation if vision is None else vision.expand(conversation, spec.dataset_dir)
            except RowError as err:  # as data/rows.py reports it
                report.dropped(spec.name, "its images do not fit its text", f"{err.source} ({err.problem})", split)
                report.stats(spec.name, split).rows_used += 1
                continue
            yield {"item": pickle.dumps((spec.name, conversation))}

    return IterableDataset.from_generator(rows, features=Features({"item": Value("binary")}))
