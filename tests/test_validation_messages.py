"""What the declaration's errors count and show (the offending entries, and only those), and what a problem
shows of itself."""

import numpy as np
import pytest

import eoca
from eoca.testing import etv_grid


def declare(values):
    values = np.asarray(values, dtype=float)
    n, k = values.shape
    return eoca.AllocationProblem(etv_grid(values), {f"f{j + 1}": (0, n) for j in range(k)},
                                  {f"f{j + 1}": 0 for j in range(k)}, {f"u{i + 1}": 0 for i in range(n)})


def test_a_negative_entry_is_counted_and_named_among_zeros():
    with pytest.raises(eoca.ETVError) as info:
        declare([[0.0, 2.0], [-1.5, 0.0], [5.0, 0.0]])
    message = str(info.value)
    assert "1 negative entries" in message and "('u2', 'f1', -1.5)" in message
    assert "0.0)" not in message  # the zeros are valid ETV and are not listed


@pytest.mark.parametrize("bad", [5, 6])
def test_the_first_five_non_finite_entries_are_named_and_more_are_marked(bad):
    values = np.ones((6, 2))
    values.ravel()[:bad] = np.nan
    with pytest.raises(eoca.ETVError, match=f"{bad} NaN or infinite entries") as info:
        declare(values)
    assert str(info.value).count("('u") == 5
    assert str(info.value).endswith("...") == (bad > 5)


def test_the_checker_and_the_bound_reject_malformed_input_by_name():
    import xarray as xr

    from eoca.checks import check_allocation, dual_bound

    problem = declare([[1.0, 2.0], [3.0, 4.0]])
    wrong_dims = xr.DataArray(["f1", "f2"], dims=("fund",), coords={"fund": ["f1", "f2"]})
    with pytest.raises(eoca.ValidationError, match="assignment: expected a DataArray over \\('user',\\)"):
        check_allocation(problem, wrong_dims)
    with pytest.raises(eoca.ValidationError, match="assignment: expected 2 entries, one per user"):
        check_allocation(problem, np.array([0, 1, 1]))
    for prices in (np.zeros(3), np.array([0.0, np.nan])):
        with pytest.raises(eoca.ValidationError, match="prices: expected 2 finite prices"):
            dual_bound(problem.compile(), prices)
    assert dual_bound(problem.compile(), np.zeros(2)) == 6.0  # each user's best: 2 + 4


