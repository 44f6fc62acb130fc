"""How a problem's ids and risk scale are written into its files and read back exactly: labels NetCDF can
store, the risk scale in the attributes (an ordered categorical's order kept), and string ids as their
UTF-8 bytes with the offset where each starts (Arrow's string layout), which Zarr stores as two arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from eoca.errors import FileFormatError

__all__ = ["netcdf_labels", "levels_attrs", "levels_from", "tolerance_series", "string_layout", "strings_from_layout"]


def netcdf_labels(values: np.ndarray) -> np.ndarray:
    """Arrays NetCDF can store: labels as unicode, numbers as they are (ints as int64)."""
    values = np.asarray(values)
    if values.dtype.kind in "iufb":
        return values.astype(np.int64) if values.dtype.kind in "iu" else values
    kind = pd.api.types.infer_dtype(values, skipna=False)
    if kind == "integer":
        return values.astype(np.int64)
    if kind in ("floating", "mixed-integer-float"):
        return values.astype(np.float64)
    if kind == "boolean":
        return values.astype(bool)
    return np.asarray(values, dtype=str)


def levels_attrs(levels: np.ndarray) -> dict[str, Any]:
    values = [v.item() if isinstance(v, np.generic) else v for v in levels.tolist()]
    return {"levels": values, "levels_dtype": str(np.asarray(levels).dtype) if levels.dtype.kind != "O" else "object"}


def levels_from(attrs: dict[str, Any]) -> np.ndarray:
    dtype = attrs.get("levels_dtype", "object")
    return np.asarray(attrs["levels"], dtype=object if dtype.startswith("<U") or dtype == "object" else dtype)


def tolerance_series(values: np.ndarray, levels: np.ndarray, index: pd.Index, dtype: str | None) -> pd.Series:
    """The users' risk tolerances as declared: on an ordered categorical scale where the problem's levels
    are not in their sort order (the scale came from an ordered categorical), else in their saved dtype."""
    labels = levels.tolist()
    try:
        declared_order = labels != sorted(labels)
    except TypeError:
        declared_order = True
    if declared_order:
        return pd.Series(pd.Categorical(values, categories=levels, ordered=True), index=index, copy=False)
    if dtype:
        values = values.astype(object if dtype == "object" else dtype)
    return pd.Series(values, index=index, dtype=values.dtype, copy=False)


def string_layout(ids: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of every id one after another and the offset where each starts (n + 1 entries)."""
    import pyarrow as pa

    arr = pa.array(np.asarray(ids, dtype=object), type=pa.large_string())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    return offsets - offsets[0], data[offsets[0] : offsets[-1]]


def strings_from_layout(offsets: np.ndarray, data: np.ndarray, where: str) -> np.ndarray:
    import pyarrow as pa

    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(data) or (
        len(offsets) > 1 and (np.diff(offsets) < 0).any()
    ):
        raise FileFormatError(f"{where}: the user ids' offsets do not describe their bytes (corrupt file)")
    try:
        arr = pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(np.ascontiguousarray(offsets)),
                                                pa.py_buffer(np.ascontiguousarray(data)))
        arr.validate(full=True)
    except (pa.ArrowException, ValueError) as exc:
        raise FileFormatError(f"{where}: the user ids are not valid UTF-8 strings (corrupt file): {exc}") from None
    return arr.to_numpy(zero_copy_only=False)
