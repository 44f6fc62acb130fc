"""The ``ip`` solver: the Pyomo model of eqs. 1-5 solved by HiGHS, checked against worked optima."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

pytest.importorskip("pyomo")
pytest.importorskip("highspy")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import eoca  # noqa: E402
from eoca.checks import check_allocation, dual_bound  # noqa: E402
from eoca.errors import ValidationError  # noqa: E402
from eoca.solvers.ip import IPSolver, build_model, fund_prices, solve_model  # noqa: E402
from eoca.testing import assert_valid_result, milp_optimum, recount  # noqa: E402
from eoca.testing import brute_force as reference_brute_force  # noqa: E402


def problem_from(etv, demand, fund_risk, user_tol, *, holdout=False):
    etv = np.asarray(etv, dtype=float)
    users = [f"u{i + 1}" for i in range(etv.shape[0])]
    funds = [f"f{j + 1}" for j in range(etv.shape[1])] if not isinstance(fund_risk, dict) else list(fund_risk)
    grid = xr.DataArray(etv, dims=("user", "fund"), coords={"user": users, "fund": funds})
    demand = dict(zip(funds, demand)) if not isinstance(demand, dict) else demand
    fund_risk = dict(zip(funds, fund_risk)) if not isinstance(fund_risk, dict) else fund_risk
    return eoca.AllocationProblem(grid, demand, fund_risk, pd.Series(list(user_tol), index=users), holdout=holdout)


# The paper's Figure 2 shape: users u1..u3, funds A (risk 1) and B (risk 2), A takes 2 users, B takes 1.
#            A    B      tolerance
#   u1      10    4      2
#   u2       6    9      1   (may not get B)
#   u3       8    7      2
# u2 must take A, so A has one place left and B's only user is u1 or u3:
#   u1->A, u3->B: 10 + 6 + 7 = 23      u1->B, u3->A: 4 + 6 + 8 = 18
# The optimum is u1->A, u2->A, u3->B with ETV 23. Prices: lambda_B - lambda_A = ETV gap that keeps u1 in
# A and u3 in B: u1 needs 10 - lA >= 4 - lB, u3 needs 7 - lB >= 8 - lA, so lA - lB in [1, 6].
FIG2 = dict(etv=[[10, 4], [6, 9], [8, 7]], demand={"A": 2, "B": 1}, fund_risk={"A": 1, "B": 2}, user_tol=[2, 1, 2])


def figure2():
    return problem_from(**FIG2)


def brute_force(problem):
    """Best ETV over every allocation the risk rule allows that meets the demands; None if there is none.

    Enumerated from the problem's public arrays (eoca.testing), never with the library's checker."""
    best, _ = reference_brute_force(problem)
    return None if np.isnan(best) else best


def test_figure2_optimum_and_prices():
    problem = figure2()
    out = IPSolver().run(problem)
    assert out.status == "optimal"
    assert list(out.codes) == [0, 0, 1]
    assert check_allocation(problem, out.codes).objective == 23
    # The prices certify the optimum: the dual bound equals the allocation's ETV.
    assert dual_bound(problem.compile(), out.prices) == pytest.approx(23)
    assert 1 <= out.prices[0] - out.prices[1] <= 6
    assert set(out.timings) >= {"build", "solve"}


def test_figure2_through_solve():
    result = eoca.solve(figure2(), solver="ip")
    assert result.status == eoca.Status.OPTIMAL
    assert list(result.assignment.values) == ["A", "A", "B"]
    assert result.objective == 23 and result.bound == pytest.approx(23)
    assert result.checks.ok


def test_build_model_exposes_eqs_1_to_5():
    import pyomo.environ as pyo

    model = build_model(figure2())
    assert list(model.user_ids) == ["u1", "u2", "u3"] and list(model.fund_ids) == ["A", "B"]
    # u2 (tolerance 1) has no variable for B (risk 2): eq. 5 by construction.
    assert set(model.pairs) == {(0, 0), (0, 1), (1, 0), (2, 0), (2, 1)}
    assert all(v.is_binary() for v in model.assign.values())
    assert model.etv.sense == pyo.maximize
    assert len(model.one_fund) == 3 and len(model.demand) == 2
    assert model.demand[0].equality and pyo.value(model.demand[0].upper) == 2


def test_user_added_constraint_changes_the_answer():
    import pyomo.environ as pyo

    problem = figure2()
    model = build_model(problem)
    u1, b = model.user_ids.get_loc("u1"), model.fund_ids.get_loc("B")
    # Force u1 into B: the next best allocation is u1->B, u2->A, u3->A with ETV 18.
    model.u1_gets_b = pyo.Constraint(expr=model.assign[u1, b] == 1)
    out = solve_model(model)
    assert out.status == "optimal"
    assert list(out.codes) == [1, 0, 0]
    assert check_allocation(problem, out.codes).ok
    assert check_allocation(problem, out.codes).objective == 18
    # The original model is untouched by solving; dropping the rule gives back the optimum.
    model.u1_gets_b.deactivate()
    assert list(solve_model(model).codes) == [0, 0, 1]


def test_user_constraint_making_the_model_infeasible_is_an_error_status():
    import pyomo.environ as pyo

    model = build_model(figure2())
    model.nobody_in_b = pyo.Constraint(expr=model.assign[0, 1] + model.assign[2, 1] == 0)
    out = solve_model(model)
    assert out.status == "error"
    assert "no feasible allocation" in out.message
    assert (out.codes == -1).all()


@st.composite
def small_problems(draw):
    n = draw(st.integers(1, 5))
    k = draw(st.integers(1, 3))
    etv = draw(st.lists(st.lists(st.integers(0, 9), min_size=k, max_size=k), min_size=n, max_size=n))
    fund_risk = draw(st.lists(st.integers(1, 3), min_size=k, max_size=k))
    user_tol = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    holdout = draw(st.booleans())
    # Demands from a random assignment keep most instances feasible; ranges widen them.
    codes = [draw(st.integers(-1 if holdout else 0, k - 1)) for _ in range(n)]
    counts = np.bincount([j for j in codes if j >= 0], minlength=k)
    demand = []
    for j in range(k):
        if draw(st.booleans()):
            demand.append((max(0, int(counts[j]) - draw(st.integers(0, 2))), int(counts[j]) + draw(st.integers(0, 2))))
        else:
            demand.append(int(counts[j]))
    return problem_from(etv, demand, fund_risk, user_tol, holdout=holdout)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_matches_brute_force(problem):
    best = brute_force(problem)
    if not problem.diagnose().feasible:
        assert best is None
        return
    assert best is not None
    out = IPSolver().run(problem)
    checks = check_allocation(problem, out.codes)
    assert out.status == "optimal", out.message
    assert checks.ok, checks.describe()
    assert checks.objective == pytest.approx(best, abs=1e-9)
    assert dual_bound(problem.compile(), out.prices) == pytest.approx(best, abs=1e-7)


def random_problem(n, k=8, seed=0):
    rng = np.random.default_rng(seed)
    etv = rng.gamma(1.0, 10.0, size=(n, k)) * (rng.random((n, k)) < 0.7)
    fund_risk = np.sort(rng.integers(1, 6, k))
    fund_risk[0] = 1
    user_tol = rng.integers(1, 6, n)
    eligible = user_tol[:, None] >= fund_risk[None, :]
    pick = (rng.random((n, k)) * eligible).argmax(axis=1)
    demand = np.bincount(pick, minlength=k).tolist()
    return problem_from(etv, demand, fund_risk.tolist(), user_tol.tolist())


def test_time_limit_too_short_to_find_anything_leaves_every_user_unplaced_and_says_so():
    problem = random_problem(3000, seed=1)
    out = IPSolver(time_limit=1e-4).run(problem)
    assert out.status == "time_limit"
    assert (out.codes == -1).all() and "found no allocation within the time limit" in out.message
    result = eoca.solve(problem, solver="ip", time_limit=1e-4)
    assert_valid_result(result)
    assert result.status is eoca.Status.TIME_LIMIT and not result.ok
    assert "stopped by the time limit" in result.message and "3,000 users unplaced" in result.message


def test_time_limit_long_enough_gives_the_optimum():
    problem = random_problem(1000, seed=1)
    optimum, _ = milp_optimum(problem)
    out = IPSolver(time_limit=600).run(problem)
    assert out.status == "optimal", out.message
    again = recount(problem, out.codes)
    assert again.ok and again.objective == pytest.approx(optimum, rel=1e-9)


def test_an_allocation_found_before_the_time_limit_is_reported_as_such():
    """What solve() makes of a stopped run that did find a valid allocation (the HiGHS outcome between
    the two above depends on timing, so a solver that reports it stands in for HiGHS here)."""
    from eoca.solvers.base import Solver, SolverOutput

    class Stopped(Solver):
        name = "stopped"

        def run(self, problem):
            _, codes = milp_optimum(problem)
            return SolverOutput(codes=codes, status="time_limit", message="time limit of 1 s reached")

    problem = random_problem(200, seed=3)
    result = eoca.solve(problem, solver=Stopped())
    assert_valid_result(result)
    assert result.status is eoca.Status.TIME_LIMIT and result.checks.ok and result.ok  # deliverable as is
    assert result.message == "time limit of 1 s reached"


def test_highs_stopped_by_the_time_limit_with_an_incumbent_delivers_it(monkeypatch):
    """The ip solver's own branch for that outcome: HiGHS' report is changed to "time limit reached, a
    feasible solution loaded" after a real solve, so the branch runs whatever the machine's speed."""
    from pyomo.contrib.solver.common.results import SolutionStatus, TerminationCondition
    from pyomo.contrib.solver.solvers.highs import Highs

    real = Highs.solve

    def stopped(self, model, **kwargs):
        res = real(self, model, **kwargs)
        res.termination_condition = TerminationCondition.maxTimeLimit
        res.solution_status = SolutionStatus.feasible
        return res

    monkeypatch.setattr(Highs, "solve", stopped)
    problem = random_problem(300, seed=4)
    out = IPSolver(time_limit=30).run(problem)
    assert out.status == "time_limit"
    assert "time limit of 30 s reached; best allocation found" in out.message
    assert recount(problem, out.codes).ok  # the incumbent's codes are read back, not dropped
    result = eoca.solve(problem, solver="ip", time_limit=30)
    assert_valid_result(result)
    assert result.status is eoca.Status.TIME_LIMIT and result.ok
    assert result.objective == pytest.approx(milp_optimum(problem)[0], rel=1e-9)


