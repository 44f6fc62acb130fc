"""Dask-backed grids: the same answers as in memory, on a LocalCluster with two worker processes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import eoca
from eoca.checks import check_allocation, dual_bound
from eoca.instances import synthetic_problem
from eoca.io import save_result
from eoca.testing import dual_value, recount

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
pytest.importorskip("zarr")

from eoca.distributed import (  # noqa: E402
    open_grid,
    predict_to_zarr,
    solve_exact,
    write_assignment,
    write_synthetic_problem,
)


@pytest.fixture(scope="module")
def client():
    """Two worker processes, one thread each, as on a small deployment.

    Workers do not pause at 80% of their memory limit: on a fresh machine each worker compiles the
    kernels it runs (numba's disk cache is empty) and then loads PyTorch for the prediction tests, which
    briefly takes ~0.8 GiB of unmanaged memory, and a paused worker would leave the test waiting forever.
    """
    with dask.config.set({"distributed.worker.memory.pause": False}), distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit="2GiB", dashboard_address=None
    ) as cluster, distributed.Client(cluster) as c:
        yield c


def lazy(problem: eoca.AllocationProblem, chunk_users: int = 2_500) -> eoca.AllocationProblem:
    """The same problem with its grid as a Dask array chunked along users."""
    return eoca.AllocationProblem(
        problem.etv.chunk({"user": chunk_users}), problem.demand, problem.risk_level, problem.risk_tolerance,
        holdout=problem.holdout,
    )


@pytest.mark.parametrize(
    ("family", "holdout"),
    [("matching", False), ("fighting", True), ("tight", False), ("ties", False), ("zeros", True)],
)
def test_exact_on_a_dask_grid_matches_memory(client, family, holdout):
    problem = synthetic_problem(12_000, family=family, seed=5, holdout=holdout)
    expected = eoca.solve(problem)
    result = eoca.solve(lazy(problem))
    assert problem.compile().is_lazy is False and result.problem.compile().is_lazy
    assert result.status == "optimal" and result.checks.ok
    assert result.objective == pytest.approx(expected.objective, rel=1e-12)
    assert result.bound == pytest.approx(result.objective, rel=1e-9)
    if family in ("matching", "fighting", "tight"):  # no exact ties: the optimum is unique
        np.testing.assert_array_equal(result.codes, expected.codes)


@pytest.mark.parametrize("family", ["matching", "tight", "ties"])
def test_settlement_with_few_gathered_users_still_certifies(client, family):
    """A tiny gather budget forces the verify-and-grow rounds; the answer stays optimal."""
    problem = synthetic_problem(12_000, family=family, seed=2)
    expected = eoca.solve(problem)
    c = lazy(problem).compile()
    sol = solve_exact(c, gather_users=300)
    checks = check_allocation(problem, sol.assignment)
    assert checks.ok
    assert checks.objective == pytest.approx(expected.objective, rel=1e-12)
    assert dual_bound(problem.compile(), sol.prices) == pytest.approx(expected.objective, rel=1e-9)
    assert sol.stats["rounds"][0]["gathered"] < 12_000


def test_range_demands_and_an_empty_fund(client):
    base = synthetic_problem(8_000, seed=4)
    c = base.compile()
    demand = {f: (int(d * 0.8), int(d * 1.3) + 5) for f, d in zip(base.funds, c.demand_min)}
    demand[base.funds[3]] = 0
    demand[base.funds[0]] = (0, 8_000)
    problem = eoca.AllocationProblem(base.etv, demand, base.risk_level, base.risk_tolerance)
    expected = eoca.solve(problem)
    result = eoca.solve(lazy(problem, 1_000))
    assert result.status == "optimal"
    assert result.objective == pytest.approx(expected.objective, rel=1e-12)
    np.testing.assert_allclose(result.prices.values, expected.prices.values, rtol=1e-9, atol=1e-6)


def test_checker_and_bound_run_chunk_by_chunk(client):
    """Planted violations in every chunk are counted the same on the Dask grid as a recount in memory."""
    problem = synthetic_problem(6_000, seed=1)
    lz = lazy(problem, 1_000)
    c = problem.compile()
    codes = eoca.solve(problem).codes.copy()
    rng = np.random.default_rng(0)
    low = np.flatnonzero(c.user_level < c.fund_level.max())  # users some fund is too risky for
    risky = rng.choice(low, 300, replace=False)
    codes[risky] = int(np.argmax(c.fund_level))  # above their tolerance
    rest = np.setdiff1d(np.arange(problem.n_users), risky)
    unplaced, invalid = rng.choice(rest, 40, replace=False), rng.choice(rest, 7, replace=False)
    codes[unplaced], codes[invalid] = -1, problem.n_funds
    expected = recount(problem, codes)
    assert expected.risk_violations >= 250 and expected.unplaced > 0 and expected.invalid > 0
    for checks in (check_allocation(lz, codes), check_allocation(problem, codes)):
        assert (checks.ok, checks.risk_violations, checks.unplaced, checks.invalid, checks.demand_misses) == (
            False, expected.risk_violations, expected.unplaced, expected.invalid, expected.demand_misses)
        np.testing.assert_array_equal(checks.counts.values, expected.counts)
        assert checks.objective == pytest.approx(expected.objective, rel=1e-12)
    prices = np.linspace(-30.0, 50.0, problem.n_funds)
    assert dual_bound(lz.compile(), prices) == pytest.approx(dual_value(problem, prices), rel=1e-12)


@pytest.mark.parametrize("solver", ["heuristic", "manual", "ip"])
def test_solvers_that_need_the_whole_grid_say_so(client, solver):
    problem = lazy(synthetic_problem(2_000, seed=1), 500)
    if solver not in eoca.available_solvers():
        pytest.skip(f"{solver} not installed")
    with pytest.raises(eoca.UnsupportedFeatureError, match="Dask-backed.*exact"):
        eoca.solve(problem, solver=solver)


def test_validation_runs_as_a_reduction_and_names_the_entry():
    grid = synthetic_problem(3_000, seed=1).etv.copy()
    tol = pd.Series(3, index=grid["user"].values)
    demand = dict.fromkeys(grid["fund"].values, 375)
    risk = dict.fromkeys(grid["fund"].values, 1)
    values = grid.values.copy()
    values[2_222, 5] = np.nan
    with pytest.raises(eoca.ETVError, match=r"1 NaN or infinite entries at \(user, fund\) \[\(2222, 'index'\)\]"):
        eoca.AllocationProblem(grid.copy(data=values).chunk({"user": 500}), demand, risk, tol)
    values[2_222, 5] = -1.0
    with pytest.raises(eoca.ETVError, match="negative entries"):
        eoca.AllocationProblem(grid.copy(data=values).chunk({"user": 500}), demand, risk, tol)


def test_zarr_round_trip_generate_solve_write_back(client, tmp_path):
    problem = write_synthetic_problem(tmp_path / "grid.zarr", 30_000, chunk_users=7_000, seed=9)
    assert problem.compile().is_lazy and problem.etv.chunks[0][0] == 7_000
    result = eoca.solve(problem)
    in_memory = eoca.AllocationProblem(problem.etv.load(), problem.demand, problem.risk_level, problem.risk_tolerance)
    assert result.objective == pytest.approx(eoca.solve(in_memory).objective, rel=1e-12)
    write_assignment(result, tmp_path / "assignment.zarr", chunk_users=10_000)
    stored = xr.open_zarr(tmp_path / "assignment.zarr")["fund_code"]
    np.testing.assert_array_equal(stored.values, result.codes)
    write_assignment(result, tmp_path / "assignment", chunk_users=10_000, format="parquet")
    table = pd.read_parquet(tmp_path / "assignment")
    assert len(table) == 30_000 and (table["fund"].to_numpy() == result.assignment.values.astype(str)).all()
    assert open_grid(tmp_path / "grid.zarr").shape == (30_000, 8)


@pytest.mark.parametrize("model", ["esdpm-ncg", "esdpm"])
def test_predict_to_zarr_matches_predict(client, tmp_path, model):
    """Chunks see the whole platform's merchants: the graph model's grid is the in-memory one too."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from eoca.data import synthetic_platform
    from eoca.predict import ETVPredictor

    platform = synthetic_platform(n_users=300, n_funds=5, seed=3, impressions_per_user=3)
    predictor = ETVPredictor(
        model, max_epochs=1, patience=1, hidden=8, embedding_dim=4, graph_dim=4, progress=False
    ).fit(platform.data)
    grid = predict_to_zarr(predictor, platform.data, tmp_path / "etv.zarr", chunk_users=70)
    assert grid.chunks[0] == (70, 70, 70, 70, 20)
    expected = predictor.predict(platform.data)
    np.testing.assert_allclose(grid.values, expected.values, rtol=1e-5)
    np.testing.assert_array_equal(grid["user"].values, expected["user"].values)


def test_frame_and_saved_result_of_a_dask_grid_match_memory(client, tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    from dask.callbacks import Callback

    import eoca.io
    import eoca.result

    # blocks of 1,000 users across chunks of 2,500: the grid is read block by block, never whole
    monkeypatch.setattr(eoca.result, "_VALUE_ROWS", 1_000)
    monkeypatch.setattr(eoca.io, "_RESULT_ROWS", 1_500)
    problem = synthetic_problem(12_000, family="matching", seed=3)
    expected = eoca.solve(problem)
    result = eoca.solve(lazy(problem))
    rows = []

    class Rows(Callback):  # the users of every piece of grid the reads compute
        def _posttask(self, key, value, dsk, state, id):
            if isinstance(value, np.ndarray) and value.ndim == 2:
                rows.append(value.shape[0])

    result.problem.fingerprint()  # a fixed sample of 4,096 rows, computed once per problem
    with dask.config.set(scheduler="sync"), Rows():
        frame = result.to_frame()
        save_result(result, tmp_path / "lazy")
    assert rows and max(rows) <= 2_500  # a chunk at most, never the whole grid of 12,000 users
    pd.testing.assert_frame_equal(frame, expected.to_frame())
    save_result(expected, tmp_path / "memory")
    lazy_table = pq.read_table(tmp_path / "lazy" / "assignment.parquet")
    assert lazy_table.equals(pq.read_table(tmp_path / "memory" / "assignment.parquet"))
    np.testing.assert_array_equal(lazy_table.column("etv").to_numpy(), expected.to_frame()["etv"].to_numpy())


def test_a_masked_grid_is_allocated_on_the_cluster_as_in_memory(client):
    from eoca.instances import constrained_problem

    ruled = constrained_problem(12_000, 6, seed=3, eligible_share=0.8)

    def masked(etv):
        return eoca.AllocationProblem(etv, {f: int(d) for f, d in ruled.demand_min.to_series().items()},
                                      ruled.risk_level.to_series().to_dict(), ruled.risk_tolerance,
                                      eligible=ruled.eligible)

    expected = eoca.solve(masked(ruled.etv))
    result = eoca.solve(masked(ruled.etv.chunk({"user": 2_500})))
    assert result.status == "optimal" and result.checks.ok and result.checks.ineligible == 0
    assert result.objective == pytest.approx(expected.objective, rel=1e-12)
    assert result.bound == pytest.approx(expected.bound, rel=1e-12)


def _sum_of_extra(block, values, scale):
    return float(values.sum()) * scale + block.shape[0]


def test_per_block_arguments_travel_apart_from_the_task_graph(client):
    """The gathered users' indices of a 50M-user solve are tens of MB per pass: embedded in the task graph
    they made Dask warn "Sending large graph" and slowed every pass. They travel like the per-user
    vectors, as data Dask holds sent in groups below the warning threshold (lowered here so that 4 x 2 MB
    in one graph would trip it)."""
    import warnings

    from eoca.distributed.blocks import map_user_blocks

    grid = synthetic_problem(12_000, seed=1).etv.chunk({"user": 3_000}).data
    extra = [(np.full(250_000, i, dtype=np.float64),) for i in range(4)]
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "3MB"}):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any warning (the large graph one included) fails the test
            out = map_user_blocks(_sum_of_extra, grid, per_block=extra, args=(2.0,))
    assert out == [250_000 * i * 2.0 + 3_000 for i in range(4)]


