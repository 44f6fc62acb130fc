"""Guarded chunk-wise reads of Zarr arrays: whole, one chunk at a time, or lazily as a Dask array; a
damaged chunk raises :class:`~eoca.errors.FileFormatError` naming the store, the array and the chunk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from eoca.errors import FileFormatError, ValidationError

__all__ = ["lazy_zarr_array", "read_zarr_chunk"]


#: Chunks read at the same time by :func:`_read_chunked` (reading and checksumming release the GIL).
READ_THREADS = 2


def _read_chunked(store: Path, arr: Any, name: str) -> np.ndarray:
    """Read a Zarr array whole, chunk by chunk on ``READ_THREADS`` threads, each chunk written into the
    result as it arrives: memory stays one array plus a chunk per thread (zarr asked for everything at
    once decodes many chunks side by side), and a damaged chunk is named."""
    from concurrent.futures import ThreadPoolExecutor

    out = np.empty(arr.shape, dtype=arr.dtype)
    step = arr.chunks[0] if arr.ndim else 1
    n_chunks = -(-arr.shape[0] // step) if arr.ndim else 0

    def read(i: int) -> None:
        out[i * step : (i + 1) * step] = read_zarr_chunk(store, arr, name, i)

    with ThreadPoolExecutor(max(1, min(READ_THREADS, n_chunks))) as pool:
        for _ in pool.map(read, range(n_chunks)):  # re-raises the first damaged chunk's FileFormatError
            pass
    return out


def read_zarr_chunk(store: str | os.PathLike, arr: Any, name: str, index: int) -> np.ndarray:
    """Rows of chunk ``index`` (along the first axis) of the Zarr array ``arr`` named ``name`` in ``store``.

    Raises
    ------
    FileFormatError
        The chunk is missing, truncated or fails its checksum (naming the store, the array and the chunk).
    """
    step = arr.chunks[0]
    try:
        return arr[index * step : (index + 1) * step]
    except Exception as exc:  # codecs raise many kinds on damaged bytes (checksum, size, decompression)
        raise FileFormatError(
            f"{store}: array {name!r}, chunk {index} (users {index * step:,} to "
            f"{min((index + 1) * step, arr.shape[0]) - 1:,}) is damaged: {type(exc).__name__}: {exc}"
        ) from None


def lazy_zarr_array(store: str | os.PathLike, arr: Any, name: str, chunk_users: int) -> Any:
    """A Dask array over a Zarr array (all columns in one chunk) whose every read is guarded: a damaged
    chunk raises :class:`FileFormatError` naming the store, the array and the chunk."""
    import dask
    import dask.array as da

    if isinstance(chunk_users, bool) or not isinstance(chunk_users, int | np.integer) or chunk_users < 1:
        raise ValidationError("chunks", f"must be a positive number of users per chunk; got {chunk_users!r}")
    n = arr.shape[0]
    read = dask.delayed(_read_rows, pure=True)
    blocks = [
        da.from_delayed(read(str(store), name, s, min(s + chunk_users, n)), (min(s + chunk_users, n) - s, *arr.shape[1:]),
                        dtype=arr.dtype)
        for s in range(0, n, chunk_users)
    ]
    if not blocks:
        return da.zeros(arr.shape, dtype=arr.dtype, chunks=(1, *arr.shape[1:]))
    return da.concatenate(blocks, axis=0)


def _read_rows(store: str, name: str, start: int, stop: int) -> np.ndarray:
    import zarr

    try:
        arr = zarr.open_array(store, path=name, mode="r")
    except Exception as exc:
        raise FileFormatError(f"{store}: array {name!r} cannot be opened: {type(exc).__name__}: {exc}") from None
    step = arr.chunks[0]
    parts = [read_zarr_chunk(store, arr, name, i) for i in range(start // step, (stop - 1) // step + 1)]
    block = np.concatenate(parts) if len(parts) > 1 else parts[0]
    offset = (start // step) * step
    return block[start - offset : stop - offset]
