"""Past one machine: Dask-backed ETV grids, chunk-wise prediction and the exact allocation on Dask.

An :class:`~eoca.AllocationProblem` accepts an ETV grid whose data is a Dask array chunked along
``"user"`` (all funds in one chunk), for example one opened lazily from Zarr with :func:`open_grid`. The
grid is never loaded whole: validation, the shared checker, the dual bound and the exact solver run as
map-reduce passes over its chunks, on whatever scheduler is active (a ``dask.distributed`` client if one
exists, the local threaded scheduler otherwise). The per-user vectors (risk codes, the final assignment:
4 bytes per user) stay in the client process; the grid (8 bytes per user and fund) stays on the workers.

The rooms of the engine: :mod:`~eoca.distributed.blocks` (the map-reduce over user chunks that every
pass uses), :mod:`~eoca.distributed.solve` (the exact solver's phases run chunk by chunk),
:mod:`~eoca.distributed.predict` (prediction to Zarr) and :mod:`~eoca.distributed.files` (stores in and
out). A lazy grid is validated by the problem itself (:class:`eoca.AllocationProblem`), and ``eoca.solve``
is what sends a lazy problem here.

Progress: a ``dask.distributed`` dashboard shows every pass (``client.dashboard_link``); set
``dask.config.set({"eoca.progress": True})`` (or pass ``progress=True``) for a progress bar per pass.
"""

from importlib import import_module

# re-exported lazily: importing one room (the checker imports ``blocks``) does not import them all
_HOME = {
    "GatherLimitError": "solve",
    "WorkerLostError": "blocks",
    "lazy_grid_values": "blocks",
    "map_user_blocks": "blocks",
    "open_grid": "files",
    "open_problem": "files",
    "predict_to_zarr": "predict",
    "solve_exact": "solve",
    "split_users": "blocks",
    "write_assignment": "files",
    "write_synthetic_problem": "files",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(f"eoca.distributed.{_HOME[name]}"), name)
    raise AttributeError(f"module 'eoca.distributed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
