"""eoca.testing: the independent recount catches a checker, a bound or a status that lie, and the two
references (enumeration and the MILP of the definition) agree with each other."""

import dataclasses
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import allocations, small_problems

import eoca
from eoca.checks import check_allocation, check_and_bound, dual_bound
from eoca.instances import synthetic_problem
from eoca.testing import assert_valid_result, brute_force, dual_value, feasible, milp_optimum, recount

SOLVE = sys.modules["eoca.solve"]  # the module whose checker and bound every result goes through


def _blind_to(rule):
    """The checker and bound of `eoca.solve`, with a checker that does not see one rule: it counts that
    rule as never broken."""
    def blind(problem, checks):
        if rule == "risk":
            checks = dataclasses.replace(checks, risk_violations=0)
        else:
            checks = dataclasses.replace(checks, demand_misses=0, miss_per_fund=checks.miss_per_fund * 0,
                                         counts=problem.demand_min.copy())
        return dataclasses.replace(checks, ok=checks.risk_violations == 0 and checks.demand_misses == 0
                                   and checks.unplaced == 0 and checks.invalid == 0)

    def check_and_bound_blind(problem, codes, prices):
        checks, bound = check_and_bound(problem, codes, prices)
        return blind(problem, checks), bound
    return check_and_bound_blind


def _bound_times(factor):
    """The checker and bound of `eoca.solve`, with the bound scaled by ``factor``."""
    def check_and_bound_off(problem, codes, prices):
        checks, bound = check_and_bound(problem, codes, prices)
        return checks, bound * factor
    return check_and_bound_off


def test_helper_catches_a_checker_that_ignores_risk_violations(monkeypatch):
    problem = synthetic_problem(2_000, 8, family="tight", seed=0)
    honest = eoca.solve(problem, solver="heuristic", risk_safe=False)
    assert honest.checks.risk_violations > 0  # Algorithm 1 as printed breaks the risk rule here
    assert_valid_result(honest)

    monkeypatch.setattr(SOLVE, "check_and_bound", _blind_to("risk"))
    fooled = eoca.solve(problem, solver="heuristic", risk_safe=False)
    assert fooled.checks.ok and fooled.status is eoca.Status.FEASIBLE  # the broken checker lets it through
    with pytest.raises(AssertionError, match=f"risk_violations is 0 but a recount gives {honest.checks.risk_violations}"):
        assert_valid_result(fooled)


def test_helper_catches_a_checker_that_ignores_demands(monkeypatch):
    problem = synthetic_problem(2_000, 8, family="tight", seed=0)
    honest = eoca.solve(problem, solver="manual")
    assert honest.checks.demand_misses > 0  # the priority baseline strands users on tight levels
    monkeypatch.setattr(SOLVE, "check_and_bound", _blind_to("demand"))
    with pytest.raises(AssertionError, match="demand_misses is 0 but a recount gives"):
        assert_valid_result(eoca.solve(problem, solver="manual"))


def test_helper_catches_a_wrong_bound(monkeypatch):
    problem = synthetic_problem(500, 5, family="fighting", seed=2)
    assert_valid_result(eoca.solve(problem))
    monkeypatch.setattr(SOLVE, "check_and_bound", _bound_times(1.001))
    with pytest.raises(AssertionError, match="dual value of the result's prices"):
        assert_valid_result(eoca.solve(problem))
    monkeypatch.setattr(SOLVE, "check_and_bound", _bound_times(0.9))
    with pytest.raises(AssertionError, match="below the ETV"):
        assert_valid_result(eoca.solve(problem, solver="heuristic"))  # no prices: only the recount sees it


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (dict(objective=1.0), "objective 1.0 but the grid gives"),
        (dict(status=eoca.Status.OPTIMAL, message=""), "status 'optimal' claimed for an allocation that breaks"),
        (dict(message="the allocation breaks rules"), "does not say 'risk tolerance'"),
        (dict(status=eoca.Status.INFEASIBLE), "infeasible' for a problem that Hall's condition"),
        (dict(bound=float("nan")), "bound nan is not a number"),
    ],
)
def test_helper_rejects_a_result_that_misreports(change, words):
    problem = synthetic_problem(1_000, 8, family="tight", seed=1)
    result = eoca.solve(problem, solver="heuristic", risk_safe=False)
    assert_valid_result(result)
    with pytest.raises(AssertionError, match=words):
        assert_valid_result(dataclasses.replace(result, **change))


