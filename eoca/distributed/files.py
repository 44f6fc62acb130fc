"""Zarr and Parquet files of the engine: open a stored grid or problem lazily, write a result's assignment
chunk by chunk, and generate a synthetic problem at any scale straight into a store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from eoca.distributed.blocks import _compute, _dask
from eoca.errors import ETVError, ValidationError
from eoca.instances import _fund_table, synthetic_problem
from eoca.problem import FUND, USER, AllocationProblem
from eoca.zarr_chunks import lazy_zarr_array

__all__ = ["open_grid", "open_problem", "write_assignment", "write_synthetic_problem"]


def open_grid(path: str | os.PathLike, *, variable: str = "etv", chunk_users: int | None = None) -> xr.DataArray:
    """Open an ETV grid stored as Zarr lazily (Dask-backed; nothing is read until a pass runs).

    Parameters
    ----------
    path : str or path-like
        A Zarr store written by :func:`predict_to_zarr`, :func:`write_synthetic_problem` or
        ``xarray.Dataset.to_zarr`` with a variable over ("user", "fund").
    variable : str, default "etv"
    chunk_users : int, optional
        Users per chunk (default: the store's chunks).

    Returns
    -------
    xarray.DataArray over ("user", "fund"), dask-backed, all funds in one chunk.
    """
    ds = xr.open_zarr(path, chunks={} if chunk_users is None else {USER: chunk_users, FUND: -1})
    if variable not in ds:
        raise ValidationError("variable", f"no {variable!r} in the store at {str(path)!r}; it holds {sorted(ds.data_vars)}")
    grid = ds[variable]
    if set(grid.dims) != {USER, FUND}:
        raise ETVError("etv", f"{variable!r} in {str(path)!r} has dims {grid.dims}; expected ({USER!r}, {FUND!r})")
    return _guarded(path, variable, grid, grid.transpose(USER, FUND).chunk({FUND: -1}))


def _guarded(path, variable: str, stored: xr.DataArray, grid: xr.DataArray) -> xr.DataArray:
    """The same lazy grid, read through :func:`eoca.io.lazy_zarr_array`: a damaged chunk then raises
    :class:`~eoca.errors.FileFormatError` naming the store, the array and the chunk, not a codec's raw
    error from inside Dask. Arrays that xarray decodes (packed with a scale or offset, or stored with
    funds first) keep xarray's reader."""
    import zarr

    encoding = stored.encoding
    try:
        arr = zarr.open_group(str(path), mode="r")[variable]
    except Exception:  # a store xarray opened but zarr's group API cannot: keep xarray's reader
        return grid
    if (stored.dims != (USER, FUND) or "scale_factor" in encoding or "add_offset" in encoding
            or arr.dtype != grid.dtype or tuple(arr.shape) != grid.shape):
        return grid
    step = grid.data.chunks[0][0] if grid.shape[0] else 1
    return grid.copy(data=lazy_zarr_array(path, arr, variable, int(step)))


def write_assignment(
    result,
    path: str | os.PathLike,
    *,
    chunk_users: int = 1_000_000,
    format: str = "zarr",
) -> None:
    """Write a result's assignment chunk by chunk: fund code per user (and the fund ids to decode it).

    Parameters
    ----------
    result : eoca.Result
    path : str or path-like
        A Zarr store (``format="zarr"``: variable ``fund_code`` over "user", -1 for no fund, attribute
        ``funds`` listing the fund ids by code) or a directory of Parquet files (``format="parquet"``:
        columns ``user``, ``fund``).
    chunk_users : int, default 1,000,000
        Users per chunk / Parquet partition.
    format : {"zarr", "parquet"}
    """
    _, da = _dask()
    if format not in ("zarr", "parquet"):
        raise ValidationError("format", f"must be 'zarr' or 'parquet'; got {format!r}")
    if isinstance(chunk_users, bool) or not isinstance(chunk_users, int | np.integer) or chunk_users < 1:
        raise ValidationError("chunk_users", f"must be a positive integer; got {chunk_users!r}")
    funds = [f.item() if hasattr(f, "item") else f for f in result.problem.funds.to_numpy()]
    codes = da.from_array(np.asarray(result.codes, dtype=np.int32), chunks=chunk_users)
    if format == "zarr":
        users = da.from_array(result.problem.users.to_numpy(), chunks=chunk_users)
        ds = xr.Dataset({"fund_code": ((USER,), codes)}, coords={USER: (USER, users)})
        ds["fund_code"].attrs.update(funds=[str(f) for f in funds], missing=-1)
        ds.to_zarr(path, mode="w")
        return
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*.parquet"):
        old.unlink()
    names = np.asarray([str(f) for f in funds] + [None], dtype=object)  # code -1 picks the last: None
    users = result.problem.users.to_numpy()
    for part, start in enumerate(range(0, len(users), chunk_users)):
        codes = np.asarray(result.codes[start : start + chunk_users])
        frame = pd.DataFrame({USER: users[start : start + chunk_users], FUND: names[codes]})
        frame.to_parquet(out / f"part-{part:05d}.parquet", index=False)



def _synthetic_chunk(rows: int, n_funds: int, family: str, seed: int):
    p = synthetic_problem(rows, n_funds, family=family, seed=seed)
    etv = np.asarray(p.compile().etv, dtype=np.float64).copy()
    tol = np.asarray(p.risk_tolerance.values).astype(np.int8)
    return etv, tol, np.asarray(p.compile().demand_min, dtype=np.int64)


def write_synthetic_problem(
    path: str | os.PathLike,
    n_users: int,
    n_funds: int = 8,
    *,
    chunk_users: int = 1_000_000,
    family: str = "matching",
    seed: int = 0,
    progress: bool | None = None,
) -> AllocationProblem:
    """Generate a feasible synthetic problem chunk by chunk on the Dask workers, stored as Zarr.

    Each chunk is an independent :func:`eoca.instances.synthetic_problem` (seed ``seed + chunk``); the
    store holds ``etv`` over ("user", "fund") and ``risk_tolerance`` over "user", and the demands are the
    sums of the chunks' demands (so the whole problem is feasible).

    Returns
    -------
    AllocationProblem
        With the grid opened lazily from ``path``; demands and risk levels in memory.
    """
    dask, da = _dask()
    names, levels = _fund_table(n_funds)
    sizes = [min(chunk_users, n_users - s) for s in range(0, n_users, chunk_users)]
    gen = [dask.delayed(_synthetic_chunk, pure=True, nout=3)(r, n_funds, family, seed + i) for i, r in enumerate(sizes)]
    etv = da.concatenate([da.from_delayed(g[0], (r, n_funds), np.float64) for g, r in zip(gen, sizes)])
    tol = da.concatenate([da.from_delayed(g[1], (r,), np.int8) for g, r in zip(gen, sizes)])
    ds = xr.Dataset(
        {"etv": ((USER, FUND), etv), "risk_tolerance": ((USER,), tol)},
        coords={USER: (USER, da.arange(n_users, chunks=chunk_users, dtype=np.int64)), FUND: names},
    )
    store = ds.to_zarr(path, mode="w", compute=False)
    demands = _compute([store, *[g[2] for g in gen]], progress)[1:]
    import zarr

    attrs = zarr.open_group(str(path), mode="a").attrs
    attrs["demand"] = dict(zip(names, np.sum(demands, axis=0).tolist()))
    attrs["risk_level"] = dict(zip(names, levels.tolist()))
    attrs["name"] = f"{family}-{n_users}x{n_funds}"
    return open_problem(path)


def open_problem(path: str | os.PathLike, *, chunk_users: int | None = None) -> AllocationProblem:
    """An allocation problem stored as Zarr, with its grid opened lazily.

    The store holds ``etv`` over ("user", "fund"), ``risk_tolerance`` over "user" (loaded: 1 to 8 bytes
    per user) and the attributes ``demand`` (fund -> count or [min, max]) and ``risk_level``
    (fund -> level); :func:`write_synthetic_problem` writes such a store.
    """
    import zarr

    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    missing = {"demand", "risk_level"} - set(attrs)
    if missing:
        raise ValidationError("path", f"the store at {str(path)!r} lacks the attributes {sorted(missing)}")
    demand = {f: tuple(v) if isinstance(v, list) else v for f, v in attrs["demand"].items()}
    return AllocationProblem(
        etv=open_grid(path, chunk_users=chunk_users),
        demand=demand,
        risk_level=attrs["risk_level"],
        risk_tolerance=xr.open_zarr(path)["risk_tolerance"].load(),
        holdout=bool(attrs.get("holdout", False)),
        name=attrs.get("name"),
    )
