"""ETV inference: the factorised user-side / fund-side pass against per-pair scoring.

Run with ``pytest benchmarks/test_bench_predict.py``. The per-pair baseline runs the whole
network (features, behaviour attention, consumption graph) once per (user, fund) pair; the
factorised pass runs the user side once per user, the fund side once per fund and only the head
per pair. ``test_one_million_users`` scores 1,000,000 users × 8 funds with ESDPM.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from eoca.data import synthetic_platform
from eoca.predict import ETVPredictor
from eoca.predict.inference import grid_outputs, pairwise_outputs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fitted():
    platform = synthetic_platform(2000, 8, seed=0)
    train, valid, _ = platform.data.split()
    return ETVPredictor("esdpm", max_epochs=2, progress=False).fit(train, validation=valid)


@pytest.fixture(scope="module")
def scoring_data(fitted):
    return fitted.schema_.encode(synthetic_platform(5000, 8, seed=1).data)


def test_batched_grid(benchmark, fitted, scoring_data):
    out = benchmark(grid_outputs, fitted.network_, scoring_data)
    # the chunking is invisible: uneven small chunks give the same grid
    other = grid_outputs(fitted.network_, scoring_data, chunk_users=997)
    assert out.keys() == other.keys() == {"p", "pctr", "mu", "sigma"}
    for key in out:
        assert out[key].shape == (5000, 8)
        np.testing.assert_allclose(out[key], other[key], rtol=1e-5, atol=1e-6)


def test_per_pair(benchmark, fitted, scoring_data):
    out = benchmark.pedantic(pairwise_outputs, args=(fitted.network_, scoring_data), rounds=2, iterations=1)
    fast = grid_outputs(fitted.network_, scoring_data)
    for key in fast:
        np.testing.assert_allclose(out[key], fast[key], rtol=1e-4, atol=1e-5)


def test_speedup_and_agreement(fitted, scoring_data):
    t0 = time.perf_counter()
    fast = grid_outputs(fitted.network_, scoring_data)
    t1 = time.perf_counter()
    slow = pairwise_outputs(fitted.network_, scoring_data)
    t2 = time.perf_counter()
    for key in fast:
        np.testing.assert_allclose(fast[key], slow[key], rtol=1e-4, atol=1e-5)
    speedup = (t2 - t1) / (t1 - t0)
    print(
        f"\nbatched {t1 - t0:.3f}s, per-pair {t2 - t1:.3f}s, speed-up x{speedup:.1f} (5,000 users x 8 funds)"
    )
    assert speedup > 1.5


def test_one_million_users(benchmark, fitted):
    big = synthetic_platform(
        1_000_000, 8, seed=2, behaviours_per_user=4, payments_per_user=3, impressions_per_user=1
    )
    grid = benchmark.pedantic(fitted.predict, args=(big.data,), rounds=1, iterations=1)
    assert grid.shape == (1_000_000, 8) and np.isfinite(grid).all() and (grid >= 0).all()
    # chunked equals whole: 3,000 users scored apart, with the whole platform's merchants, give the same rows
    data = big.data
    head = data.users["user_id"].iloc[:3000]

    def rows(table):
        return table[table["user_id"].isin(head)].reset_index(drop=True)

    part = type(data)(rows(data.users), data.funds, rows(data.impressions), rows(data.behaviours), rows(data.payments))
    merchant_h = fitted._merchant_embeddings(fitted._merchant_partials(data))
    np.testing.assert_allclose(fitted._predict(part, merchant_h).values, grid.values[:3000], rtol=1e-4)
