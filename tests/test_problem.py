"""Declaring a problem: accepted inputs, the errors bad input gets, and the feasibility diagnosis."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import eoca
from eoca import DemandError, ETVError, IdError, RiskError
from eoca.testing import etv_grid as grid


def make(etv=None, demand=None, risk=None, tol=None, **kw):
    return eoca.AllocationProblem(
        etv=grid([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]) if etv is None else etv,
        demand={"f1": 2, "f2": 1} if demand is None else demand,
        risk_level={"f1": 1, "f2": 2} if risk is None else risk,
        risk_tolerance={"u1": 2, "u2": 2, "u3": 1} if tol is None else tol,
        **kw,
    )


def test_accepts_dataframe_series_and_dataarrays():
    frame = pd.DataFrame([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], index=["u1", "u2", "u3"], columns=["f1", "f2"])
    p = make(
        etv=frame,
        demand=xr.DataArray([2, 1], dims="fund", coords={"fund": ["f1", "f2"]}),
        risk=pd.Series({"f2": 2, "f1": 1}),  # order differs from the grid's: aligned by id
        tol=pd.Series([1, 2, 2], index=["u3", "u1", "u2"]),
    )
    assert list(p.users) == ["u1", "u2", "u3"]
    assert p.risk_tolerance.sel(user="u3").item() == 1
    assert p.compile().user_level.tolist() == [1, 1, 0]
    assert p.demand.sel(fund="f1").item() == 2


def test_transposed_grid_is_accepted():
    g = grid([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]).transpose("fund", "user")
    assert make(etv=g).etv.dims == ("user", "fund")


def test_problem_is_immutable_and_shares_the_grid():
    values = np.arange(6, dtype=float).reshape(3, 2)
    p = make(etv=grid(values))
    with pytest.raises(AttributeError, match="immutable"):
        p.holdout = True
    with pytest.raises(ValueError):
        p.compile().etv[0, 0] = 99.0
    assert np.shares_memory(p.compile().etv, values)


@pytest.mark.parametrize(
    "bad, where",
    [(np.nan, "NaN"), (np.inf, "infinite")],
)
def test_non_finite_etv_is_named(bad, where):
    values = np.array([[1.0, 2.0], [3.0, bad], [5.0, 6.0]])
    with pytest.raises(ETVError, match=r"etv: .*finite.*\('u2', 'f2'\)"):
        make(etv=grid(values))


def test_negative_etv_names_the_entry():
    with pytest.raises(ETVError, match=r"non-negative.*'u3', 'f1', -5\.0"):
        make(etv=grid([[1.0, 2.0], [3.0, 4.0], [-5.0, 6.0]]))


def test_wrong_dims_and_types():
    with pytest.raises(ETVError, match=r"dims must be \('user', 'fund'\)"):
        make(etv=xr.DataArray(np.ones((3, 2)), dims=("customer", "fund")))
    with pytest.raises(ETVError, match="DataArray"):
        make(etv=np.ones((3, 2)))
    with pytest.raises(ETVError, match="numeric"):
        make(etv=grid(np.ones((3, 2))).astype(str))


def test_duplicate_ids():
    with pytest.raises(IdError, match=r"etv.user.*duplicated.*'u1'"):
        make(etv=grid(np.ones((3, 2)), users=["u1", "u1", "u3"]))
    with pytest.raises(IdError, match=r"risk_tolerance.*duplicated.*'u2'"):
        make(tol=pd.Series([2, 2, 1], index=["u1", "u2", "u2"]))


def test_ids_that_do_not_line_up():
    with pytest.raises(IdError, match=r"demand: .*not in the ETV grid.*'f9'"):
        make(demand={"f1": 2, "f2": 1, "f9": 0})
    with pytest.raises(IdError, match=r"risk_tolerance: .*not in the ETV grid.*'u7'"):
        make(tol={"u1": 2, "u2": 2, "u3": 1, "u7": 1})


def test_missing_risk_and_demand():
    with pytest.raises(RiskError, match=r"risk_level: missing for 1 fund.*'f2'"):
        make(risk={"f1": 1})
    with pytest.raises(RiskError, match=r"risk_tolerance: missing for 1 user.*'u3'"):
        make(tol={"u1": 2, "u2": 2})
    with pytest.raises(RiskError, match=r"risk_tolerance: missing"):
        make(tol={"u1": 2, "u2": 2, "u3": None})
    with pytest.raises(DemandError, match=r"demand: missing for 1 fund.*'f1'"):
        make(demand={"f2": 3})


def test_risk_on_one_scale():
    with pytest.raises(RiskError, match="one scale"):
        make(risk={"f1": "R1", "f2": "R2"})  # tolerances are numbers


@pytest.mark.parametrize("value", [1.5, -1, "2", None, True, (3, 1), (1, 2, 3)])
def test_bad_demand_values(value):
    with pytest.raises(DemandError, match=r"demand: fund 'f1'"):
        make(demand={"f1": value, "f2": 1})


def test_demands_that_cannot_add_up():
    with pytest.raises(DemandError, match=r"total at most 2 but all 3 users.*holdout=True"):
        make(demand={"f1": 1, "f2": 1})
    with pytest.raises(DemandError, match=r"at least 4 users in total but the grid has only 3"):
        make(demand={"f1": 3, "f2": 1}, holdout=True)
    assert make(demand={"f1": 1, "f2": 1}, holdout=True).holdout
    assert make(demand={"f1": (0, 3), "f2": (1, 1)}).has_ranges


def test_errors_are_value_errors():
    with pytest.raises(ValueError):
        make(demand={"f1": -1, "f2": 4})


def test_diagnose_names_level_and_shortfall():
    # f2 (risk 2) needs 2 users but only u1 tolerates level 2
    p = make(demand={"f1": 1, "f2": 2}, tol={"u1": 2, "u2": 1, "u3": 1})
    d = p.diagnose()
    assert not d.feasible
    assert [(s.level, s.kind, s.short_by) for s in d.shortfalls] == [(2, "risk", 1)]
    assert "risk level 2 and above" in d.message and "short by 1" in d.message


def test_diagnose_capacity_with_ranges():
    # two users tolerate only level 1 but the level-1 fund takes at most one
    p = make(demand={"f1": (0, 1), "f2": (1, 3)}, tol={"u1": 1, "u2": 1, "u3": 2})
    d = p.diagnose()
    assert [(s.level, s.kind, s.short_by) for s in d.shortfalls] == [(2, "capacity", 1)]


def test_infeasible_solve_returns_status_not_exception():
    p = make(demand={"f1": 1, "f2": 2}, tol={"u1": 2, "u2": 1, "u3": 1})
    result = eoca.solve(p, solver="heuristic")
    assert result.status is eoca.Status.INFEASIBLE
    assert "short by 1" in result.message
    assert not result.ok


def test_repr_lists_funds(toy):
    text = repr(toy)
    assert "3 users x 2 funds" in text and "f1" in text and "'R3'" in text


# ---- ids: one rule, checked once; the fast path and the reindexing path agree ------------------------------

VALUES = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]


def id_variants():
    """The same three users as Python-object strings, pandas strings and integers."""
    return {
        "object": pd.Index(np.array(["u1", "u2", "u3"], dtype=object), dtype=object),
        "string": pd.Index(["u1", "u2", "u3"], dtype="string"),
        "int": pd.Index([11, 12, 13], dtype=np.int64),
    }


@pytest.mark.parametrize("kind", ["object", "string", "int"])
def test_object_string_and_int_ids_give_identical_problems(kind):
    ids = id_variants()[kind]
    reference = make()
    p = make(etv=grid(VALUES, users=ids), tol=pd.Series([2, 2, 1], index=ids))
    assert p.users.tolist() == ids.tolist() and p.users.name == "user"
    np.testing.assert_array_equal(p.compile().etv, reference.compile().etv)
    np.testing.assert_array_equal(p.compile().user_level, reference.compile().user_level)
    assert eoca.solve(p).objective == eoca.solve(reference).objective


@pytest.mark.parametrize("kind", ["object", "string", "int"])
def test_tolerances_in_another_order_are_reindexed_like_the_fast_path(kind):
    ids = id_variants()[kind]
    g = grid(VALUES, users=ids)
    in_order = make(etv=g, tol=pd.Series([2, 1, 1], index=ids))
    shuffled = make(etv=g, tol=pd.Series([1, 2, 1], index=ids[[2, 0, 1]]))
    as_dataarray = make(etv=g, tol=xr.DataArray([1, 2, 1], dims="user", coords={"user": ids[[1, 0, 2]]}))
    for p in (shuffled, as_dataarray):
        np.testing.assert_array_equal(p.compile().user_level, in_order.compile().user_level)
        assert p.risk_tolerance.values.tolist() == [2, 1, 1]


def object_grid(users=("u1", "u2", "u3"), funds=("f1", "f2")):
    return xr.DataArray(np.array(VALUES), dims=("user", "fund"),
                        coords={"user": np.array(users, dtype=object), "fund": np.array(funds, dtype=object)})


def test_mixed_kind_ids_are_refused():
    mixed = [1, "b", 3]
    with pytest.raises(IdError, match=r"etv.user: ids must be all integers or all strings; got mixed-integer"):
        make(etv=object_grid(users=mixed), tol=pd.Series([2, 2, 1], index=pd.Index(mixed, dtype=object)))
    with pytest.raises(IdError, match=r"etv.fund: ids must be all integers or all strings"):
        make(etv=object_grid(funds=["f1", 2]), demand={"f1": 2, 2: 1}, risk={"f1": 1, 2: 2})
    with pytest.raises(IdError, match=r"etv.user: ids must not be missing"):
        make(etv=object_grid(users=["u1", None, "u3"]))


def test_duplicated_and_unknown_ids_on_the_reindexing_path():
    with pytest.raises(IdError, match=r"risk_tolerance: ids must be unique; duplicated: \['u1'\]"):
        make(tol=pd.Series([2, 2, 1, 1], index=["u1", "u2", "u3", "u1"]))
    with pytest.raises(RiskError, match=r"risk_tolerance: missing for 1 user.*'u2'"):
        make(tol=pd.Series([2, 1, 1], index=["u3", "u1", "u9"]))


@pytest.mark.parametrize("kind", ["object", "string", "int"])
@pytest.mark.parametrize("bad", [np.nan, -2.0])
def test_bad_etv_names_the_pair_whatever_the_id_kind(kind, bad):
    ids = id_variants()[kind]
    values = np.array(VALUES)
    values[1, 0] = bad
    with pytest.raises(ETVError, match=rf"etv: .*\({ids.tolist()[1]!r}, 'f1'"):
        make(etv=grid(values, users=ids), tol=pd.Series([2, 2, 1], index=ids))


def test_float32_grid_is_used_without_a_copy_and_gives_the_float64_optimum():
    from eoca.instances import synthetic_problem

    p64 = synthetic_problem(2000, 5, family="ties", seed=4)
    values = p64.compile().etv.astype(np.float32)
    g32 = p64.etv.copy(data=values)
    p32 = eoca.AllocationProblem(etv=g32, demand=p64.demand, risk_level=p64.risk_level,
                                 risk_tolerance=p64.risk_tolerance)
    assert p32.compile().etv.dtype == np.float32 and np.shares_memory(p32.compile().etv, values)
    r32, r64 = eoca.solve(p32), eoca.solve(p64)
    assert r32.status is r64.status is eoca.Status.OPTIMAL
    assert r32.objective == r64.objective  # the "ties" grid holds values float32 represents exactly
    with pytest.raises(ETVError, match="finite"):
        eoca.AllocationProblem(etv=g32.where(g32.user != g32.user[0]), demand=p64.demand,
                               risk_level=p64.risk_level, risk_tolerance=p64.risk_tolerance)


@pytest.mark.parametrize("dtype", ["str", "string", object])
@pytest.mark.parametrize("dim", ["user", "fund"])
def test_missing_ids_of_any_string_dtype_are_refused(dim, dtype):
    users, funds = ["x", None, "y"], ["a", "b", None]
    ids = {"user": pd.Index(users if dim == "user" else ["x", "z", "y"], dtype=dtype),
           "fund": pd.Index(funds if dim == "fund" else ["a", "b", "c"], dtype=dtype)}
    grid = xr.DataArray(np.ones((3, 3)), dims=("user", "fund"), coords=ids)
    with pytest.raises(eoca.IdError, match=f"etv.{dim}.*missing"):
        eoca.AllocationProblem(grid, pd.Series(1, index=ids["fund"]), pd.Series(1, index=ids["fund"]),
                               pd.Series(1, index=ids["user"]))


def test_dataframe_with_named_index_and_columns():
    frame = pd.DataFrame(np.arange(6.0).reshape(3, 2), index=pd.Index([1, 2, 3], name="customer"),
                         columns=pd.Index(["a", "b"], name="product"))
    problem = eoca.AllocationProblem(frame, {"a": 2, "b": 1}, {"a": 1, "b": 1}, pd.Series(1, index=[1, 2, 3]))
    assert list(problem.users) == [1, 2, 3] and list(problem.funds) == ["a", "b"]
    assert eoca.solve(problem).objective == 0 + 2 + 5  # users 1, 2 to "a", user 3 to "b"


def test_integer_ids_beyond_int64_are_refused():
    users = np.array([1, 2, 2**63 + 5], dtype=np.uint64)
    g = xr.DataArray(np.ones((3, 2)), dims=("user", "fund"), coords={"user": users, "fund": ["a", "b"]})
    with pytest.raises(IdError, match=r"etv.user.*int64.*9223372036854775813"):
        eoca.AllocationProblem(g, {"a": 2, "b": 1}, {"a": 1, "b": 1}, pd.Series(1, index=users))
    fits = users.copy()
    fits[2] = 2**63 - 1  # the largest int64 fits
    g = g.assign_coords(user=fits)
    assert eoca.AllocationProblem(g, {"a": 2, "b": 1}, {"a": 1, "b": 1}, pd.Series(1, index=fits)).n_users == 3


def _on_an_ordered_scale():
    """Three users on the scale low < mid < high (not the labels' sort order): the scale, grid, tolerances."""
    scale = pd.CategoricalDtype(["low", "mid", "high"], ordered=True)
    users = ["u1", "u2", "u3"]
    g = xr.DataArray([[1.0, 5.0], [1.0, 5.0], [1.0, 5.0]], dims=("user", "fund"),
                     coords={"user": users, "fund": ["safe", "bold"]})
    return scale, g, pd.Series(["high", "low", "mid"], index=users, dtype=scale)


def test_an_ordered_categorical_tolerance_sets_the_risk_scale():
    _, g, tol = _on_an_ordered_scale()
    problem = eoca.AllocationProblem(g, {"safe": 2, "bold": 1}, {"safe": "low", "bold": "high"}, tol)
    assert list(problem.risk_levels) == ["low", "mid", "high"]  # not the labels' sort order
    result = eoca.solve(problem)
    assert result.status is eoca.Status.OPTIMAL and result.assignment.sel(user="u1").item() == "bold"
    # a fund level that the scale does not hold is named
    with pytest.raises(RiskError, match="not on the ordered risk scale.*'extreme'"):
        eoca.AllocationProblem(g, {"safe": 2, "bold": 1}, {"safe": "low", "bold": "extreme"}, tol)


def test_fund_levels_and_tolerances_on_one_ordered_scale_declare_it():
    scale, g, tol = _on_an_ordered_scale()
    levels = pd.Series(["low", "high"], index=["safe", "bold"], dtype=scale)
    problem = eoca.AllocationProblem(g, {"safe": 2, "bold": 1}, levels, tol)
    assert list(problem.risk_levels) == ["low", "mid", "high"]
    assert problem.compile().user_level.tolist() == [2, 0, 1]
    other = pd.Series(["low", "high"], index=["safe", "bold"],
                      dtype=pd.CategoricalDtype(["high", "mid", "low"], ordered=True))
    with pytest.raises(RiskError, match="different orders"):
        eoca.AllocationProblem(g, {"safe": 2, "bold": 1}, other, tol)


def test_categorical_user_ids_are_ids_of_their_categories():
    users = pd.CategoricalIndex(["u1", "u2", "u3"])
    g = xr.DataArray([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dims=("user", "fund"),
                     coords={"user": users, "fund": ["f1", "f2"]})
    problem = make(etv=g)
    assert [str(u) for u in problem.users] == ["u1", "u2", "u3"]
    assert eoca.solve(problem).status is eoca.Status.OPTIMAL


def test_the_fingerprint_tells_problems_apart():
    problem = make()
    again = make()
    digest = problem.fingerprint()
    assert isinstance(digest, str) and len(digest) == 32 and int(digest, 16) >= 0
    assert again.fingerprint() == digest  # the same declaration, the same digest
    assert make(demand={"f1": 1, "f2": 2}).fingerprint() != digest
    assert make(etv=grid([[1.0, 2.0], [3.0, 4.0], [5.0, 7.0]])).fingerprint() != digest  # the last user's row
    assert make(tol={"u1": 2, "u2": 1, "u3": 1}).fingerprint() != digest


def test_a_series_in_the_grid_order_is_taken_without_a_lookup(monkeypatch):
    """The fast path: a tolerance Series whose index equals the grid's users (another object, same ids)
    is used as it is; only one in another order is looked up (and both give the same problem)."""
    n = 1_237
    users = [f"u{i}" for i in range(n)]
    g = xr.DataArray(np.ones((n, 2)), dims=("user", "fund"), coords={"user": users, "fund": ["f1", "f2"]})
    tol = pd.Series(np.arange(n) % 2 + 1, index=pd.Index(list(users)))
    lookups = []
    original = pd.Index.get_indexer

    def spy(self, target, *args, **kwargs):
        if len(target) == n:
            lookups.append(len(self))
        return original(self, target, *args, **kwargs)

    monkeypatch.setattr(pd.Index, "get_indexer", spy)
    declare = lambda t: eoca.AllocationProblem(g, {"f1": n - 600, "f2": 600}, {"f1": 1, "f2": 2}, t)  # noqa: E731
    aligned = declare(tol)
    assert lookups == []
    shuffled = declare(tol.iloc[::-1])
    assert lookups == [n]
    np.testing.assert_array_equal(aligned.compile().user_level, shuffled.compile().user_level)


def test_a_series_on_the_grids_own_index_aligns_by_identity(monkeypatch):
    """The problem keeps the grid's own index object, so a Series built on it (as load_problem and a
    predictor's output build them) is recognised as aligned without comparing its ids one by one."""
    n = 1_000
    g = xr.DataArray(np.ones((n, 2)), dims=("user", "fund"),
                     coords={"user": [f"u{i}" for i in range(n)], "fund": ["f1", "f2"]})
    own = g.get_index("user")
    compared = []
    original = pd.Index.equals

    def spy(self, other):
        if len(self) == n:
            compared.append(len(other))
        return original(self, other)

    monkeypatch.setattr(pd.Index, "equals", spy)
    problem = eoca.AllocationProblem(g, {"f1": 400, "f2": 600}, {"f1": 1, "f2": 2},
                                     pd.Series(np.arange(n) % 2 + 1, index=own))
    assert problem.users is own and compared == []
    np.testing.assert_array_equal(problem.compile().user_level, np.arange(n) % 2)


@pytest.mark.parametrize("drop", ["fund", "bound"])
def test_a_range_dataarray_without_its_coordinates_is_refused_by_name(drop):
    ranges = xr.DataArray([[1, 2], [0, 1]], dims=("fund", "bound"),
                          coords={"fund": ["f1", "f2"], "bound": ["min", "max"]}).drop_vars(drop)
    with pytest.raises(IdError, match='demand.*"fund" and "bound" coordinates'):
        make(demand=ranges)


def test_a_dask_grid_is_validated_lazily_as_float64_with_every_fund_in_one_chunk():
    pytest.importorskip("dask.array")
    values = np.zeros((40, 4), dtype=np.int64)  # zeros are valid ETV, integers are converted
    values[::3, 1] = 7
    lazy = xr.DataArray(values, dims=("user", "fund"),
                        coords={"user": np.arange(40), "fund": list("abcd")}).chunk({"user": 10, "fund": 2})
    problem = eoca.AllocationProblem(lazy, dict.fromkeys("abcd", 10), dict.fromkeys("abcd", 1),
                                     pd.Series(1, index=np.arange(40)))
    etv = problem.compile().etv
    assert problem.compile().is_lazy and etv.dtype == np.float64 and etv.numblocks == (4, 1)
    np.testing.assert_array_equal(np.asarray(etv.compute()), values)
    with pytest.raises(ETVError, match="values must be numeric; got dtype"):
        eoca.AllocationProblem(lazy.astype(str), dict.fromkeys("abcd", 10), dict.fromkeys("abcd", 1),
                               pd.Series(1, index=np.arange(40)))


def test_mutable_view_types_read_only_memory_as_writeable_without_copying():
    from eoca._arrays import mutable_view

    writeable = np.arange(6.0)
    assert mutable_view(writeable) is writeable
    frozen = np.arange(6.0)
    frozen.flags.writeable = False
    view = mutable_view(frozen)
    assert view.flags.writeable and np.shares_memory(view, frozen) and np.array_equal(view, frozen)
    empty = np.zeros(0)
    empty.flags.writeable = False
    assert mutable_view(empty) is empty


def test_the_checker_and_the_rule_passes_compile_once_whether_their_arrays_are_read_only_or_not():
    """A compiled problem's arrays are read-only, a subset's are not, and the codes ``eoca.solve`` hands the
    checker are read-only again; numba types the two apart, so without ``eoca._arrays.writeable`` each mix
    compiled its own copy of a kernel (five of the checker's pass in one test run: minutes of a fresh
    machine's first run)."""
    from eoca.checks import _best_priced, _tally_bound, _tally_bound_rows, check_allocation, dual_bound
    from eoca.constraints import _activity
    from eoca.instances import constrained_problem
    from eoca.solvers._side_dual import _Layout
    from eoca.solvers._side_kernels import _choices_kernel, reduced_choices

    problem = constrained_problem(3_000, 4, seed=2)
    c = problem.compile()
    assert not c.etv.flags.writeable and not c.user_level.flags.writeable
    codes = eoca.solve(problem).codes.copy()
    frozen = codes.copy()
    frozen.flags.writeable = False
    lam, mu = np.zeros(c.n_funds), np.full(len(c.constraints), 0.01)

    def run(values):
        check_allocation(problem, values)
        dual_bound(c, lam, mu)
        for con in c.constraints:
            con.activity(values)
        reduced_choices(c, c.etv, lam, mu, values)
        # writeable copies of the problem's arrays, as a subset of users has them
        _tally_bound(c.etv.copy(), c.user_level.copy(), c.fund_level.copy(), values, lam, False, True, True)

    run(codes)
    kernels = (_tally_bound_rows, _best_priced, _activity, _choices_kernel)
    seen = [set(map(str, k.signatures)) for k in kernels]
    run(frozen)
    for kernel, before in zip(kernels, seen):
        assert set(map(str, kernel.signatures)) == before, kernel.py_func.__name__
    layout = _Layout(c)
    assert all(getattr(layout, name).flags.writeable for name in ("etv", "user_level", "fund_level", "mask", "user_w"))


def test_a_grid_without_funds_is_named_whatever_the_dtype_of_its_empty_coordinate():
    for funds in (np.array([], dtype=float), np.array([], dtype=object), np.array([], dtype=np.int64)):
        empty = xr.DataArray(np.zeros((3, 0)), dims=("user", "fund"), coords={"user": [1, 2, 3], "fund": funds})
        with pytest.raises(ETVError, match="the grid has no funds"):
            eoca.AllocationProblem(empty, {}, {}, pd.Series(1, index=[1, 2, 3]))


def test_a_problem_pickles_and_solves_the_same_after():
    # Dask, joblib and multiprocessing ship problems to their workers by pickle (it raised before: the
    # immutability guard refused the restored attributes)
    import pickle

    from eoca.instances import constrained_problem

    for problem in (constrained_problem(3_000, 6, seed=0), _simple_for_pickle()):
        problem.diagnose()
        again = pickle.loads(pickle.dumps(problem))
        assert again.fingerprint() == problem.fingerprint()
        assert again.diagnose() == problem.diagnose()
        first, second = eoca.solve(problem), eoca.solve(again)
        np.testing.assert_array_equal(first.codes, second.codes)
        assert first.objective == second.objective and second.ok
        with pytest.raises(AttributeError, match="immutable"):
            again._name = "changed"


def _simple_for_pickle() -> eoca.AllocationProblem:
    rng = np.random.default_rng(3)
    users = [f"u{i}" for i in range(500)]
    etv = pd.DataFrame(rng.gamma(2.0, 10.0, (500, 3)), index=users, columns=["a", "b", "c"])
    return eoca.AllocationProblem(etv=etv, demand={"a": 200, "b": 200, "c": 100}, risk_level={"a": 1, "b": 2, "c": 3},
                                  risk_tolerance=pd.Series(rng.integers(1, 4, 500), index=users), name="pickled")


def test_the_diagnosis_of_a_masked_problem_is_worked_out_once(monkeypatch):
    # every solve asks for it; with a mask it is a max-flow over the users' allowed-fund patterns
    import eoca.feasibility as feasibility
    from eoca.instances import constrained_problem

    problem = constrained_problem(3_000, 6, seed=1)
    calls = []
    real = feasibility.allowed_patterns
    monkeypatch.setattr(feasibility, "allowed_patterns", lambda *a: calls.append(1) or real(*a))
    first = problem.diagnose()
    eoca.solve(problem)
    assert problem.diagnose() is first and first.feasible
    assert len(calls) == 1
