"""`preprocessing_num_workers`: encode a split's rows in worker processes, each writing its own Arrow file.

The rows are cut into contiguous shards (sizes as `datasets.Dataset.shard(contiguous=True)`), each process runs
the stage's row encoder (`stage_encode.py`) on its shard `WRITE_CHUNK` rows at a time with a report of its own and
writes the encoded columns to `shard-NNNNN.arrow` (data/arrow_files.py: one chunk in memory at a time); the parent
merges the reports shard by shard, and the files read in order hold exactly what one process writes (so the
number of workers is not part of the cache key).

This process encodes the first shard while one worker process per other shard encodes that one. Workers
are forked where the platform allows it (Linux): they inherit the tokenizer, template and rows without
pickling. Elsewhere they are spawned and get them pickled (when something does not pickle, the rows are
encoded in this process, with a warning). A worker's exception is raised here; a worker that dies (killed
for memory) is a DataError. While workers exist the tokenizer's own threads are off
(`TOKENIZERS_PARALLELISM=false`, as `datasets.map(num_proc=...)` does): one process per core is the
parallelism. Fewer workers than asked are used when the machine has fewer cores or the split is small
(`MIN_ROWS_PER_WORKER`); that changes nothing but the time.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from tuneforge.data.arrow_files import WRITE_CHUNK, row_chunks, write_chunks
from tuneforge.data.report import DataReport
from tuneforge.errors import DataError

logger = logging.getLogger("tuneforge")

MIN_ROWS_PER_WORKER = 256  # below this, starting a process costs more than it saves


def shard_bounds(count: int, shards: int) -> list[tuple[int, int]]:
    """`(start, end)` of `shards` contiguous shards of `count` rows, as `datasets` cuts them for `num_proc`:
    the first `count % shards` shards get one row more."""
    div, mod = divmod(count, shards)
    bounds, start = [], 0
    for index in range(shards):
        end = start + div + (1 if index < mod else 0)
        bounds.append((start, end))
        start = end
    return bounds


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_count(requested, rows: int) -> int:
    """Processes to use for `rows` rows when `preprocessing_num_workers` is `requested` (1 = this process only)."""
    if not requested or int(requested) <= 1 or multiprocessing.current_process().daemon:
        return 1  # a daemonic process (e.g. inside a pool) may not start children
    return max(1, min(int(requested), available_cores(), rows // MIN_ROWS_PER_WORKER))


# ----------------------------------------------------------------------------- in every encoding process
def encode_shard(encoder, items: Iterable, args: tuple, report: DataReport, split: str, path: Path, schema) -> None:
    """`items` encoded `WRITE_CHUNK` rows at a time, each chunk's columns appended to the Arrow file `path` (by the
    encoder's own `in_chunks` generator when it has one: sft overlaps tokenizing and assembling chunks)."""
    in_chunks = getattr(encoder, "in_chunks", None)
    chunks = in_chunks(items, *args, report, split) if in_chunks is not None else (
        encoder(rows, *args, report, split) for rows in row_chunks(items, WRITE_CHUNK))
    write_chunks(path, schema, chunks)


def _child(conn, encoder, rows, args, split, path, schema) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        report = DataReport()
        encode_shard(encoder, rows, args, report, split, path, schema)
        message = ("ok", report)
    except BaseException as err:  # noqa: BLE001 - handed to the parent, which raises it
        message = ("error", err)
    try:
        conn.send(message)
    except Exception:  # noqa: BLE001 - an exception that does not pickle
        conn.send(("error", RuntimeError(f"{type(message[1]).__name__}: {message[1]}")))
    conn.close()


# ----------------------------------------------------------------------------- in the parent
@contextmanager
def _tokenizer_threads_off():
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def _context():
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def encode_rows(encoder, items: Iterable, args: tuple, report: DataReport, split: str, folder: Path, schema,
                requested=None) -> list[Path]:
    """`encoder(items, *args, report, split)` (a `stage_encode` row encoder) in up to `requested` processes, the
    columns (`schema`, datasets Features) written to Arrow files in `folder`: the files, in row order. This
    process encodes the first shard, one worker process each of the others. `items` that are not a list (rows
    read as they are encoded, `rows.stream_conversations`) are encoded here, in one process."""
    workers = worker_count(requested, len(items)) if isinstance(items, list) else 1
    paths = [folder / f"shard-{index:05d}.arrow" for index in range(workers)]
    if workers == 1:
        encode_shard(encoder, items, args, report, split, paths[0], schema)
        return paths
    context = _context()
    if context.get_start_method() != "fork":
        try:
            pickle.dumps((encoder, args, schema))
        except Exception as err:  # noqa: BLE001 - anything unpicklable: encode here instead
            logger.warning("preprocessing_num_workers: cannot hand the tokenizer/template to worker processes "
                           "(%s); encoding %s in this process", err, split)
            return encode_rows(encoder, items, args, report, split, folder, schema)

    started = time.perf_counter()
    (first_start, first_end), *others = shard_bounds(len(items), workers)
    children = []
    try:
        with _tokenizer_threads_off():
            for (start, end), path in zip(others, paths[1:]):  # a forked child inherits its rows
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=_child, args=(sender, encoder, items[start:end], args, split, path,
                                                                schema), daemon=True)
                process.start()
                sender.close()
                children.append((process, receiver))
            first = DataReport()
            encode_shard(encoder, items[first_start:first_end], args, first, split, paths[0], schema)
            reports = [first]
            for process, receiver in children:
                try:
                    status, payload = receiver.recv()
                except EOFError:
                    process.join()
                    raise DataError(f"a preprocessing worker process died while encoding the {split} split "
                                    f"(exit code {process.exitcode}); lower `preprocessing_num_workers` (each "
                                    "worker holds its share of the rows)") from None
                if status == "error":
                    raise payload
                reports.append(payload)
    finally:
        for process, receiver in children:
            receiver.close()
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()

    for shard_report in reports:  # in shard order: the same report as one process
        report.absorb(shard_report)
    logger.info("%s: encoded %d rows in %d processes in %.1f s", split, len(items), workers,
                time.perf_counter() - started)
    return paths
