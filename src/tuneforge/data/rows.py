"""The rows a split trains on: dataset specs -> rows (num_samples / max_samples) -> Conversations (bad rows
reported) -> mixed. Shared by the training pipeline (`pipeline.build_split`) and `tuneforge data check`.

`stream_conversations` gives the same rows one at a time, converted while the file is read, where nothing needs
them all at once (one dataset, no sampling): the pipeline then encodes the first rows while the rest are read, and
never holds all of them as Python objects."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tuneforge.config.args import DataArguments
from tuneforge.data.formats import Conversation, RowError, check_column_mapping, convert_row
from tuneforge.data.loaders import RawRow, iter_rows, load_rows, origin_of, sample_rows
from tuneforge.data.report import DataReport
from tuneforge.errors import ConfigError

MIX_STRATEGIES = ("concat", "interleave_under", "interleave_over", "interleave_once")
# LF's mix_strategy -> HF `interleave_datasets` stopping_strategy
_STOPPING = {"interleave_under": "first_exhausted", "interleave_over": "all_exhausted",
             "interleave_once": "all_exhausted_without_replacement"}


def read_conversations(specs, split, data: DataArguments, seed, report: DataReport,
                       vision=None) -> list[tuple[str, Conversation]]:
    """The rows a split trains on, as (dataset name, Conversation): read, sampled (num_samples / max_samples),
    converted (bad rows reported as dropped) and mixed. `tuneforge data check` reads the same rows. With
    `vision` (data/media.py, a vision-language model's run) each row's images are resolved and its `<image>` tags
    expanded into the model's image tokens; a row whose images do not fit is reported as dropped."""
    conversations = []
    for spec in specs:
        rows = load_rows(spec)
        check_column_mapping(spec, (row.values for row in rows), origin_of(spec))
        report.read(spec.name, len(rows), split)
        rows = sample_rows(rows, spec.num_samples, data.max_samples, seed)
        conversations.append(list(_converted(spec, rows, split, report, vision)))
    mixed = mix(conversations, [s.name for s in specs], data, seed)
    for spec in specs:  # rows that reached the converter or the encoder (interleaving skips / repeats)
        stats = report.stats(spec.name, split)
        stats.rows_used = sum(stats.dropped.values())
    for name, _ in mixed:
        report.stats(name, split).rows_used += 1
    return mixed


def mix(conversations: list[list[Conversation]], names: list[str], data: DataArguments, seed: int) -> list[tuple[str, Conversation]]:
    """LF's `mix_strategy`: concat, or interleave (HF `interleave_datasets`) stopping at the first
    exhausted dataset (`interleave_under`), when all are exhausted with the exhausted ones restarted
    (`interleave_over`), or when all are exhausted without reusing any row (`interleave_once`: every row
    exactly once, exhausted datasets are skipped)."""
    strategy = _mix_strategy(data)
    if strategy == "concat" or len(conversations) < 2:
        return [(name, conv) for name, convs in zip(names, conversations) for conv in convs]

    from datasets import Dataset, interleave_datasets

    probs = list(data.interleave_probs) if data.interleave_probs is not None else None  # a tuple (DataArguments)
    if probs is not None and len(probs) != len(conversations):
        raise ConfigError(f"interleave_probs has {len(probs)} value(s) but there are {len(conversations)} datasets")
    # interleave row indexes with HF's own function so the order matches LF exactly
    index_sets = [Dataset.from_dict({"d": [i] * len(c), "r": list(range(len(c)))}) for i, c in enumerate(conversations)]
    mixed = interleave_datasets(index_sets, probabilities=probs, seed=seed, stopping_strategy=_STOPPING[strategy])
    return [(names[d], conversations[d][r]) for d, r in zip(mixed["d"], mixed["r"])]


def _mix_strategy(data: DataArguments) -> str:
    if data.mix_strategy not in MIX_STRATEGIES:
        raise ConfigError(f"mix_strategy '{data.mix_strategy}' is not one of {', '.join(MIX_STRATEGIES)}")
    return data.mix_strategy


def _converted(spec, rows: Iterable[RawRow], split, report: DataReport, vision) -> Iterator[Conversation]:
    """`rows` as Conversations; a row that does not convert (or whose images do not fit) is reported as dropped."""
    for row in rows:
        try:
            conv = convert_row(row.values, spec, row.source)
        except RowError as err:
            report.dropped(spec.name, f"invalid {spec.formatting} row", f"{err.source} ({err.problem})", split)
            continue
        try:
            yield conv if vision is None else vision.expand(conv, spec.dataset_dir)
        except RowError as err:
            report.dropped(spec.name, "its images do not fit its text", f"{err.source} ({err.problem})", split)


def can_stream(specs, data: DataArguments) -> bool:
    """Whether `stream_conversations` gives this split's rows: one dataset, read whole (no num_samples /
    max_samples, which pick rows by the count)."""
    return len(specs) == 1 and specs[0].num_samples is None and data.max_samples is None


def stream_conversations(specs, split, data: DataArguments, report: DataReport,
                         vision=None) -> Iterator[tuple[str, Conversation]]:
    """`read_conversations`'s rows and report for a split `can_stream` accepts, one row at a time as the file is
    read. The rows read and used are counted, and the column mapping checked against every row, once the last
    row has been read (a mapping no row matches raises then, as `read_conversations` raises it up front)."""
    (spec,) = specs
    _mix_strategy(data)
    present: dict[str, None] = {}
    count = 0

    def counted(rows: Iterable[RawRow]) -> Iterator[RawRow]:
        nonlocal count
        for row in rows:
            count += 1
            if isinstance(row.values, dict):
                present.update(dict.fromkeys(row.values))
            yield row

    for conv in _converted(spec, counted(iter_rows(spec)), split, report, vision):
        yield spec.name, conv
    check_column_mapping(spec, [present] if present else [], origin_of(spec))
    report.read(spec.name, count, split)
    report.stats(spec.name, split).rows_used = count  # every row reached the converter, once
