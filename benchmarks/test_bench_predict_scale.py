"""ESDPM at platform scale: training cost per impression and prediction next to the exact solve.

Run with ``python -m pytest benchmarks/test_bench_predict_scale.py -s`` (several minutes).

* Training: one epoch of ESDPM (neighbour-sampled graph, the default ``graph_fanout=(10, 10)``) on
  synthetic platforms of 20k, 200k and 1M users with 2 impressions, 4 behaviours and 4 payments per
  user. With sampling a batch costs the same on any platform, so the cost per impression at 200k and 1M
  must stay within 1.5x of the 20k figure, and the 1M epoch within 5 minutes.
* Prediction: the fitted model scores 1M x 8 (in memory) and 10M x 8 (ten 1M pieces of one platform,
  each encoded and predicted on its own with the merchant embeddings of all ten, written into one
  float64 grid), each followed by the exact allocation of the same grid, so the report shows how much
  of "data in, allocation out" is prediction. The 10M platform is the 1M one ten times over (the same
  tables ten times, so only one copy is held; each piece is encoded and predicted as a distinct one
  would be, and its merchants see every copy's payments).

Figures land in ``extra_info`` (and are printed); each test asserts its target.
"""

from __future__ import annotations

import functools
import threading
import time

import numpy as np
import pandas as pd
import psutil
import torch
import xarray as xr

import eoca
from eoca.data import PlatformData, synthetic_platform
from eoca.instances import synthetic_problem
from eoca.predict import ETVPredictor

# Small batches of a small network: one thread is as fast as two, and far steadier on a shared machine.
TRAIN_THREADS = 1
PREDICT_THREADS = 2
SIZES = (20_000, 200_000, 1_000_000)
PLATFORM = dict(impressions_per_user=2, behaviours_per_user=4, payments_per_user=4)


@functools.lru_cache(maxsize=1)
def _platform(n_users: int):
    return synthetic_platform(n_users, 8, seed=0, **PLATFORM)


@functools.cache
def _one_epoch(n_users: int) -> tuple[float, int, ETVPredictor]:
    """(seconds, training impressions, fitted predictor) of one epoch of ESDPM on ``n_users`` users."""
    train, valid, _ = _platform(n_users).data.split()
    torch.set_num_threads(TRAIN_THREADS)
    predictor = ETVPredictor("esdpm", max_epochs=1, progress=False, seed=0)
    start = time.perf_counter()
    predictor.fit(train, validation=valid)
    return time.perf_counter() - start, len(train.impressions), predictor


def test_training_cost_per_impression_does_not_grow_with_the_platform(benchmark):
    costs = {}
    for n in SIZES:
        seconds, impressions, _ = _one_epoch(n)
        costs[n] = seconds / impressions * 1e6
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update({f"us_per_impression_{n}": costs[n] for n in SIZES})
    print("\ntraining, one epoch:", ", ".join(f"{n:,} users {costs[n]:.0f} us/impression" for n in SIZES))
    for n in SIZES[1:]:
        assert costs[n] <= 1.5 * costs[SIZES[0]], f"{n:,} users: {costs[n]:.0f} us vs {costs[SIZES[0]]:.0f} at 20k"


def test_one_epoch_on_a_million_users_within_five_minutes(benchmark):
    seconds, impressions, _ = benchmark.pedantic(_one_epoch, args=(1_000_000,), rounds=1, iterations=1)
    benchmark.extra_info.update(epoch_seconds=seconds, impressions=impressions)
    print(f"\none epoch, 1,000,000 users ({impressions:,} training impressions): {seconds:.1f} s")
    assert seconds <= 300


class _PeakRSS:
    """The process's peak resident memory above its level at entry, sampled every millisecond."""

    def __enter__(self):
        self.process = psutil.Process()
        self.base = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def _allocation(grid: np.ndarray, users: np.ndarray, data: PlatformData) -> eoca.AllocationProblem:
    """The platform's allocation: risk levels and tolerances from its tables, feasible drawn demands."""
    funds = data.funds["fund_id"].to_numpy()
    levels = data.funds["risk_level"].to_numpy()
    tolerance = np.resize(data.users["risk_tolerance"].to_numpy(), len(users))
    rng = np.random.default_rng(0)
    drawn = np.argmax(np.where(tolerance[:, None] >= levels[None, :], rng.random((len(users), len(funds))), -1), 1)
    return eoca.AllocationProblem(
        etv=xr.DataArray(grid, dims=("user", "fund"), coords={"user": users, "fund": funds}, name="etv"),
        demand=dict(zip(funds, np.bincount(drawn, minlength=len(funds)).tolist())),
        risk_level=dict(zip(funds, levels.tolist())),
        risk_tolerance=pd.Series(tolerance, index=users),
    )