def test_helper_rejects_an_optimum_claimed_with_a_gap():
    result = eoca.solve(synthetic_problem(800, 5, family="matching", seed=3), solver="heuristic")
    assert result.checks.ok and result.gap > 1e-6
    with pytest.raises(AssertionError, match="optimal claimed with a gap"):
        assert_valid_result(dataclasses.replace(result, status=eoca.Status.OPTIMAL))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_checker_agrees_with_the_recount_on_any_allocation(data):
    problem = data.draw(small_problems(max_users=8, max_funds=4))
    codes = data.draw(allocations(problem))
    prices = np.array(data.draw(st.lists(st.integers(-20, 20), min_size=problem.n_funds,
                                         max_size=problem.n_funds)), dtype=float) / 4
    again = recount(problem, codes)
    # alone, and fused with the bound in eoca.solve's one read of the grid (a loop of its own)
    fused, bound = check_and_bound(problem, codes, prices)
    assert bound == pytest.approx(dual_value(problem, prices), abs=1e-9)
    for checks in (check_allocation(problem, codes), fused):
        assert (checks.ok, checks.unplaced, checks.invalid, checks.risk_violations, checks.demand_misses) == (
            again.ok, again.unplaced, again.invalid, again.risk_violations, again.demand_misses)
        np.testing.assert_array_equal(checks.counts.values, again.counts)
        np.testing.assert_array_equal(checks.miss_per_fund.values, again.miss_per_fund)
        assert checks.objective == pytest.approx(again.objective, abs=1e-9)
    # the labelled form: a fund id per user, missing for none (invalid codes have no label: none too)
    labels = [problem.funds[j] if 0 <= j < problem.n_funds else None for j in codes]
    by_label = check_allocation(problem, xr.DataArray(np.array(labels, dtype=object), dims=("user",),
                                                      coords={"user": problem.users}))
    valid = np.where((codes >= 0) & (codes < problem.n_funds), codes, -1)
    assert by_label.ok == recount(problem, valid).ok and by_label.invalid == 0


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_bound_is_the_dual_value_of_any_prices(data):
    problem = data.draw(small_problems(max_users=8, max_funds=4))
    prices = np.array(data.draw(st.lists(st.integers(-20, 20), min_size=problem.n_funds,
                                         max_size=problem.n_funds)), dtype=float) / 4
    if not feasible(problem):
        return
    assert dual_bound(problem.compile(), prices) == pytest.approx(dual_value(problem, prices), abs=1e-9)
    optimum, _ = brute_force(problem)
    assert dual_value(problem, prices) >= optimum - 1e-9  # weak duality: any prices bound the optimum


def test_a_maximum_above_the_users_bounds_like_the_users():
    """One user, f1 allowed 0..2: a fund never takes more than every user, so a positive price on f1 adds
    the price times one user, not two (the tighter bound of the same problem)."""
    problem = eoca.AllocationProblem(etv=eoca.testing.etv_grid([[1.0, 2.0]], funds=["f0", "f1"]),
                                     demand=pd.DataFrame({"min": [0, 0], "max": [1, 2]}, index=["f0", "f1"]),
                                     risk_tolerance={"u1": 1}, risk_level={"f0": 1, "f1": 1})
    prices = np.array([0.0, 1.0])
    # sum_i max_j (v - p) = max(1, 1) = 1, plus 1 * min(2, 1 user) = 2
    assert dual_value(problem, prices) == dual_bound(problem.compile(), prices) == 2.0
    assert problem.demand_max.sel(fund="f1").item() == 2  # the declared maximum is kept as written


@pytest.mark.parametrize("holdout", [False, True])
def test_the_bound_is_the_dual_value_on_a_grid_of_many_users(holdout):
    """Thousands of users: the checker's bound works through blocks of users, each of many users."""
    problem = synthetic_problem(5_000, 8, family="fighting", seed=4, holdout=holdout)
    rng = np.random.default_rng(1)
    for prices in (rng.normal(0, 300, problem.n_funds), np.zeros(problem.n_funds)):
        assert dual_bound(problem.compile(), prices) == pytest.approx(dual_value(problem, prices), rel=1e-12)
    codes = rng.integers(-2, problem.n_funds + 1, problem.n_users)
    again = recount(problem, codes)
    prices = rng.normal(0, 300, problem.n_funds)
    fused, bound = check_and_bound(problem, codes, prices)
    assert bound == pytest.approx(dual_value(problem, prices), rel=1e-12)
    for checks in (check_allocation(problem, codes), fused):
        assert (checks.risk_violations, checks.unplaced, checks.invalid) == (
            again.risk_violations, again.unplaced, again.invalid)
        assert again.risk_violations and again.invalid and (again.unplaced or holdout)  # each rule broken somewhere
        np.testing.assert_array_equal(checks.counts.values, again.counts)
        assert checks.objective == pytest.approx(again.objective, rel=1e-12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_brute_force_milp_lp_and_hall_condition_agree(problem):
    optimum, codes = brute_force(problem)
    assert feasible(problem) == (not np.isnan(optimum)) == problem.diagnose().feasible
    value, milp_codes = milp_optimum(problem)
    relaxed, _ = milp_optimum(problem, relax=True)
    if np.isnan(optimum):
        assert np.isnan(value) and milp_codes is None and codes is None
        return
    assert value == pytest.approx(optimum, abs=1e-9) and relaxed == pytest.approx(optimum, abs=1e-7)
    for found in (codes, milp_codes):
        again = recount(problem, found)
        assert again.ok and again.objective == pytest.approx(optimum, abs=1e-9)


def test_the_recount_places_labels_on_an_ordered_categorical_scale():
    # low < mid < high as declared; alphabetically high < low < mid, which would swap both verdicts
    dtype = pd.CategoricalDtype(["low", "mid", "high"], ordered=True)
    problem = eoca.AllocationProblem(
        etv=eoca.testing.etv_grid([[1.0, 5.0], [2.0, 1.0]], users=["a", "b"], funds=["M", "H"]),
        demand={"M": 1, "H": 1},
        risk_level=pd.Series(["mid", "high"], index=["M", "H"], dtype=dtype),
        risk_tolerance=pd.Series(["mid", "high"], index=["a", "b"], dtype=dtype),
    )
    assert recount(problem, [1, 0]).risk_violations == 1  # "mid" shown "high": a real violation
    assert recount(problem, [0, 1]).risk_violations == 0  # "high" shown "mid" and "mid" shown "mid": none
    assert recount(problem, [1, 0]).risk_violations == check_allocation(problem, np.array([1, 0])).risk_violations
    result = eoca.solve(problem)  # the one allocation within the rule: a on M (1.0), b on H (1.0)
    assert result.objective == 2.0 and result.assignment.values.tolist() == ["M", "H"]
    assert_valid_result(result)


def test_references_on_a_worked_example():
    # u2 tolerates only A; A takes two users, B one: u1 -> A, u3 -> B gives 10 + 6 + 7 = 23.
    problem = eoca.AllocationProblem(
        etv=eoca.testing.etv_grid([[10, 4], [6, 9], [8, 7]], funds=["A", "B"]),
        demand={"A": 2, "B": 1}, risk_level={"A": "R1", "B": "R2"},
        risk_tolerance={"u1": "R2", "u2": "R1", "u3": "R2"},
    )
    for reference in (brute_force, milp_optimum):
        value, codes = reference(problem)
        assert value == 23 and codes.tolist() == [0, 0, 1]
    again = recount(problem, [1, 1, 0])  # u2 above its tolerance, A one short, B one over
    assert (again.risk_violations, again.demand_misses, again.miss_per_fund.tolist(), again.objective) == (
        1, 2, [-1, 1], 21.0)
    assert recount(problem, [0, -1, 3]).invalid == 1 and recount(problem, [0, -1, 3]).unplaced == 1
    # dual value at prices (3, 0): users' best reduced ETV 7 + 3 + 7, plus 3 x 2 users of A
    assert dual_value(problem, [3.0, 0.0]) == 23


@st.composite
def declarations(draw):
    """Up to 40 users on up to 5 levels (numbers or labels), demands exact or ranges, often infeasible."""
    n = draw(st.integers(1, 40))
    k = draw(st.integers(1, 5))
    scale = draw(st.sampled_from([[1, 2, 3, 4, 5], [0.5, 1.5, 2.5, 10.0, 20.0], ["R1", "R2", "R3", "R4", "R5"],
                                  DECLARED_ORDER]))
    tol = [scale[t] for t in draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))]
    risk = [scale[r] for r in draw(st.lists(st.integers(0, 4), min_size=k, max_size=k))]
    holdout = draw(st.booleans())
    lo = draw(st.lists(st.integers(0, n), min_size=k, max_size=k))
    while sum(lo) > n:
        lo[lo.index(max(lo))] -= 1
    hi = [v + draw(st.integers(0, n)) for v in lo]
    if not holdout and sum(hi) < n:
        hi[0] += n - sum(hi)
    demand = {f"f{j}": (lo[j], hi[j]) if lo[j] != hi[j] else lo[j] for j in range(k)}
    risk_level, risk_tolerance = dict(zip(demand, risk)), {f"u{i + 1}": t for i, t in enumerate(tol)}
    if scale is DECLARED_ORDER:  # an ordered categorical: its order, not the labels' sort order, is the scale
        dtype = pd.CategoricalDtype(DECLARED_ORDER, ordered=True)
        risk_level = pd.Series(risk, index=list(demand), dtype=dtype)
        risk_tolerance = pd.Series(tol, index=list(risk_tolerance), dtype=dtype)
    return eoca.AllocationProblem(
        etv=eoca.testing.etv_grid(np.ones((n, k)), funds=list(demand)), demand=demand,
        risk_level=risk_level, risk_tolerance=risk_tolerance, holdout=holdout,
    )


