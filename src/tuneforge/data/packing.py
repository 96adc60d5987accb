"""sft `packing` / `neat_packing`: LLaMA-Factory's bin-packing into cutoff_len rows, and the three sft layouts.

`packing_mode(data)`:
- `per_batch` (`packing` unset, tuneforge's default): a sample is a row; the collator concatenates the
  samples of each batch into one padding-free row, no attention across samples (`PackedCollator`).
- `padded` (`packing: false`): a sample is a row, batches are right-padded (`PaddedCollator`).
- `bins` (`packing: true` or `neat_packing: true`), LLaMA-Factory's meaning (`PackedSupervisedDatasetProcessor`):
  samples are encoded with `cutoff_len - 1` tokens at most (LF lowers `cutoff_len` by one whenever packing is
  set, for every stage) and bin-packed into rows of at most `cutoff_len - 1` tokens by LF's `greedy_knapsack`,
  one preprocessing batch at a time (`preprocessing_batch_size` samples, batches taken within each of the
  `preprocessing_num_workers` contiguous shards, as `datasets.map(batched=True, num_proc=...)` cuts them for
  LF). Same rows, same order, so the same number of training rows and steps as LF for the same YAML (checked
  against LF 0.9.5 on the shipped demo data, val_size included; batches count the samples the encoder kept,
  LF's also count rows it drops inside them, so with dropped rows the count can differ by a few). Each
  row keeps `position_ids` restarting at 0 per sample (LF's column). Packing runs after the `val_size`
  split, on each side, as in LF.
  - without `neat_packing`, a row is one causal sequence: a sample attends to the samples before it in its
    row (LF: attention_mask all ones), with its position ids restarting at 0 (`BinCollator` pads rows and
    passes attention_mask + position_ids). With `flash_attn: fa2/fa3` and a batch of one unpadded row,
    transformers' varlen kernel cuts the row at every position restart (as it does for LF's rows), so there
    samples do not see each other.
  - with `neat_packing`, no attention across samples (LF's block-diagonal mask): the rows of a batch become
    one padding-free row restarting at every sample (the `per_batch` machinery, PACKED_SDPA on CPU).
  Deliberate differences that change no loss: rows are not padded to `cutoff_len` (LF's padding carries no
  label); under `neat_packing` the first token of a sample is never a target (LF trains it from the previous
  sample's last token when `train_on_prompt` makes it a label).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import defaultdict
from collections.abc import Sequence

from tuneforge.config.args import DataArguments
from tuneforge.data.report import DataReport
from tuneforge.data.arrow_files import read_dataset, temporary_folder, write_chunks
from tuneforge.data.workers import shard_bounds
from tuneforge.errors import DataError


def packing_mode(data: DataArguments, batching_strategy: str | None = None) -> str:
    """`per_batch` (unset), `padded` (`packing: false`) or `bins` (`packing: true` / `neat_packing: true`); LF v1's
    `batching_strategy` (config/batching_args.py), when set, instead: normal / dynamic_batching pad, padding_free /
    dynamic_padding_free are per_batch."""
    if batching_strategy is not None:
        return "padded" if batching_strategy in ("normal", "dynamic_batching") else "per_batch"
    if data.neat_packing or data.packing is True:
        return "bins"
    return "padded" if data.packing is False else "per_batch"


def encoding_args(data: DataArguments) -> DataArguments:
    """The data arguments the encoders see: LF's `DataArguments.__post_init__` lowers `cutoff_len` by one
    when `packing` (or `neat_packing`) is set, for every stage."""
    if packing_mode(data) != "bins":
        return data
    return dataclasses.replace(data, cutoff_len=data.cutoff_len - 1)


# ----------------------------------------------------------------------------- LF's packing
def greedy_knapsack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """LF's `greedy_knapsack`: fill one knapsack at a time with the largest length that still fits."""
    numbers = sorted(lengths)
    knapsacks = []
    while numbers:
        knapsack, remaining = [], capacity
        while True:
            index = bisect.bisect(numbers, remaining) - 1  # the largest number <= remaining
            if index < 0:
                break
            remaining -= numbers[index]
            knapsack.append(numbers.pop(index))
        if not knapsack:  # only numbers larger than the capacity are left (LF would loop forever)
            raise DataError(f"cannot pack samples of {numbers[0]}+ tokens into rows of {capacity} tokens")
        knapsacks.append(knapsack)
    return knapsacks