def _solve(problem):
    eoca.solve(synthetic_problem(20_000))  # warm: the kernels compile or load first
    start = time.perf_counter()
    result = eoca.solve(problem, solver="exact")
    return time.perf_counter() - start, result


def test_predict_a_million_users_by_eight_funds(benchmark):
    _, _, predictor = _one_epoch(SIZES[0])
    data = _platform(SIZES[-1]).data
    torch.set_num_threads(PREDICT_THREADS)
    with _PeakRSS() as memory:
        start = time.perf_counter()  # timed here too: under --benchmark-disable the fixture keeps no stats
        grid = benchmark.pedantic(predictor.predict, args=(data,), rounds=1, iterations=1)
        seconds = time.perf_counter() - start
    # chunked equals whole: 5,000 users scored apart, with the whole platform's merchants, give the same rows
    merchant_h = predictor._merchant_embeddings(predictor._merchant_partials(data))
    alone = predictor._predict(_piece(data, data.users["user_id"].to_numpy()[:5000]), merchant_h)
    np.testing.assert_allclose(alone.values, grid.values[:5000], rtol=1e-4)
    solve_seconds, result = _solve(_allocation(grid.values, np.arange(grid.shape[0]), data))
    benchmark.extra_info.update(predict_seconds=seconds, peak_mib=memory.mib, solve_seconds=solve_seconds)
    print(f"\n1M x 8: predict {seconds:.1f} s (peak +{memory.mib:.0f} MiB), exact solve {solve_seconds:.2f} s")
    assert result.status is eoca.Status.OPTIMAL
    assert np.isfinite(grid.values).all() and (grid.values >= 0).all()
    assert seconds <= 15


def _piece(data: PlatformData, users: np.ndarray) -> PlatformData:
    """The tables of ``users`` (every fund kept)."""
    keep = pd.Index(users)

    def rows(table):
        return table[keep.get_indexer(table["user_id"]) >= 0].reset_index(drop=True)

    return PlatformData(rows(data.users), data.funds, rows(data.impressions), rows(data.behaviours),
                        rows(data.payments))


def test_predict_ten_million_users_by_eight_funds(benchmark):
    _, _, predictor = _one_epoch(SIZES[0])
    base = _platform(SIZES[-1]).data
    pieces = [base] * 10
    size = len(base.users)
    n, k = 10 * size, len(base.funds)
    torch.set_num_threads(PREDICT_THREADS)

    def predict() -> np.ndarray:
        merchant_h = predictor._merchant_embeddings(*(predictor._merchant_partials(p) for p in pieces))
        grid = np.empty((n, k), dtype=np.float64)
        for c, piece in enumerate(pieces):
            grid[c * size : (c + 1) * size] = predictor._predict(piece, merchant_h).values
        return grid

    with _PeakRSS() as memory:
        start = time.perf_counter()
        grid = benchmark.pedantic(predict, rounds=1, iterations=1)
        seconds = time.perf_counter() - start
    # every piece holds the same users under other ids and every piece saw the same merchants
    np.testing.assert_array_equal(grid[:size], grid[-size:])
    solve_seconds, result = _solve(_allocation(grid, np.arange(n), base))
    benchmark.extra_info.update(predict_seconds=seconds, peak_mib=memory.mib, solve_seconds=solve_seconds)
    print(f"\n10M x 8: predict {seconds:.1f} s (peak +{memory.mib:.0f} MiB over the tables), "
          f"exact solve {solve_seconds:.2f} s")
    assert result.status is eoca.Status.OPTIMAL
    assert (grid >= 0).all()
    # one 1M piece's encoding and activations, the 610 MiB grid, nothing per pair for all users
    assert memory.mib <= grid.nbytes / 2**20 + 2048
    assert seconds <= 150
