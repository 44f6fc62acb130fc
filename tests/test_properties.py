"""Property tests on random small problems: exact solvers equal brute force, nobody beats them, the checks
agree with a recount, every bound is above the optimum, and the diagnosis agrees with enumeration."""

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eoca
from eoca.instances import FAMILIES, synthetic_problem
from eoca.testing import assert_valid_result, brute_force


@st.composite
def small_problems(draw):
    n = draw(st.integers(1, 6))
    k = draw(st.integers(1, 3))
    distinct = draw(st.sampled_from([2, 4, 100]))  # few distinct values make ties the normal case
    etv = np.array(draw(st.lists(st.integers(0, distinct - 1), min_size=n * k, max_size=n * k)), float).reshape(n, k)
    n_levels = draw(st.integers(1, 3))
    tol = draw(st.lists(st.integers(1, n_levels), min_size=n, max_size=n))
    risk = draw(st.lists(st.integers(1, n_levels), min_size=k, max_size=k))
    holdout = draw(st.booleans())
    counts = draw(st.lists(st.integers(0, n), min_size=k, max_size=k))
    ranged = draw(st.lists(st.booleans(), min_size=k, max_size=k))
    extra = draw(st.lists(st.integers(0, 2), min_size=k, max_size=k))
    demand = {}
    for j in range(k):
        demand[f"f{j}"] = (counts[j], counts[j] + extra[j]) if ranged[j] else counts[j]
    lo = sum(counts)
    hi = sum(c + (e if r else 0) for c, e, r in zip(counts, extra, ranged))
    if lo > n or (not holdout and hi < n):  # not a valid declaration; scale the demand onto n users
        scaled = np.floor(np.array(counts) * n / max(sum(counts), 1)).astype(int)
        scaled[0] += n - scaled.sum()
        demand = {f"f{j}": int(scaled[j]) for j in range(k)}
    return eoca.AllocationProblem(
        etv=xr.DataArray(etv, dims=("user", "fund"), coords={"user": [f"u{i}" for i in range(n)], "fund": list(demand)}),
        demand=demand,
        risk_level=dict(zip(demand, risk)),
        risk_tolerance={f"u{i}": t for i, t in enumerate(tol)},
        holdout=holdout,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_solvers_against_brute_force(problem):
    optimum, _ = brute_force(problem)
    feasible = not np.isnan(optimum)
    assert problem.diagnose().feasible == feasible
    for name in eoca.available_solvers():
        result = eoca.solve(problem, solver=name)
        assert_valid_result(result)
        if not feasible:
            assert result.status is eoca.Status.INFEASIBLE
            continue
        assert result.bound >= optimum - 1e-9, name
        if result.checks.ok:
            assert result.objective <= optimum + 1e-9, name
        if name in ("exact", "ip"):
            assert result.status is eoca.Status.OPTIMAL, (name, result)
            assert abs(result.objective - optimum) <= 1e-9, (name, result.objective, optimum)
        if name == "heuristic":
            # risk-safe by default: whenever the problem is feasible, the heuristic meets every rule
            assert result.checks.ok, result


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 7), k=st.integers(2, 3), seed=st.integers(0, 10_000), holdout=st.booleans())
def test_exact_and_ip_equal_brute_force_on_every_family(family, n, k, seed, holdout):
    problem = synthetic_problem(n, k, family=family, seed=seed, holdout=holdout)
    optimum, _ = brute_force(problem)
    assert not np.isnan(optimum)  # the families are feasible by construction
    for name in ("exact", "ip"):
        if name not in eoca.available_solvers():
            continue
        result = eoca.solve(problem, solver=name)
        assert_valid_result(result)
        assert result.status is eoca.Status.OPTIMAL, (name, result)
        assert abs(result.objective - optimum) <= 1e-9 * max(1.0, abs(optimum)), (name, result.objective, optimum)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_both_safety_nets_meet_every_rule_whenever_that_is_possible(problem):
    feasible = problem.diagnose().feasible
    faithful = eoca.solve(problem, solver="heuristic", risk_safe=False)
    for net in ("repair", "reroute"):
        result = eoca.solve(problem, solver="heuristic", safety_net=net)
        assert_valid_result(result)
        assert result.checks.ok == feasible, (net, result)
        if feasible and net == "repair":
            # the repair changes exactly the users it reports, and nothing where Algorithm 1 broke no rule
            changed = int((result.codes != faithful.codes).sum())
            assert changed == result.stats["repair_moved"]
            if faithful.checks.ok:
                assert changed == 0


@settings(max_examples=60, deadline=None)
@given(small_problems())
def test_faithful_heuristic_is_reported_honestly(problem):
    result = eoca.solve(problem, solver="heuristic", risk_safe=False)
    assert_valid_result(result)
    if result.checks.risk_violations or not result.checks.ok:
        assert result.status in (eoca.Status.ERROR, eoca.Status.INFEASIBLE)
