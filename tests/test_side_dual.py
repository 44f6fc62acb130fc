"""The exact solve with side constraints at scale: prices and multipliers from Newton's method on the
smoothed dual (eoca.solvers._side_dual), every user at a best option, the users near a tie settled by an
LP and a small MIP. The path starts at ``_tuning.DUAL_USERS`` users; here it is forced on deliveries of a
few thousand users (and its warm-start sample made smaller) and compared with the restricted-LP path,
which proves the LP optimum. Every rule is recounted and the bound certified by eoca.testing (plain
numpy, no code shared with the solver)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import eoca
from eoca.instances import constrained_problem
from eoca.solvers import _tuning
from eoca.testing import dual_value, recount


@pytest.fixture
def smoothed(monkeypatch):
    monkeypatch.setattr(_tuning, "DUAL_USERS", 0)
    monkeypatch.setattr(_tuning, "DUAL_SAMPLE", 1_000)


def _certified(problem, result) -> tuple[float, float]:
    again = recount(problem, result.codes)
    assert again.ok, again
    bound = dual_value(problem, result.prices.values, result.multipliers)
    return again.objective, bound


def _variant(problem: eoca.AllocationProblem, *, holdout: bool, ranges: bool) -> eoca.AllocationProblem:
    """The same delivery with demand ranges (+-5%) and/or holdout."""
    demand = {f: (int(d * 0.95), int(np.ceil(d * 1.05))) if ranges else int(d)
              for f, d in problem.demand_min.to_series().items()}
    return eoca.AllocationProblem(etv=problem.etv, demand=demand, risk_level=problem.risk_level.to_series().to_dict(),
                                  risk_tolerance=problem.risk_tolerance, holdout=holdout, eligible=problem.eligible,
                                  constraints=list(problem.constraints))


@pytest.mark.parametrize("n_users, seed", [(3_000, 0), (12_000, 1)])
@pytest.mark.parametrize("holdout, ranges", [(False, False), (True, True)], ids=["exact demands", "holdout and ranges"])
def test_the_smoothed_dual_meets_every_rule_within_a_certified_gap(smoothed, monkeypatch, n_users, seed, holdout, ranges):
    problem = _variant(constrained_problem(n_users, 6, seed=seed), holdout=holdout, ranges=ranges)
    result = eoca.solve(problem)
    assert result.stats["method"] == "smoothed dual", result.stats
    assert result.checks.ok, result.checks.describe()
    value, bound = _certified(problem, result)
    assert value == pytest.approx(result.objective, rel=1e-12)
    assert bound >= value - 1e-9 * abs(value)
    assert (bound - value) / abs(value) <= 1e-5, (bound, value)
    assert result.bound == pytest.approx(bound, rel=1e-12)
    # the restricted LPs prove the LP optimum: the two allocations are worth the same within the gap, and
    # neither bound lies below the other's allocation
    monkeypatch.setattr(_tuning, "DUAL_USERS", 10**12)
    proven = eoca.solve(problem)
    assert proven.stats["method"] == "restricted LP"
    assert abs(proven.objective - value) <= 1e-5 * abs(value)
    assert bound >= proven.objective - 1e-9 * abs(value)
    assert proven.bound >= value - 1e-9 * abs(value)


def test_rules_no_allocation_can_meet_are_named_after_the_smoothed_dual_gives_up(smoothed):
    problem = constrained_problem(3_000, 6, seed=2)
    new = problem.constraints[0]
    impossible = eoca.Quota(users=new.users, funds=new.funds, at_least=10**6, name="too many new users")
    problem = eoca.AllocationProblem(
        etv=problem.etv, demand={f: int(d) for f, d in problem.demand_min.to_series().items()},
        risk_level=problem.risk_level.to_series().to_dict(), risk_tolerance=problem.risk_tolerance,
        eligible=problem.eligible, constraints=[impossible, *problem.constraints[1:]])
    result = eoca.solve(problem)
    assert result.status is eoca.Status.INFEASIBLE, result
    assert "too many new users" in result.message
    assert not result.ok


def test_the_smoothed_dual_is_reproducible(smoothed):
    problem = constrained_problem(5_000, 5, seed=3)
    first, second = eoca.solve(problem), eoca.solve(problem)
    np.testing.assert_array_equal(first.codes, second.codes)
    np.testing.assert_array_equal(first.multipliers, second.multipliers)
    assert isinstance(first.constraints, pd.DataFrame) and first.constraints["ok"].all()
