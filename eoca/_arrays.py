"""Array views that the numba kernels take as one type: read-only memory typed as writeable.

numba compiles a kernel once per argument type, and a read-only array is a type of its own. The arrays
of a compiled problem are read-only, those of a subset or a solver's scratch are not, and the codes that
``eoca.solve`` hands the checker are read-only again: left alone, each kernel would compile up to one
variant per mix of the two (five of the checker's pass on one test run). The kernels never write their
inputs (the tests check that they are unchanged), so their callers pass every array through
:func:`writeable` and each kernel compiles once per dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["mutable_view", "writeable"]


class _Alias:
    """Holds an array interface so that numpy can build a writeable-typed view of read-only memory."""

    def __init__(self, arr):
        self.base = arr
        self.__array_interface__ = dict(arr.__array_interface__, data=(arr.__array_interface__["data"][0], False))


def mutable_view(arr: np.ndarray) -> np.ndarray:
    """The same memory, typed as writeable (``arr`` itself where it is writeable already or empty)."""
    if arr.flags.writeable or arr.size == 0:
        return arr
    return np.asarray(_Alias(arr))


def writeable(*args: Any) -> tuple:
    """``args`` with every numpy array passed through :func:`mutable_view` (anything else as it is)."""
    return tuple(mutable_view(a) if isinstance(a, np.ndarray) else a for a in args)