DECLARED_ORDER = ["none", "low", "mid", "high", "max"]
_DECLARED_RANK = {label: rank for rank, label in enumerate(DECLARED_ORDER)}


def _rank(value):
    """A value of a declaration as the test compares it: its place on the declared order, or itself."""
    return _DECLARED_RANK.get(value, value) if isinstance(value, str) and value in _DECLARED_RANK else value


@settings(max_examples=150, deadline=None)
@given(declarations())
def test_the_risk_coding_and_the_diagnosis_agree_with_the_declaration(problem):
    c = problem.compile()
    tolerance, level = problem.risk_tolerance.values, problem.risk_level.values
    allowed = np.array([[_rank(t) >= _rank(r) for r in level] for t in tolerance])  # the declaration's order
    np.testing.assert_array_equal(c.user_level[:, None] >= c.fund_level[None, :], allowed)
    np.testing.assert_array_equal(c.eligible(), allowed)
    np.testing.assert_array_equal(c.demand_min, problem.demand_min.values)
    np.testing.assert_array_equal(c.demand_max, np.minimum(problem.demand_max.values, problem.n_users))
    diagnosis = problem.diagnose()
    assert diagnosis.feasible == feasible(problem) == bool(diagnosis)
    assert not diagnosis.shortfalls if diagnosis.feasible else all(s.short_by > 0 for s in diagnosis.shortfalls)
    lo, hi = problem.demand_min.values, problem.demand_max.values
    for s in diagnosis.shortfalls:  # each reason in the terms of the declaration
        if s.kind == "risk":
            assert s.available == sum(_rank(t) >= _rank(s.level) for t in tolerance)
            assert s.required == sum(d for d, r in zip(lo, level) if _rank(r) >= _rank(s.level))
        else:
            assert s.kind == "capacity" and not problem.holdout
            assert s.available == sum(d for d, r in zip(hi, level) if _rank(r) < _rank(s.level))
            assert s.required == sum(_rank(t) < _rank(s.level) for t in tolerance)
        assert s.short_by == s.required - s.available > 0 and str(s.level) in s.describe()
