"""Prediction to Zarr on Dask: score a platform chunk by chunk of users, each task writing its rows."""

from __future__ import annotations

import os

import numpy as np
import xarray as xr

from eoca.data import PlatformData
from eoca.distributed.blocks import _client, _compute, _dask, hold
from eoca.distributed.files import open_grid
from eoca.errors import ValidationError
from eoca.predict.inference import merge_merchant_partials
from eoca.problem import FUND, USER

__all__ = ["predict_to_zarr"]


def _predict_chunk(predictor, data, start, path, variable, merchant_h=None):
    grid = predictor._predict(data, merchant_h)
    ds = grid.to_dataset(name=variable).drop_vars([USER, FUND])
    ds.to_zarr(path, region={USER: slice(start, start + grid.sizes[USER])})
    return grid.sizes[USER]


def _subset(data, user_ids):
    """The part of a platform's tables that concerns ``user_ids`` (every fund is kept)."""
    keep = set(user_ids.tolist())

    def rows(table):
        return None if table is None else table[table["user_id"].isin(keep)].reset_index(drop=True)

    return PlatformData(
        users=data.users[data.users["user_id"].isin(keep)].reset_index(drop=True),
        funds=data.funds,
        impressions=rows(data.impressions),
        behaviours=rows(data.behaviours),
        payments=rows(data.payments),
    )


def _merchant_partials(predictor, data):
    return predictor._merchant_partials(data)


def _merge_partials(*partials):
    return merge_merchant_partials(*partials)


def _merchant_embeddings(predictor, partials):
    return predictor._merchant_embeddings(partials)


def predict_to_zarr(
    predictor,
    data,
    path: str | os.PathLike,
    *,
    chunk_users: int = 100_000,
    variable: str = "etv",
    progress: bool | None = None,
) -> xr.DataArray:
    """Predict the ETV grid chunk by chunk on the Dask workers and write it to a Zarr store.

    The fitted predictor and each chunk's tables travel once, pickled, as data Dask holds (with a
    ``dask.distributed`` client, :func:`eoca.distributed.blocks.hold`: a worker lost mid-way costs a
    recomputation, not the prediction), each task predicts ``chunk_users`` users and writes its rows
    straight into the store, so no process ever holds more than one chunk of the grid.

    Models with the user-merchant graph (``"esdpm"``) run two stages, because each merchant's embedding
    attends over *all* users who paid it. Stage 1 maps over the chunks: each summarises its payments
    per merchant and attention head (largest logit, sum of exponentials, weighted sum of user vectors;
    ``n_merchants x heads x graph_dim`` numbers). The summaries are tree-reduced on the workers with
    log-sum-exp rescaling and turned into the merchant embeddings once; stage 2 sends them to every
    chunk task, which predicts its users. The grid equals a whole-platform ``predict`` up to float
    rounding. Models without the graph skip stage 1.

    Parameters
    ----------
    predictor : eoca.predict.ETVPredictor
        Fitted.
    data : eoca.data.PlatformData
        The users to score (their tables are cut per chunk of users; every fund is scored).
    path : str or path-like
        Zarr store to create (overwritten).
    chunk_users : int, default 100,000
        Users per chunk (and per Zarr chunk).
    variable : str, default "etv"
    progress : bool, optional

    Returns
    -------
    xarray.DataArray
        The grid, opened lazily from the store (see :func:`open_grid`).
    """
    dask, da = _dask()
    if isinstance(chunk_users, bool) or not isinstance(chunk_users, int | np.integer) or chunk_users < 1:
        raise ValidationError("chunk_users", f"must be a positive integer; got {chunk_users!r}")
    predictor._check_fitted()
    users = data.users["user_id"].to_numpy()
    funds = data.funds["fund_id"].to_numpy()
    n, k = len(users), len(funds)
    template = xr.Dataset(
        {variable: ((USER, FUND), da.zeros((n, k), chunks=(chunk_users, k), dtype=np.float64))},
        coords={USER: users, FUND: funds},
    )
    template.to_zarr(path, mode="w", compute=False)
    client = _client()
    shipped = hold(client, [predictor])[0] if client is not None else predictor
    starts = range(0, n, chunk_users)
    parts = []
    for start in starts:  # one chunk's tables at a time in the client before it goes to a worker
        part = _subset(data, users[start : start + chunk_users])
        parts.append(hold(client, [part])[0] if client is not None else part)
    merchant_h = None
    if predictor.spec_.use_graph and parts:
        # stage 1, in the same graph as stage 2: summaries per chunk, merged pairwise (a tree, so no
        # task receives more than two), finished once; every chunk task then depends on that result.
        # pure=False: hashing the predictor and tables for task keys would cost more than it saves.
        summarise, merge = (dask.delayed(f, pure=False) for f in (_merchant_partials, _merge_partials))
        level = [summarise(shipped, part) for part in parts]
        while len(level) > 1:
            level = [merge(*level[i : i + 2]) for i in range(0, len(level), 2)]
        merchant_h = dask.delayed(_merchant_embeddings, pure=False)(shipped, level[0])
    call = dask.delayed(_predict_chunk, pure=False)
    tasks = [call(shipped, part, start, str(path), variable, merchant_h) for start, part in zip(starts, parts)]
    _compute(tasks, progress)
    return open_grid(path, variable=variable)
