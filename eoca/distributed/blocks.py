"""Map-reduce over the user chunks of a Dask-backed ETV grid: the one way the engine runs a pass.

Every pass of the engine (the checker's recount, the dual bound, the exact solve's passes) calls
:func:`map_user_blocks`, which runs a module-level function on each user chunk of the grid with the
matching slices of per-user vectors, on the active scheduler, and returns one result per chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from eoca._arrays import mutable_view
from eoca.errors import EocaError, ETVError
from eoca.problem import FUND, USER, _lazy_grid_values

__all__ = ["WorkerLostError", "hold", "lazy_grid_values", "map_user_blocks", "split_users"]

_INSTALL = 'pip install "eoca[dask]"'


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError:  # pragma: no cover - the extra is installed where this module is used
        raise ImportError(f"Dask-backed grids need dask; install it with: {_INSTALL}") from None
    return dask, da


def _client():
    """The active ``dask.distributed`` client, or None (then the local scheduler runs the passes)."""
    try:
        from distributed import get_client
    except ImportError:
        return None
    try:
        return get_client()
    except ValueError:
        return None


def _progress(progress: bool | None) -> bool:
    dask, _ = _dask()
    return bool(dask.config.get("eoca.progress", False) if progress is None else progress)


def _compute(tasks: list, progress: bool | None = None) -> list:
    dask, _ = _dask()
    client = _client()
    if client is not None:
        futures = client.compute(tasks)
        if _progress(progress):
            from distributed import progress as show

            show(futures)
        out = client.gather(futures)
        del futures
        return list(out)
    if _progress(progress):
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            return list(dask.compute(*tasks))
    return list(dask.compute(*tasks))


def _bounds(etv) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(etv.chunks[0])]).astype(np.int64)


#: share of Dask's "large graph" warning threshold that one group of held data may fill
GRAPH_SHARE = 0.8


def _graph_bytes() -> int:
    """The most bytes of data one call sends to the scheduler: ``GRAPH_SHARE`` of the size above which
    Dask warns "Sending large graph" (``distributed.admin.large-graph-warning-threshold``, 10 MB unless
    configured)."""
    dask, _ = _dask()
    from dask.utils import parse_bytes

    limit = dask.config.get("distributed.admin.large-graph-warning-threshold", "10MB")
    return int(GRAPH_SHARE * (parse_bytes(limit) if isinstance(limit, str) else int(limit)))


def _nbytes(item) -> int | None:
    """Bytes of a chunk's list of arrays; None for any other object (its size is not known)."""
    if isinstance(item, list | tuple):
        return sum(int(getattr(a, "nbytes", 0)) for a in item)
    return None


def hold(client, items: Sequence) -> list:
    """``items`` (one object per user chunk, or anything the workers need) as data Dask holds: one task
    per item whose result is that item, persisted on the workers a group at a time (each group's graph
    under :func:`_graph_bytes`; an item that is not a list of arrays on its own). The scheduler keeps
    each item's task, so an item lost with a worker is computed again from it, elsewhere, when a pass
    needs it: a loss costs a recomputation, not the solve (data scattered to workers has no task, and its
    loss cannot be recovered)."""
    import uuid

    dask, _ = _dask()
    name = f"eoca-held-{uuid.uuid4().hex}"
    most = _graph_bytes()
    held: list = []
    group: list = []
    size = 0
    for i, item in enumerate(items):
        nbytes = _nbytes(item)
        nbytes = most if nbytes is None else nbytes
        if group and size + nbytes > most:
            held += client.persist(group)
            group, size = [], 0
        group.append(dask.delayed(item, name=f"{name}-{i}", traverse=False))
        size += nbytes
    if group:
        held += client.persist(group)
    return held


def split_users(etv, vectors: Sequence[np.ndarray]) -> list:
    """Cut per-user vectors along the grid's user chunks, one list of slices per chunk.

    With a ``dask.distributed`` client the slices travel once, as Dask-held data chunked like the grid
    (:func:`hold`), so a pass ships no data in its task graph and nothing lives only in scattered data;
    the returned handles can be reused by several :func:`map_user_blocks` calls.
    """
    bounds = _bounds(etv)
    parts = [[np.asarray(v)[bounds[i] : bounds[i + 1]] for v in vectors] for i in range(len(bounds) - 1)]
    client = _client()
    if client is not None and vectors:
        return hold(client, parts)
    return parts