@pytest.mark.parametrize("masked", [False, True])
def test_check_and_bound_read_a_dask_grid_once(client, monkeypatch, masked):
    """eoca.solve's independent check and dual bound on a Dask grid: one pass over the chunks for both
    (each pass reads the whole grid from its store: at 50M users, 10 s), the same figures as the checker
    and the bound apart."""
    from eoca import checks

    base = synthetic_problem(12_000, seed=4)
    mask = None
    if masked:
        rng = np.random.default_rng(4)
        mask = base.etv.copy(data=rng.random(base.etv.shape) < 0.9)
        mask[:, 0] = True  # every user keeps a fund the risk rule allows
    problem = eoca.AllocationProblem(base.etv.chunk({"user": 2_500}), base.demand, base.risk_level,
                                     base.risk_tolerance, eligible=mask)
    rng = np.random.default_rng(1)
    codes = rng.integers(-1, problem.n_funds, problem.n_users).astype(np.int32)
    prices = rng.normal(0, 1, problem.n_funds)
    expected = check_allocation(problem, codes), dual_bound(problem.compile(), prices)
    passes = []
    real = checks.map_user_blocks
    monkeypatch.setattr(checks, "map_user_blocks", lambda func, *a, **kw: passes.append(func) or real(func, *a, **kw))
    got, bound = checks.check_and_bound(problem, codes, prices)
    assert len(passes) == 1
    assert bound == pytest.approx(expected[1], rel=1e-12)
    assert got.objective == pytest.approx(expected[0].objective, rel=1e-12)
    assert (got.unplaced, got.invalid, got.risk_violations, got.ineligible, got.ok) == (
        expected[0].unplaced, expected[0].invalid, expected[0].risk_violations, expected[0].ineligible, expected[0].ok)
    np.testing.assert_array_equal(got.counts.values, expected[0].counts.values)
    assert got.risk_violations > 0 and (got.ineligible > 0) == masked  # the codes break rules: counted alike


