"""A Dask-backed grid with an eligibility mask is allocated chunk by chunk exactly as in memory, and checked
the same way; side constraints on a Dask grid are refused by name (not yet supported)."""

from __future__ import annotations

import numpy as np
import pytest

import eoca
from eoca.instances import constrained_problem
from eoca.io import load_problem, save_problem

pytest.importorskip("dask")


def _masked(problem, etv=None):
    """The delivery of ``problem`` with its mask but without its side constraints."""
    return eoca.AllocationProblem(
        etv=problem.etv if etv is None else etv,
        demand={f: int(d) for f, d in problem.demand_min.to_series().items()},
        risk_level=problem.risk_level.to_series().to_dict(), risk_tolerance=problem.risk_tolerance,
        eligible=problem.eligible)


@pytest.fixture(scope="module")
def ruled():
    return constrained_problem(12_000, 6, seed=3, eligible_share=0.8)


def test_a_masked_dask_grid_is_allocated_as_in_memory(ruled):
    in_memory = _masked(ruled)
    lazy = _masked(ruled, ruled.etv.chunk({"user": 2_500}))
    assert lazy.compile().is_lazy
    a, b = eoca.solve(in_memory), eoca.solve(lazy)
    assert a.status is b.status is eoca.Status.OPTIMAL
    assert b.checks.ok and b.checks.ineligible == 0
    assert b.objective == pytest.approx(a.objective, rel=1e-12)
    assert b.bound == pytest.approx(a.bound, rel=1e-12)
    # the mask binds: the same delivery without it is worth more
    free = eoca.AllocationProblem(ruled.etv, {f: int(d) for f, d in ruled.demand_min.to_series().items()},
                                  ruled.risk_level.to_series().to_dict(), ruled.risk_tolerance)
    assert eoca.solve(free).objective > a.objective * (1 + 1e-6)


def test_a_masked_zarr_problem_opened_lazily_solves_the_same(ruled, tmp_path):
    problem = _masked(ruled)
    lazy = load_problem(save_problem(problem, tmp_path / "p.zarr"), chunks=3_000)
    assert lazy.compile().is_lazy and lazy.eligible is not None
    assert eoca.solve(lazy).objective == pytest.approx(eoca.solve(problem).objective, rel=1e-12)


def test_the_checker_counts_forbidden_pairs_on_a_dask_grid(ruled):
    lazy = _masked(ruled, ruled.etv.chunk({"user": 2_500}))
    codes = np.array(eoca.solve(lazy).codes)
    forbidden = np.argwhere(~ruled.compile().mask)[:3]
    codes[forbidden[:, 0]] = forbidden[:, 1]
    checks = eoca.check_allocation(lazy, codes)
    assert not checks.ok and checks.ineligible == len(np.unique(forbidden[:, 0]))
    assert "eligibility mask forbids" in checks.describe()


def test_side_constraints_on_a_dask_grid_are_refused_by_name(ruled):
    lazy = eoca.AllocationProblem(
        etv=ruled.etv.chunk({"user": 2_500}), demand={f: int(d) for f, d in ruled.demand_min.to_series().items()},
        risk_level=ruled.risk_level.to_series().to_dict(), risk_tolerance=ruled.risk_tolerance,
        constraints=list(ruled.constraints))
    with pytest.raises(eoca.UnsupportedFeatureError, match="side constraints on a Dask-backed grid"):
        eoca.solve(lazy)