class WorkerLostError(EocaError, RuntimeError):
    """A pass over the grid kept losing work with workers; retrying the call on a healthy cluster
    recomputes it."""


#: times a pass is run again after Dask gave up on it for lost workers
LOST_RETRIES = 3


def _lost(exc: BaseException) -> bool:
    """Whether ``exc`` is Dask's way of saying that data of a lost worker is gone."""
    import concurrent.futures

    # distributed's FutureCancelledError is a CancelledError; KilledWorker is named (distributed is optional)
    return isinstance(exc, concurrent.futures.CancelledError) or type(exc).__name__ == "KilledWorker"


def _mutable(arr: np.ndarray) -> np.ndarray:
    # numba compiles read-only arrays as another type; the kernels never write the grid
    return mutable_view(arr)


def _call(func, block, parts, extra, args):
    block = np.ascontiguousarray(block, dtype=np.float64)
    return func(_mutable(block), *[_mutable(np.ascontiguousarray(p)) for p in parts], *extra, *args)


def map_user_blocks(
    func: Callable,
    etv,
    vectors: Sequence[np.ndarray] = (),
    *,
    args: tuple = (),
    parts: list | None = None,
    per_block: Sequence[tuple] | None = None,
    progress: bool | None = None,
) -> list:
    """Run ``func(block, *vector_slices, *per_block[i], *args)`` on every user chunk of a Dask grid.

    Parameters
    ----------
    func : callable
        A module-level function (shipped to the workers by reference). ``block`` is the chunk of the grid,
        float64 C-contiguous, shape (chunk_users, n_funds).
    etv : dask.array.Array, shape (n_users, n_funds)
        Chunked along users, all funds in one chunk.
    vectors : sequence of ndarray, shape (n_users,)
        Per-user arrays, cut along the same chunks (ignored when ``parts`` is given).
    args : tuple
        Small arguments passed to every call.
    parts : list, optional
        Output of :func:`split_users` (the slices, already sent).
    per_block : sequence of tuple, optional
        Extra arguments per chunk (e.g. the indices of a chunk's gathered users). With a
        ``dask.distributed`` client they travel like ``parts`` (Dask-held, sent a group at a time), never
        inside the pass's task graph: at 50M users the gathered users' indices alone are tens of MB, and
        a graph that large makes Dask warn and slows every pass.
    progress : bool, optional
        Show a progress bar (default: the ``eoca.progress`` Dask config value).

    Returns
    -------
    list
        One result per chunk, in user order. Reduce them in the caller.
    """
    dask, _ = _dask()
    blocks = etv.to_delayed()
    if blocks.shape[1] != 1:
        raise ETVError("etv", f"a Dask grid must hold all funds in one chunk; got chunks {etv.chunks[1]} along 'fund'")
    blocks = blocks.ravel()
    if parts is None:
        parts = split_users(etv, vectors)
    extra: list = [()] * len(blocks) if per_block is None else [list(p) for p in per_block]
    client = _client()
    if client is not None and per_block is not None:
        extra = hold(client, extra)
    call = dask.delayed(_call, pure=True)
    for attempt in range(LOST_RETRIES + 1):
        tasks = [call(func, blocks[i], parts[i], extra[i], args) for i in range(len(blocks))]
        try:
            return _compute(tasks, progress)
        except Exception as exc:
            if not _lost(exc):
                raise
            if attempt == LOST_RETRIES:
                raise WorkerLostError(
                    f"a pass of {getattr(func, '__name__', func)!r} over the grid's {len(blocks)} chunks lost "
                    f"data with a worker {LOST_RETRIES + 1} times ({type(exc).__name__}: {exc}); retry the call "
                    "once the cluster is healthy"
                ) from exc
    raise AssertionError("unreachable")  # pragma: no cover


# ---- validation -------------------------------------------------------------------------------------------


def lazy_grid_values(etv):
    """Validate a Dask-backed ETV grid (a DataArray over ("user", "fund")) without loading it, as
    :class:`eoca.AllocationProblem` does, and return its lazy float64 data chunked along users with every
    fund in one chunk. Raises :class:`~eoca.errors.ETVError` naming the first bad (user, fund) entries."""
    import pandas as pd

    return _lazy_grid_values(etv.data, pd.Index(etv[USER].values), pd.Index(etv[FUND].values))
