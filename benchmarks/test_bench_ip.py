"""pytest-benchmark suite of the ``ip`` solver (Pyomo + HiGHS) at 1,000 and 10,000 users x 8 funds.

Run with ``pytest benchmarks/test_bench_ip.py``; the plain test run skips this folder.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

pytest.importorskip("pyomo")
pytest.importorskip("highspy")
pytest.importorskip("pytest_benchmark")

import eoca  # noqa: E402
from eoca.solvers.ip import IPSolver, build_model  # noqa: E402

SIZES = (1_000, 10_000)
N_FUNDS = 8


def synthetic_problem(n_users: int, n_funds: int = N_FUNDS, seed: int = 0) -> eoca.AllocationProblem:
    """A feasible instance: sparse gamma ETV, five risk levels, demands taken from a random allocation."""
    rng = np.random.default_rng(seed)
    etv = rng.gamma(1.0, 10.0, size=(n_users, n_funds)) * (rng.random((n_users, n_funds)) < 0.7)
    fund_risk = np.sort(rng.integers(1, 6, n_funds))
    fund_risk[0] = 1
    user_tol = rng.integers(1, 6, n_users)
    eligible = user_tol[:, None] >= fund_risk[None, :]
    demand = np.bincount((rng.random((n_users, n_funds)) * eligible).argmax(axis=1), minlength=n_funds)
    users = [f"u{i}" for i in range(n_users)]
    funds = [f"f{j}" for j in range(n_funds)]
    grid = xr.DataArray(etv, dims=("user", "fund"), coords={"user": users, "fund": funds})
    return eoca.AllocationProblem(
        grid, dict(zip(funds, demand.tolist())), dict(zip(funds, fund_risk.tolist())), pd.Series(user_tol, index=users)
    )


@pytest.fixture(scope="module", params=SIZES, ids=[f"{n}x{N_FUNDS}" for n in SIZES])
def problem(request) -> eoca.AllocationProblem:
    return synthetic_problem(request.param)


def test_ip_solve(benchmark, problem):
    out = benchmark.pedantic(IPSolver().run, args=(problem,), rounds=3, iterations=1, warmup_rounds=1)
    assert out.status == "optimal"
    assert eoca.check_allocation(problem, out.codes).ok
    benchmark.extra_info.update({k: round(v, 4) for k, v in out.timings.items()})


def test_ip_build_model(benchmark, problem):
    model = benchmark.pedantic(build_model, args=(problem,), rounds=3, iterations=1, warmup_rounds=1)
    assert len(model.one_fund) == problem.n_users
