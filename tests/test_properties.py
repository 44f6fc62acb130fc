"""Property tests on random small problems: exact solvers equal brute force, nobody beats them, the checks
agree with an independent recount, every bound is above the optimum, and the diagnosis agrees with
enumeration (the references are in :mod:`eoca.testing`; none of them uses the library's checker)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import small_problems

import eoca
from eoca.instances import FAMILIES, synthetic_problem
from eoca.testing import assert_valid_result, brute_force


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
        if name == "manual":
            assert result.checks.risk_violations == 0  # it may miss demands, never the risk rule


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