@pytest.mark.parametrize(("pre_share", "covered"), [(0.9, True), (0.05, False), (0.0, False)])
def test_the_first_gather_comes_from_pass_a_when_its_threshold_covers(client, monkeypatch, pre_share, covered):
    """Pass A returns the users of smallest gap under the warm prices; when they cover the threshold chosen
    after it, pass B is not run in the first round, and the users gathered, the rounds and the optimum are
    those of the run with pass B."""
    from eoca.distributed import solve as engine

    problem = synthetic_problem(30_000, family="matching", seed=3)
    c = lazy(problem, 6_000).compile()
    monkeypatch.setattr(engine._tuning, "GATHER_MIN", 2_000)
    monkeypatch.setattr(engine._tuning, "PRE_GATHER", 0.0)
    monkeypatch.setattr(engine, "_pre_gather_threshold", lambda *a: -np.inf)
    without = solve_exact(c)
    monkeypatch.undo()
    monkeypatch.setattr(engine._tuning, "GATHER_MIN", 2_000)
    monkeypatch.setattr(engine._tuning, "PRE_GATHER", pre_share)
    passes = []
    real = engine.map_user_blocks
    monkeypatch.setattr(engine, "map_user_blocks", lambda func, *a, **kw: passes.append(func.__name__) or real(func, *a, **kw))
    sol = solve_exact(c)
    first = sol.stats["rounds"][0]
    assert first.get("from_pass_a", False) is covered
    assert ("_pass_b" in passes) is (not covered or len(sol.stats["rounds"]) > 1)
    assert 0 < first["gathered"] < 30_000 and first["gathered"] == without.stats["rounds"][0]["gathered"]
    assert len(sol.stats["rounds"]) == len(without.stats["rounds"])
    np.testing.assert_array_equal(sol.assignment, without.assignment)
    np.testing.assert_array_equal(sol.prices, without.prices)
    assert check_allocation(problem, sol.assignment).objective == pytest.approx(eoca.solve(problem).objective, rel=1e-12)