def test_the_checker_never_wraps_a_wide_code_onto_a_fund_and_rejects_non_integer_codes():
    from eoca.checks import check_allocation

    problem = declare([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    good = np.array([0, 1, 1], dtype=np.int64)
    assert check_allocation(problem, good).ok and check_allocation(problem, good.astype(np.uint64)).ok
    for wide in (2**32, 2**32 + 1, -(2**32) + 1, -(2**40)):  # int32 casts would make these 0, 1, 1, 0
        codes = good.copy()
        codes[0] = wide
        checks = check_allocation(problem, codes)
        assert not checks.ok and checks.invalid == 1, wide
    for dtype in (float, bool):
        with pytest.raises(eoca.ValidationError, match=f"assignment: fund codes must be integers; got dtype {np.dtype(dtype)}"):
            check_allocation(problem, good.astype(dtype))


def test_integer_levels_and_fractional_tolerances_share_one_scale():
    problem = eoca.AllocationProblem(etv_grid([[1.0, 2.0], [3.0, 4.0]]), {"f1": 1, "f2": 1}, {"f1": 1, "f2": 2},
                                     {"u1": 2.0, "u2": 1.5})
    assert problem.compile().eligible().tolist() == [[True, True], [True, False]]
    with pytest.raises(eoca.RiskError, match="one scale"):
        eoca.AllocationProblem(etv_grid([[1.0]]), {"f1": 1}, {"f1": "R1"}, {"u1": 1})


def test_demands_short_of_the_users_say_how_many_would_be_held_out():
    with pytest.raises(eoca.DemandError, match="demands total at most 2 but all 3 users must be placed; pass "
                                               "holdout=True to let 1 users receive no fund"):
        eoca.AllocationProblem(etv_grid(np.ones((3, 2))), {"f1": 1, "f2": (0, 1)}, {"f1": 0, "f2": 0},
                               {"u1": 0, "u2": 0, "u3": 0})


@pytest.mark.parametrize("bound", [10**20, 1e20, np.uint64(2**64 - 1)])
def test_a_demand_beyond_int64_is_a_demand_error_naming_the_fund(bound):
    with pytest.raises(eoca.DemandError, match="fund 'f2': demand must be at most 2\\*\\*63 - 1"):
        eoca.AllocationProblem(etv_grid(np.ones((3, 2))), {"f1": 1, "f2": (0, bound)}, {"f1": 0, "f2": 0},
                               {"u1": 0, "u2": 0, "u3": 0})


def test_maxima_as_large_as_int64_mean_no_cap_and_every_solver_places_everyone():
    big = 2**63 - 1  # their int64 sum would wrap: each solver must still see "at most every user"
    problem = eoca.AllocationProblem(etv_grid([[1.0, 5.0], [4.0, 1.0], [2.0, 3.0]]), {"f1": (0, big), "f2": (1, big)},
                                     {"f1": 0, "f2": 0}, {"u1": 0, "u2": 0, "u3": 0})
    assert problem.demand.sel(fund="f2").values.tolist() == [1, big]  # the declaration is kept as written
    for solver in ("exact", "ip", "heuristic"):
        result = eoca.solve(problem, solver=solver)
        assert result.objective == 12.0, solver
        assert result.assignment.values.tolist() == ["f2", "f1", "f2"], solver


def test_a_problem_s_range_demands_declare_the_same_problem_again_as_dataarray_or_dataframe():
    problem = eoca.AllocationProblem(etv_grid(np.ones((4, 2))), {"f1": (1, 3), "f2": 2}, {"f1": 0, "f2": 0},
                                     {f"u{i}": 0 for i in range(1, 5)}, holdout=True)
    for demand in (problem.demand, problem.demand.T, problem.demand.to_pandas()):
        again = eoca.AllocationProblem(problem.etv, demand, problem.risk_level, problem.risk_tolerance, holdout=True)
        assert again.demand.equals(problem.demand)
        assert again.demand.sel(fund="f2").values.tolist() == [2, 2]
    with pytest.raises(eoca.DemandError, match='columns "min" and "max"; got \\[\'lo\', \'hi\'\\]'):
        eoca.AllocationProblem(problem.etv, problem.demand.to_pandas().set_axis(["lo", "hi"], axis=1),
                               problem.risk_level, problem.risk_tolerance, holdout=True)


def test_a_problem_shows_its_name_and_each_fund_s_demand_and_risk():
    problem = eoca.AllocationProblem(etv_grid(np.ones((3, 2))), {"f1": 2, "f2": (0, 1)}, {"f1": "R1", "f2": "R3"},
                                     {"u1": "R3", "u2": "R3", "u3": "R3"}, name="june")
    lines = repr(problem).splitlines()
    assert lines[0] == "<eoca.AllocationProblem 'june': 3 users x 2 funds, demands ranges>"
    assert lines[1].split() == ["f1", "demand", "2", "risk", "'R1'"]
    assert lines[2].split() == ["f2", "demand", "0..1", "risk", "'R3'"]


def test_with_ranges_a_level_can_lack_both_users_and_places_and_both_are_said():
    # Nobody tolerates level 2: B's minimum of 2 lacks users, and A alone cannot take the 3 users.
    problem = eoca.AllocationProblem(etv_grid(np.ones((3, 2)), funds=["A", "B"]), {"A": (0, 1), "B": (2, 3)},
                                     {"A": 1, "B": 2}, {"u1": 1, "u2": 1, "u3": 1})
    found = [(s.level, s.kind, s.available, s.required) for s in problem.diagnose().shortfalls]
    assert found == [(2, "risk", 0, 2), (2, "capacity", 1, 3)]
