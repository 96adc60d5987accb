"""Encoded columns written to Arrow files chunk by chunk, and read back memory-mapped.

A split is encoded `WRITE_CHUNK` rows at a time and each chunk's columns go straight to an Arrow stream file (the
format of `datasets`' own cache files), so a process holds one chunk of token lists, never the whole split's:
200,000 rows took 3.6 GiB when the split was built in memory. The files are then opened memory-mapped
(`Dataset.from_file`): the operating system pages the tokens in as training reads them.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

WRITE_CHUNK = 2000  # rows encoded per Arrow record batch


def row_chunks(rows: Iterable, size: int = WRITE_CHUNK, first: int | None = None) -> Iterator[list]:
    """`rows` (a list or any iterable, consumed as it goes) in lists of `size`, the first one `first` long."""
    rows = iter(rows)
    chunk = list(islice(rows, size if first is None else first))
    while chunk:
        yield chunk
        chunk = list(islice(rows, size))


def write_chunks(path: Path, schema, chunks: Iterable[dict[str, list]]) -> int:
    """Write each `{column: values}` chunk as one record batch of `schema` (datasets Features) to `path`; the
    number of rows written. A file with no chunks is a valid empty table."""
    import pyarrow as pa

    arrow_schema = schema.arrow_schema
    rows = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, arrow_schema) as writer:
        for columns in chunks:
            batch = pa.RecordBatch.from_pydict({name: columns[name] for name in schema}, schema=arrow_schema)
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def read_dataset(paths: Iterable[Path]):
    """The files' rows, in order, as one memory-mapped `datasets.Dataset`."""
    from datasets import Dataset, concatenate_datasets

    parts = [Dataset.from_file(str(path)) for path in paths]
    if not parts:
        raise ValueError("read_dataset: no Arrow files")
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def temporary_folder() -> Path:
    """A new folder for this run's own Arrow files (packed rows, split indices), removed when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix="tuneforge-data-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder
