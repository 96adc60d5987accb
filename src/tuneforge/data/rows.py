"""The rows a split trains on: dataset specs -> rows (num_samples / max_samples) -> Conversations (bad rows
reported) -> mixed. Shared by the training pipeline (`pipeline.build_split`) and `tuneforge data check`."""

from __future__ import annotations

from tuneforge.config.args import DataArguments
from tuneforge.data.formats import Conversation, RowError, check_column_mapping, convert_row
from tuneforge.data.loaders import load_rows, origin_of, sample_rows
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
        converted = []
        for row in rows:
            try:
                conv = convert_row(row.values, spec, row.source)
            except RowError as err:
                report.dropped(spec.name, f"invalid {spec.formatting} row", f"{err.source} ({err.problem})", split)
                continue
            try:
                converted.append(conv if vision is None else vision.expand(conv, spec.dataset_dir))
            except RowError as err:
                report.dropped(spec.name, "its images do not fit its text", f"{err.source} ({err.problem})", split)
        conversations.append(converted)
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
    strategy = data.mix_strategy
    if strategy not in MIX_STRATEGIES:
        raise ConfigError(f"mix_strategy '{strategy}' is not one of {', '.join(MIX_STRATEGIES)}")
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
