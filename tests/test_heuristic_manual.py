"""The paper's heuristic (faithful and risk-safe) and the manual baseline."""

import numpy as np
import pytest

import eoca
from eoca.instances import synthetic_problem
from eoca.testing import assert_valid_result
from eoca.testing import etv_grid as grid


def test_faithful_algorithm1_breaks_the_risk_rule_on_tight_levels_and_says_so():
    problem = synthetic_problem(5_000, 8, family="tight", seed=0)
    result = eoca.solve(problem, solver="heuristic", risk_safe=False)
    assert_valid_result(result)
    assert result.checks.risk_violations > 0
    assert result.status is eoca.Status.ERROR and not result.ok
    assert f"{result.checks.risk_violations:,} users above their risk tolerance" in result.message


def test_risk_safe_heuristic_repairs_algorithm1_on_the_same_instance():
    problem = synthetic_problem(5_000, 8, family="tight", seed=0)
    faithful = eoca.solve(problem, solver="heuristic", risk_safe=False)
    result = eoca.solve(problem, solver="heuristic")  # risk_safe=True, safety_net="repair" by default
    assert_valid_result(result)
    assert result.ok and result.status is eoca.Status.FEASIBLE
    # it undid every breach Algorithm 1 made, and says how many users it moved to do so
    assert result.stats["risk_breaches"] == faithful.checks.risk_violations > 0
    changed = result.codes != faithful.codes
    assert changed.sum() == result.stats["repair_moved"] >= result.stats["risk_breaches"]
    # a small re-allocation: most users keep Algorithm 1's fund
    assert result.stats["repair_freed"] < problem.n_users / 2
    optimum = eoca.solve(problem, solver="exact").objective
    assert result.objective <= optimum


def test_reroute_safety_net_meets_every_rule_on_the_same_instance():
    problem = synthetic_problem(5_000, 8, family="tight", seed=0)
    result = eoca.solve(problem, solver="heuristic", safety_net="reroute")
    assert_valid_result(result)
    assert result.ok and result.status is eoca.Status.FEASIBLE
    assert result.stats["rerouted"] > 0
    assert "repair_moved" not in result.stats


def test_repair_moves_the_user_algorithm1_places_above_its_tolerance():
    # A takes exactly one user, B and C at most one each, nobody may be held out. Both users prefer A; u1
    # (the stronger preference) gets it. Algorithm 1 as printed sets u2's ETV for B (above its tolerance)
    # to 0, which ties C's 0, and the tie goes to B: the rule is broken. The repair moves u2 to C.
    problem = eoca.AllocationProblem(
        etv=grid([[10.0, 1.0, 0.5], [9.0, 8.0, 0.0]], funds=["A", "B", "C"]),
        demand={"A": 1, "B": (0, 1), "C": (0, 1)}, risk_level={"A": 0, "B": 2, "C": 0},
        risk_tolerance={"u1": 2, "u2": 0},
    )
    faithful = eoca.solve(problem, solver="heuristic", risk_safe=False)
    assert faithful.checks.risk_violations == 1
    result = eoca.solve(problem, solver="heuristic")
    assert result.ok
    assert result.assignment.values.tolist() == ["A", "C"]
    assert result.stats["repair_moved"] == 1


def test_heuristic_follows_algorithm1_where_no_rule_binds():
    # No risk rule, ample room: the user with the strongest preference is placed first into its top fund.
    # u1 prefers A by far; u2 is nearly indifferent. A takes one user, B one: HA gives u1 -> A, u2 -> B.
    problem = eoca.AllocationProblem(
        etv=grid([[10.0, 1.0], [5.0, 4.9]], funds=["A", "B"]),
        demand={"A": 1, "B": 1}, risk_level={"A": 0, "B": 0}, risk_tolerance={"u1": 0, "u2": 0},
    )
    for safe in (True, False):
        result = eoca.solve(problem, solver="heuristic", risk_safe=safe)
        assert result.assignment.values.tolist() == ["A", "B"]
        assert result.objective == pytest.approx(14.9)


def test_heuristic_is_deterministic():
    problem = synthetic_problem(3_000, 8, family="ties", seed=2)
    a = eoca.solve(problem, solver="heuristic").codes
    b = eoca.solve(problem, solver="heuristic").codes
    np.testing.assert_array_equal(a, b)


def test_heuristic_option_validation():
    problem = synthetic_problem(50, 3, seed=0)
    with pytest.raises(eoca.ValidationError, match="risk_safe: must be True or False; got 'yes'"):
        eoca.solve(problem, solver="heuristic", risk_safe="yes")
    with pytest.raises(eoca.ValidationError, match="safety_net: must be 'repair' or 'reroute'; got 'fix'"):
        eoca.solve(problem, solver="heuristic", safety_net="fix")


def test_manual_takes_top_users_in_priority_order():
    # A picks first: its top two users are u1 and u2; B gets u3 although u2 prefers B.
    problem = eoca.AllocationProblem(
        etv=grid([[9, 1], [8, 9], [1, 2]], funds=["A", "B"]),
        demand={"A": 2, "B": 1}, risk_level={"A": 0, "B": 0}, risk_tolerance={"u1": 0, "u2": 0, "u3": 0},
    )
    result = eoca.solve(problem, solver="manual", priority=["A", "B"])
    assert result.assignment.values.tolist() == ["A", "A", "B"]
    assert result.objective == 19
    assert eoca.solve(problem, solver="manual", priority=["B", "A"]).objective == 9 + 9 + 1


def test_manual_can_strand_users_and_the_result_says_so():
    # A (risk 0) picks first and takes u2, the only user B (risk 1) could take.
    problem = eoca.AllocationProblem(
        etv=grid([[1, 0], [5, 5]], funds=["A", "B"]),
        demand={"A": 1, "B": 1}, risk_level={"A": 0, "B": 1}, risk_tolerance={"u1": 0, "u2": 1},
    )
    result = eoca.solve(problem, solver="manual", priority=["A", "B"])
    assert result.checks.unplaced == 1 and result.checks.demand_misses == 1
    assert result.status is eoca.Status.ERROR and "1 users unplaced" in result.message


def test_manual_priority_must_list_every_fund():
    problem = synthetic_problem(50, 3, seed=0)
    with pytest.raises(eoca.ValidationError, match="priority: must list every fund exactly once"):
        eoca.solve(problem, solver="manual", priority=["fund_00"])