PACKED_COLUMNS = ("input_ids", "labels", "position_ids")  # a packed row's columns (+ `images` for images)


def pack_batch(input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], capacity: int,
               images: Sequence[Sequence[str]] | None = None):
    """One preprocessing batch -> packed rows `(input_ids, labels, position_ids)`, exactly LF's rows and order;
    with `images` (a vision-language model's samples) each row also carries its samples' images, in row order."""
    lengths, by_length = [], defaultdict(list)
    for index, ids in enumerate(input_ids):
        lengths.append(len(ids))
        by_length[len(ids)].append(index)
    rows = []
    for knapsack in greedy_knapsack(lengths, capacity):
        row_ids: list[int] = []
        row_labels: list[int] = []
        positions: list[int] = []
        row_images: list[str] = []
        for length in knapsack:
            index = by_length[length].pop()  # LF takes the last sample of that length first
            row_ids += input_ids[index]
            row_labels += labels[index]
            positions += range(length)
            row_images += images[index] if images is not None else ()
        rows.append((row_ids, row_labels, positions) + ((row_images,) if images is not None else ()))
    return rows


def pack_columns(columns: dict[str, list], capacity: int) -> dict[str, list]:
    """`pack_batch` on a batch's columns (`input_ids`, `labels`, and `images` when present) -> the packed rows'
    columns (+ `position_ids`)."""
    images = columns.get("images")
    rows = pack_batch(columns["input_ids"], columns["labels"], capacity, images)
    keys = PACKED_COLUMNS + (("images",) if images is not None else ())
    return {key: [row[i] for row in rows] for i, key in enumerate(keys)}


def packed_schema(images: bool):
    from datasets import Features, List, Value

    schema = {key: List(Value("int32")) for key in PACKED_COLUMNS}
    return Features({**schema, "images": List(Value("string"))} if images else schema)


def batch_ranges(count: int, batch_size: int, num_proc: int | None) -> list[tuple[int, int]]:
    """The preprocessing batches `datasets.map(batched=True, batch_size, num_proc)` hands LF's processor:
    `num_proc` contiguous shards (at most one per sample), each cut into batches of `batch_size`."""
    shards = min(int(num_proc), count) if num_proc and int(num_proc) > 1 else 1
    ranges = []
    for start, end in shard_bounds(count, max(shards, 1)):
        ranges.extend((b, min(b + batch_size, end)) for b in range(start, end, batch_size))
    return ranges


def pack_split(dataset, data: DataArguments, report: DataReport, split: str):
    """An encoded sft split (input_ids, labels) -> LF's packed rows (input_ids, labels, position_ids), one
    preprocessing batch in memory at a time, written to an Arrow file of this run's and read back memory-mapped."""
    capacity = int(encoding_args(data).cutoff_len)
    batch_size = data.preprocessing_batch_size  # at least 1 (config/validate.py)
    keys = ["input_ids", "labels"] + (["images"] if "images" in dataset.column_names else [])
    schema = packed_schema(images="images" in keys)

    def packed_batches():
        for start, end in batch_ranges(len(dataset), batch_size, data.preprocessing_num_workers):
            batch = dataset[start:end]
            yield pack_columns({key: batch[key] for key in keys}, capacity)

    path = temporary_folder() / "packed.arrow"
    rows = write_chunks(path, schema, packed_batches())
    neat = data.neat_packing
    report.notes.append(
        f"{split}: packing: {len(dataset)} sample(s) packed into {rows} row(s) of at most "
        f"{capacity} tokens (cutoff_len - 1, as LLaMA-Factory), "
        + ("no attention across samples (neat_packing)" if neat
           else "samples attend to the samples before them in their row (neat_packing: true prevents it)"))
    return read_dataset([path])
