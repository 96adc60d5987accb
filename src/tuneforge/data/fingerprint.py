"""A content hash of an encoded dataset: the same rows, token ids and labels give the same fingerprint,
whether the dataset was just encoded or read back from the cache (resume checks use it)."""

from __future__ import annotations

import hashlib


def dataset_fingerprint(dataset) -> str:
    """blake2b over every column's values and list offsets, in column-name order (16 hex digits)."""
    import numpy as np

    digest = hashlib.blake2b(digest_size=8)
    digest.update(str(len(dataset)).encode())
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    if getattr(dataset, "_indices", None) is not None:  # a select/shuffle view: hash the rows it shows
        table = dataset.flatten_indices(keep_in_memory=True).data.table
    for name in sorted(table.column_names):
        digest.update(name.encode())
        array = table.column(name).combine_chunks()
        while hasattr(array, "flatten") and hasattr(array, "offsets"):  # list columns, nested or not
            offsets = np.asarray(array.offsets, dtype=np.int64)
            digest.update((offsets - offsets[0]).tobytes())
            array = array.flatten()
        try:
            values = array.to_numpy(zero_copy_only=False)
        except NotImplementedError:  # structs and other nested types
            values = np.asarray(array.to_pylist(), dtype=object)
        digest.update(values.tobytes() if values.dtype != object else repr(values.tolist()).encode())
    return digest.hexdigest()
