"""Zarr grids opened lazily: a damaged chunk is named when Dask reads it, whoever wrote the store."""

from __future__ import annotations

import re

import numpy as np
import pytest

import eoca

pytest.importorskip("dask")
zarr = pytest.importorskip("zarr")

from eoca.distributed import open_grid, open_problem, write_synthetic_problem  # noqa: E402


def _first_chunk(store, array):
    return sorted(p for p in (store / array / "c").rglob("*") if p.is_file())[0]


def test_a_damaged_chunk_of_a_synthetic_store_is_named_on_solve(tmp_path):
    store = tmp_path / "grid.zarr"
    problem = write_synthetic_problem(store, 3000, 4, chunk_users=1000, seed=2)
    expected = eoca.solve(problem).objective
    chunk = _first_chunk(store, "etv")
    chunk.write_bytes(chunk.read_bytes()[:20])
    with pytest.raises(eoca.FileFormatError, match=rf"{re.escape(str(store))}: array 'etv', chunk 0 "):
        eoca.solve(open_problem(store))
    assert np.isfinite(expected)


def test_guarded_grid_reads_the_same_values_as_xarray(tmp_path):
    store = tmp_path / "grid.zarr"
    write_synthetic_problem(store, 2500, 3, chunk_users=1000, seed=1)
    import xarray as xr

    plain = xr.open_zarr(store)["etv"].values
    grid = open_grid(store, chunk_users=700)
    assert grid.data.chunks[0] == (700, 700, 700, 400)
    np.testing.assert_array_equal(grid.values, plain)
