"""pytest-benchmark suite of the ``ip`` solver (Pyomo + HiGHS) at 1,000 and 10,000 users x 8 funds.

Run with ``pytest benchmarks/test_bench_ip.py``; the plain test run skips this folder.
"""

from __future__ import annotations

import pytest

pytest.importorskip("pyomo")
pytest.importorskip("highspy")
pytest.importorskip("pytest_benchmark")

import numpy as np  # noqa: E402

import eoca  # noqa: E402
from eoca.instances import synthetic_problem  # noqa: E402
from eoca.solvers.ip import IPSolver, build_model  # noqa: E402
from eoca.testing import milp_optimum, recount  # noqa: E402

SIZES = (1_000, 10_000)
N_FUNDS = 8


@pytest.fixture(scope="module", params=SIZES, ids=[f"{n}x{N_FUNDS}" for n in SIZES])
def problem(request) -> eoca.AllocationProblem:
    return synthetic_problem(request.param, N_FUNDS, family="matching")


def test_ip_solve(benchmark, problem):
    out = benchmark.pedantic(IPSolver().run, args=(problem,), rounds=3, iterations=1, warmup_rounds=1)
    optimum, _ = milp_optimum(problem)  # the same model written with SciPy, not through Pyomo
    again = recount(problem, out.codes)
    benchmark.extra_info.update({k: round(v, 4) for k, v in out.timings.items()})
    assert out.status == "optimal" and again.ok
    assert again.objective == pytest.approx(optimum, rel=1e-9)


def test_ip_build_model(benchmark, problem):
    model = benchmark.pedantic(build_model, args=(problem,), rounds=3, iterations=1, warmup_rounds=1)
    tolerance, level = problem.risk_tolerance.values, problem.risk_level.values
    allowed = int(np.count_nonzero(tolerance[:, None] >= level[None, :]))
    benchmark.extra_info.update(variables=len(model.assign), allowed_pairs=allowed)
    # one binary variable per pair the risk rule allows (eq. 5), one row per user and per fund
    assert len(model.assign) == allowed and all(v.is_binary() for v in model.assign.values())
    assert len(model.one_fund) == problem.n_users and len(model.demand) == problem.n_funds
