"""pytest-benchmark suite of the ``ip`` solver (Pyomo + HiGHS) at 1,000 and 10,000 users x 8 funds.

Run with ``pytest benchmarks/test_bench_ip.py``; the plain test run skips this folder.
"""

from __future__ import annotations

import pytest

pytest.importorskip("pyomo")
pytest.importorskip("highspy")
pytest.importorskip("pytest_benchmark")

import eoca  # noqa: E402
from eoca.instances import synthetic_problem  # noqa: E402
from eoca.solvers.ip import IPSolver, build_model  # noqa: E402

SIZES = (1_000, 10_000)
N_FUNDS = 8


@pytest.fixture(scope="module", params=SIZES, ids=[f"{n}x{N_FUNDS}" for n in SIZES])
def problem(request) -> eoca.AllocationProblem:
    return synthetic_problem(request.param, N_FUNDS, family="matching")


def test_ip_solve(benchmark, problem):
    out = benchmark.pedantic(IPSolver().run, args=(problem,), rounds=3, iterations=1, warmup_rounds=1)
    assert out.status == "optimal"
    assert eoca.check_allocation(problem, out.codes).ok
    benchmark.extra_info.update({k: round(v, 4) for k, v in out.timings.items()})


def test_ip_build_model(benchmark, problem):
    model = benchmark.pedantic(build_model, args=(problem,), rounds=3, iterations=1, warmup_rounds=1)
    assert len(model.one_fund) == problem.n_users