def test_medium_instance_is_certified_optimal():
    problem = random_problem(2000, seed=2)
    out = IPSolver(threads=1).run(problem)
    checks = check_allocation(problem, out.codes)
    assert out.status == "optimal", out.message
    assert checks.ok
    assert dual_bound(problem.compile(), out.prices) == pytest.approx(checks.objective, rel=1e-9)


def test_solve_with_ranges_and_holdout_through_the_public_api():
    problem = problem_from(
        [[5, 1, 0], [4, 4, 2], [0, 3, 9], [1, 1, 1]], [(0, 2), 1, (1, 1)], [1, 1, 2], [2, 1, 2, 1], holdout=True
    )
    result = eoca.solve(problem, solver="ip", time_limit=30)
    assert result.status == eoca.Status.OPTIMAL
    assert result.objective == brute_force(problem) == pytest.approx(result.bound)


def test_fund_prices_reject_a_suboptimal_allocation():
    problem = figure2()
    assert fund_prices(problem.compile(), np.array([1, 0, 0])) is None  # ETV 18 < 23


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("time_limit", 0),
        ("time_limit", -1.5),
        ("time_limit", "60"),
        ("time_limit", float("inf")),
        ("mip_gap", -0.1),
        ("mip_gap", True),
        ("threads", 0),
        ("threads", 1.5),
    ],
)
def test_bad_options_name_the_option(option, value):
    with pytest.raises(ValidationError, match=option) as info:
        IPSolver(**{option: value})
    assert info.value.field == option
    with pytest.raises(ValidationError, match=option):
        eoca.get_solver("ip", **{option: value})


def test_unknown_option_is_an_error():
    with pytest.raises(ValidationError, match="gap"):
        IPSolver(gap=0.1)


def test_registered_and_available():
    assert "ip" in eoca.available_solvers()
    solver = eoca.get_solver("ip", time_limit=5, mip_gap=0.0, threads=1)
    assert isinstance(solver, IPSolver)
    assert IPSolver.install_hint == 'pip install "eoca[ip]"'