@pytest.mark.parametrize("family", ["matching", "tight"])
def test_the_gathered_users_are_settled_by_the_in_memory_phases_newton_step_included(client, monkeypatch, family):
    """The distributed settlement is the in-memory level's pass, Newton step and repair on the gathered
    block (the step runs from NEWTON_USERS users, lowered here to reach it on a small grid): it reads some
    users, and the optimum and assignment are the in-memory ones."""
    from eoca.distributed import solve as engine

    problem = synthetic_problem(40_000, family=family, seed=6)
    expected = eoca.solve(problem)
    monkeypatch.setattr(engine._tuning, "NEWTON_USERS", 1_000)
    monkeypatch.setattr(engine._tuning, "GATHER_MIN", 5_000)
    sol = solve_exact(lazy(problem, 10_000).compile())
    steps = [r["newton_read"] for r in sol.stats["rounds"] if "newton_read" in r]
    assert steps and steps[0][0] > 0, sol.stats["rounds"]
    checks = check_allocation(problem, sol.assignment)
    assert checks.ok and checks.objective == pytest.approx(expected.objective, rel=1e-12)
    assert dual_bound(problem.compile(), sol.prices) == pytest.approx(expected.objective, rel=1e-9)
    np.testing.assert_array_equal(sol.assignment, expected.codes)


def test_pass_a_never_returns_more_rows_than_twice_its_share_or_the_gather_limit(monkeypatch):
    """The early gather is read off the warm-start sample's gaps. Where most users may take one fund only
    (an infinite gap each) the share's threshold is +inf and would return every row of the grid: no
    early gather then. A small grid (at most twice GATHER_MIN users) returns them all, within gather_limit."""
    from eoca.distributed import solve as engine

    sample = 10_000
    gaps = np.full(sample, np.inf, dtype=np.float32)
    gaps[: sample // 20] = np.linspace(0.0, 1.0, sample // 20)  # 5% with a second fund
    monkeypatch.setattr(engine.K, "assign_pass", lambda *a: (None, gaps))

    def threshold(n, limit=20_000_000):
        return engine._pre_gather_threshold(None, np.zeros(sample), None, None, None, np.zeros(3, np.int64), n, limit)

    assert threshold(3_000_000) == -np.inf  # 8% would need the infinite gaps: 95% of the rows
    assert threshold(300_000) == np.inf  # a small grid: every row
    assert threshold(300_000, limit=100_000) == -np.inf  # ... unless the gather limit forbids it
    gaps[:] = np.linspace(0.0, 1.0, sample)  # every user has a second fund: 8% of them (800k of 10M)
    assert threshold(10_000_000) == pytest.approx(np.quantile(gaps, 0.08), abs=1e-3)
