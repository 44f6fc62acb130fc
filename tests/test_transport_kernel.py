"""The exact transportation kernel: optimal, feasible, certified by its prices, deterministic, and fast on
degenerate grids (ties everywhere), which is where a price-based solver is most easily caught out."""

from __future__ import annotations

import itertools

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eoca.solvers._transport import TransportSolution, solve_transport


def certificate_gap(etv, user_level, fund_level, demand_min, demand_max, holdout, assignment, prices):
    """(dual(prices) - objective(assignment)) / max(1, |dual|), after checking the assignment is feasible.

    dual(lambda) = sum_i max(0 if holdout else -inf, max_{j allowed} etv[i, j] - lambda_j)
                   + sum_j (lambda_j * max_j if lambda_j >= 0 else lambda_j * min_j)
    bounds every feasible objective from above (weak duality), so a gap of ~0 proves optimality.
    """
    etv = np.asarray(etv, dtype=np.float64)
    n, k = etv.shape
    a = np.asarray(assignment)
    lam = np.asarray(prices, dtype=np.float64)
    assert a.shape == (n,) and lam.shape == (k,)
    placed = a >= 0
    assert (a < k).all()
    if not holdout:
        assert placed.all(), "every user must receive a fund"
    assert (user_level[placed] >= fund_level[a[placed]]).all(), "risk rule broken"
    counts = np.bincount(a[placed], minlength=k)
    assert (counts >= demand_min).all() and (counts <= demand_max).all(), (counts, demand_min, demand_max)
    objective = etv[np.flatnonzero(placed), a[placed]].sum()
    allowed = user_level[:, None] >= fund_level[None, :]
    best = np.where(allowed, etv - lam[None, :], -np.inf).max(axis=1) if k else np.full(n, -np.inf)
    if holdout:
        best = np.maximum(best, 0.0)
    dual = best.sum() + np.where(lam >= 0, lam * demand_max, lam * demand_min).sum()
    return (dual - objective) / max(1.0, abs(dual))


def solve_and_check(etv, ul, fl, dmin, dmax, holdout, tol=1e-9):
    sol = solve_transport(etv, ul, fl, dmin, dmax, holdout)
    assert isinstance(sol, TransportSolution)
    assert sol.status == "optimal"
    assert sol.assignment.dtype == np.int32 and sol.prices.dtype == np.float64
    gap = certificate_gap(etv, ul, fl, dmin, dmax, holdout, sol.assignment, sol.prices)
    assert abs(gap) <= tol, gap
    return sol


def objective(etv, a):
    placed = a >= 0
    return etv[np.flatnonzero(placed), a[placed]].sum()


def brute_force(etv, ul, fl, dmin, dmax, holdout):
    n, k = etv.shape
    options = [j for j in range(k)] + ([-1] if holdout else [])
    best = None
    for a in itertools.product(options, repeat=n):
        a = np.array(a, dtype=np.int64)
        placed = a >= 0
        if not (ul[placed] >= fl[a[placed]]).all():
            continue
        c = np.bincount(a[placed], minlength=k)
        if (c < dmin).any() or (c > dmax).any():
            continue
        v = objective(etv, a)
        best = v if best is None else max(best, v)
    return best


# ---------------------------------------------------------------------------------------------------------
# tiny instances against brute force


@st.composite
def tiny_instances(draw):
    n = draw(st.integers(1, 6))
    k = draw(st.integers(1, 3))
    holdout = draw(st.booleans())
    kind = draw(st.sampled_from(["float", "few", "zeros"]))
    if kind == "float":
        etv = np.array(draw(st.lists(st.floats(0, 100, allow_nan=False), min_size=n * k, max_size=n * k)))
    elif kind == "few":
        etv = np.array(draw(st.lists(st.sampled_from([0.0, 1.0, 2.5, 4.0]), min_size=n * k, max_size=n * k)))
    else:
        etv = np.array(draw(st.lists(st.sampled_from([0.0, 0.0, 0.0, 3.0]), min_size=n * k, max_size=n * k)))
    etv = etv.reshape(n, k)
    ul = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=np.int32)
    fl = np.array(draw(st.lists(st.integers(0, 2), min_size=k, max_size=k)), dtype=np.int32)
    dmin = np.array(draw(st.lists(st.integers(0, 3), min_size=k, max_size=k)), dtype=np.int64)
    extra = np.array(draw(st.lists(st.integers(0, 2), min_size=k, max_size=k)), dtype=np.int64)
    exact = draw(st.booleans())
    dmax = dmin if exact else dmin + extra
    return etv, ul, fl, dmin, dmax.copy(), holdout


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(tiny_instances())
def test_matches_brute_force(inst):
    etv, ul, fl, dmin, dmax, holdout = inst
    opt = brute_force(etv, ul, fl, dmin, dmax, holdout)
    if opt is None:
        with pytest.raises(ValueError):
            solve_transport(etv, ul, fl, dmin, dmax, holdout)
        return
    sol = solve_and_check(etv, ul, fl, dmin, dmax, holdout)
    assert objective(etv, sol.assignment) == pytest.approx(opt, rel=1e-12, abs=1e-9)


def test_infeasible_is_a_value_error():
    etv = np.ones((3, 2))
    ul = np.array([0, 0, 1], np.int32)
    fl = np.array([0, 1], np.int32)
    with pytest.raises(ValueError, match="infeasible"):
        solve_transport(etv, ul, fl, np.array([1, 2]), np.array([1, 2]), False)
    with pytest.raises(ValueError, match="infeasible"):  # demands sum to 2 but 3 users must be placed
        solve_transport(etv, np.zeros(3, np.int32), fl, np.array([1, 1]), np.array([1, 1]), False)


def test_small_shapes():
    # n < k, k = 1, demand 0 for a fund, all demand on one fund
    etv = np.array([[5.0, 1.0, 9.0]])
    sol = solve_and_check(etv, np.zeros(1, np.int32), np.zeros(3, np.int32), np.array([0, 1, 0]),
                          np.array([0, 1, 0]), False)
    assert sol.assignment.tolist() == [1]
    sol = solve_and_check(np.arange(4.0)[:, None], np.zeros(4, np.int32), np.zeros(1, np.int32),
                          np.array([4]), np.array([4]), False)
    assert sol.assignment.tolist() == [0, 0, 0, 0]
    sol = solve_and_check(np.arange(4.0)[:, None], np.zeros(4, np.int32), np.zeros(1, np.int32),
                          np.array([2]), np.array([2]), True)
    assert sol.assignment.tolist() == [-1, -1, 0, 0]
    sol = solve_transport(np.zeros((0, 3)), np.zeros(0, np.int32), np.zeros(3, np.int32), np.zeros(3, np.int64),
                          np.zeros(3, np.int64), True)
    assert sol.assignment.shape == (0,) and sol.status == "optimal"


# ---------------------------------------------------------------------------------------------------------
# medium instances against the LP optimum (total unimodularity makes it integral)


def lp_optimum(etv, ul, fl, dmin, dmax, holdout):
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    n, k = etv.shape
    ii, jj = np.nonzero(ul[:, None] >= fl[None, :])
    m = len(ii)
    cols = np.arange(m)
    user_rows = coo_matrix((np.ones(m), (ii, cols)), shape=(n, m)).tocsr()
    fund_rows = coo_matrix((np.ones(m), (jj, cols)), shape=(k, m)).tocsr()
    from scipy.sparse import vstack

    if holdout:
        a_ub = vstack([user_rows, fund_rows, -fund_rows])
        b_ub = np.concatenate([np.ones(n), dmax, -dmin])
        res = linprog(-etv[ii, jj], A_ub=a_ub, b_ub=b_ub, bounds=(0, 1), method="highs")
    else:
        a_ub = vstack([fund_rows, -fund_rows])
        b_ub = np.concatenate([dmax, -dmin])
        res = linprog(-etv[ii, jj], A_ub=a_ub, b_ub=b_ub, A_eq=user_rows, b_eq=np.ones(n), bounds=(0, 1),
                      method="highs")
    assert res.status == 0, res.message
    return -res.fun


def random_instance(rng, n, k, *, levels=3, holdout=False, ranges=False, kind="float"):
    if kind == "float":
        etv = rng.gamma(1.0, 10.0, size=(n, k))
    elif kind == "few":
        etv = rng.choice([0.0, 1.0, 5.0, 20.0], size=(n, k))
    else:
        etv = np.where(rng.random((n, k)) < 0.9, 0.0, rng.gamma(1.0, 10.0, size=(n, k)))
    ul = rng.integers(0, levels, n).astype(np.int32)
    fl = rng.integers(0, levels, k).astype(np.int32)
    fl[rng.integers(k)] = 0
    # demands from a random feasible assignment, so the instance is feasible by construction
    a = np.empty(n, np.int64)
    for i in range(n):
        ok = np.flatnonzero(fl <= ul[i])
        a[i] = rng.choice(ok)
    if holdout:
        a[rng.random(n) < 0.2] = -1
    c = np.bincount(a[a >= 0], minlength=k).astype(np.int64)
    if ranges:
        dmin = np.maximum(0, c - rng.integers(0, 1 + n // (4 * k), k))
        dmax = c + rng.integers(0, 1 + n // (4 * k), k)
    else:
        dmin = c
        dmax = c.copy()
    return etv, ul, fl, dmin, dmax


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("holdout,ranges", [(False, False), (True, False), (False, True), (True, True)])
def test_matches_lp_optimum(seed, holdout, ranges):
    rng = np.random.default_rng(seed)
    kind = ["float", "few", "zeros"][seed % 3]
    n, k = 2000, int(rng.integers(2, 9))
    etv, ul, fl, dmin, dmax = random_instance(rng, n, k, holdout=holdout, ranges=ranges, kind=kind)
    sol = solve_and_check(etv, ul, fl, dmin, dmax, holdout)
    assert objective(etv, sol.assignment) == pytest.approx(lp_optimum(etv, ul, fl, dmin, dmax, holdout),
                                                           rel=1e-9)


@pytest.mark.parametrize("seed", range(8))
def test_newton_step_on_random_instances(monkeypatch, seed):
    """The Newton step on the prices, on random instances of every kind (float, few values, mostly zeros;
    exact demands and ranges; 2-8 funds over random risk levels): certified optimal, and the same optimum
    as without the step. On float grids with exact demands the step is taken."""
    import eoca.solvers._transport as T

    rng = np.random.default_rng(100 + seed)
    kind = ["float", "few", "zeros"][seed % 3]
    ranges = seed % 2 == 1
    n, k = 60_000, int(rng.integers(2, 9))
    etv, ul, fl, dmin, dmax = random_instance(rng, n, k, holdout=False, ranges=ranges, kind=kind)
    monkeypatch.setattr(T._tuning, "NEWTON_USERS", 50_000)
    sol = solve_and_check(etv, ul, fl, dmin, dmax, False)
    if kind == "float" and not ranges:
        assert sol.stats["initial_excess"] * 3 < sol.stats["pass_excess"], sol.stats
    monkeypatch.setattr(T._tuning, "NEWTON_USERS", 10**12)
    without = solve_and_check(etv, ul, fl, dmin, dmax, False)
    assert objective(etv, sol.assignment) == pytest.approx(objective(etv, without.assignment), rel=1e-12)


def test_recursive_sample_levels_are_used():
    rng = np.random.default_rng(7)
    etv, ul, fl, dmin, dmax = random_instance(rng, 60_000, 5, levels=2, ranges=True)
    sol = solve_and_check(etv, ul, fl, dmin, dmax, False)
    assert sol.stats["sample_levels"]  # warm-started from a sample
    assert sol.stats["moved"] < 60_000 // 4


# ---------------------------------------------------------------------------------------------------------
# degenerate grids at scale: must finish fast and exactly


def exact_demands(n, k, rng):
    w = rng.random(k) + 0.2
    d = np.floor(w / w.sum() * n).astype(np.int64)
    d[0] += n - d.sum()
    return d


def assert_little_repair_work(sol, n, k):
    """The repair after the price pass touched a small part of the grid: the users it loaded into its
    heaps, the users it scanned and its heap entries together stay under a quarter of the n * k pairs,
    in under n / 100 shortest-path runs. Ties everywhere are where a price-based repair could revisit
    every user many times; counted, not timed, the bound is the same on any machine (the solves here
    touch at most 3% of the pairs; their speed is measured in benchmarks/)."""
    s = sol.stats
    assert s["loaded"] + s["scanned"] + s["heap_entries"] <= n * k // 4, s
    assert s["dijkstra_runs"] <= n // 100, s


def degenerate_grid(kind, n, k, rng):
    if kind == "four_values":
        return rng.choice([0.0, 1.25, 2.5, 10.0], size=(n, k))
    if kind == "ninety_percent_zeros":
        return np.where(rng.random((n, k)) < 0.9, 0.0, np.round(rng.gamma(1.0, 10.0, size=(n, k)), 2))
    if kind == "identical_users":
        return np.tile(rng.random(k) * 10, (n, 1))
    if kind == "all_zero":
        return np.zeros((n, k))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["four_values", "ninety_percent_zeros", "identical_users", "all_zero"])
@pytest.mark.parametrize("k", [2, 8])
def test_degenerate_at_scale(kind, k):
    rng = np.random.default_rng(11)
    n = 200_000
    etv = degenerate_grid(kind, n, k, rng)
    ul = np.zeros(n, np.int32)
    fl = np.zeros(k, np.int32)
    d = exact_demands(n, k, rng)
    assert_little_repair_work(solve_and_check(etv, ul, fl, d, d, False), n, k)


@pytest.mark.parametrize("kind", ["four_values", "ninety_percent_zeros"])
def test_degenerate_with_holdout_and_ranges(kind):
    rng = np.random.default_rng(12)
    n, k = 200_000, 6
    etv = degenerate_grid(kind, n, k, rng)
    ul = rng.integers(0, 3, n).astype(np.int32)
    fl = np.array([0, 0, 1, 1, 2, 2], np.int32)
    d = exact_demands(n // 2, k, rng)
    assert_little_repair_work(solve_and_check(etv, ul, fl, d // 2, d, True), n, k)


def test_tight_risk_levels():
    # users at level >= 1 are exactly as many as the demand of the level-1 funds: they must all go there
    rng = np.random.default_rng(13)
    n, k = 200_000, 8
    etv = np.round(rng.gamma(1.0, 10.0, size=(n, k)), 1)
    ul = (rng.random(n) < 0.3).astype(np.int32)
    fl = np.array([0, 0, 0, 0, 1, 1, 1, 1], np.int32)
    high = int(ul.sum())
    d = np.empty(k, np.int64)
    d[4:] = high // 4
    d[4] += high - d[4:].sum()
    d[:4] = (n - high) // 4
    d[0] += n - high - d[:4].sum()
    # level-1 funds are the least attractive, so the unconstrained choice fights the risk rule
    etv[:, 4:] *= 0.2
    sol = solve_and_check(etv, ul, fl, d, d, False)
    assert_little_repair_work(sol, n, k)
    assert (fl[sol.assignment[ul == 1]] == 1).all()


def test_fund_with_zero_demand_takes_nobody():
    rng = np.random.default_rng(14)
    n, k = 100_000, 4
    etv = rng.random((n, k))
    etv[:, 2] += 5.0  # the most attractive fund must stay empty
    d = np.array([n // 2, n - n // 2, 0, 0])
    sol = solve_and_check(etv, np.zeros(n, np.int32), np.zeros(k, np.int32), d, d, False)
    assert not np.isin(sol.assignment, [2, 3]).any()


@pytest.mark.parametrize("n_empty,holdout", [(2, False), (6, True)])
def test_empty_funds_are_priced_at_what_one_user_would_gain(n_empty, holdout):
    """A fund that must stay empty gets the smallest price at which no user it allows would rather take
    it: the ETV its first contracted user would add. Such funds at different risk levels, few (read fund
    by fund) or many (read in one pass), with held-out users (value 0) or without."""
    rng = np.random.default_rng(16)
    n, k = 200_000, 3 + n_empty
    etv = rng.random((n, k)) * 100
    ul = rng.integers(0, 3, n).astype(np.int32)
    fl = np.array([0, 0, 0] + [1 + j % 2 for j in range(n_empty)], np.int32)
    d = np.array([n // 3, n // 3, n - 2 * (n // 3)] + [0] * n_empty)
    dmin = d - d // 10 if holdout else d
    sol = solve_and_check(etv, ul, fl, dmin, d, holdout)
    a = sol.assignment
    value = np.where(a >= 0, etv[np.arange(n), a] - sol.prices[a], 0.0)
    for j in range(3, k):
        allowed = ul >= fl[j]
        assert sol.prices[j] == pytest.approx(max(0.0, (etv[allowed, j] - value[allowed]).max()), rel=1e-12)


def test_deterministic():
    rng = np.random.default_rng(15)
    n, k = 300_000, 8
    etv = degenerate_grid("four_values", n, k, rng)
    ul = rng.integers(0, 2, n).astype(np.int32)
    fl = np.array([0, 0, 0, 0, 0, 1, 1, 1], np.int32)
    d = exact_demands(n // 2, k, rng)
    a = solve_transport(etv, ul, fl, d // 2, d, True)
    b = solve_transport(etv.copy(), ul.copy(), fl, d // 2, d, True)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    np.testing.assert_array_equal(a.prices, b.prices)


def assert_same_for_one_and_two_threads(solve, *args):
    """The same assignment and prices with one numba thread as with two."""
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        a = solve(*args)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        b = solve(*args)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    np.testing.assert_array_equal(a.prices, b.prices)


@pytest.mark.parametrize("kind", ["gamma", "four_values", "ninety_percent_zeros"])
def test_same_result_for_any_thread_count(kind):
    """The parallel pass and refill scan split users in fixed blocks: one or two threads, same output."""
    rng = np.random.default_rng(21)
    n, k = 400_000, 8
    etv = rng.gamma(1.0, 10.0, size=(n, k)) if kind == "gamma" else degenerate_grid(kind, n, k, rng)
    ul = rng.integers(0, 3, n).astype(np.int32)
    fl = np.array([0, 0, 0, 1, 1, 1, 2, 2], np.int32)
    d = exact_demands(n // 2, k, rng)
    assert_same_for_one_and_two_threads(solve_transport, etv, ul, fl, d // 2, d, True)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(16)
    etv, ul, fl, dmin, dmax = random_instance(rng, 5000, 4, holdout=True, ranges=True)
    before = [x.copy() for x in (etv, ul, fl, dmin, dmax)]
    solve_transport(etv, ul, fl, dmin, dmax, True)
    for x, y in zip(before, (etv, ul, fl, dmin, dmax), strict=True):
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------------------------------------
# exactly tight risk levels (made explicit as eligibility) and degenerate grids kept small in memory


def all_levels_tight(rng, n, k, *, holdout=False):
    """Every user takes a random fund at the highest fund level it reaches, so every level is tight; with
    ``holdout`` the lowest level gets ranges and may hold users out (the upper levels stay tight)."""
    fl = np.sort(rng.integers(0, 4, k)).astype(np.int32)
    fl[0] = 0
    ul = rng.integers(0, 4, n).astype(np.int32)
    lv = np.unique(fl)
    top = lv[np.searchsorted(lv, ul, side="right") - 1]
    a = np.empty(n, np.int64)
    for level in lv:
        m = top == level
        a[m] = rng.choice(np.flatnonzero(fl == level), m.sum())
    d = np.bincount(a, minlength=k).astype(np.int64)
    dmin, dmax = d.copy(), d.copy()
    if holdout:
        low = fl == lv[0]
        dmin[low] = d[low] * 4 // 5
        dmax[low] = d[low] + n // 50
    return ul, fl, dmin, dmax


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("holdout", [False, True])
def test_tight_levels_match_lp(seed, holdout):
    rng = np.random.default_rng(100 + seed)
    n, k = 1500, int(rng.integers(3, 9))
    etv = random_instance(rng, n, k, kind=["float", "few", "zeros", "float"][seed])[0]
    etv *= (1.0 + np.arange(k))[None, ::-1]  # low-risk funds are the attractive ones: the rule binds
    ul, fl, dmin, dmax = all_levels_tight(rng, n, k, holdout=holdout)
    sol = solve_and_check(etv, ul, fl, dmin, dmax, holdout)
    assert objective(etv, sol.assignment) == pytest.approx(lp_optimum(etv, ul, fl, dmin, dmax, holdout),
                                                           rel=1e-9)


@pytest.mark.parametrize("holdout", [False, True])
def test_tight_levels_at_scale(holdout):
    rng = np.random.default_rng(21)
    n, k = 200_000, 8
    etv = np.round(rng.gamma(1.0, 10.0, size=(n, k)), 1) * (1.0 + np.arange(k))[None, ::-1]
    ul, fl, dmin, dmax = all_levels_tight(rng, n, k, holdout=holdout)
    sol = solve_and_check(etv, ul, fl, dmin, dmax, holdout)
    assert_little_repair_work(sol, n, k)
    # each user sits in the block of its own highest reachable level, as tightness forces
    lv = np.unique(fl)
    top = lv[np.searchsorted(lv, ul, side="right") - 1]
    placed = sol.assignment >= 0
    assert (fl[sol.assignment[placed]] == top[placed]).all() or holdout
    assert sol.stats["loaded"] < n // 4


def test_tight_synthetic_family():
    from eoca.instances import synthetic_problem

    c = synthetic_problem(200_000, 8, family="tight").compile()
    sol = solve_and_check(c.etv, c.user_level, c.fund_level, c.demand_min, c.demand_max, c.holdout)
    assert sol.stats["loaded"] < 200_000 // 4


@pytest.mark.parametrize("kind", ["four_values", "ninety_percent_zeros", "identical_users", "all_zero"])
def test_degenerate_grids_load_few_users(kind):
    # exactly tied users are spread over their tied funds in the pass, so the repair loads few users into
    # the arc heaps (each loaded user costs up to k heap entries: the memory on top of the grid)
    rng = np.random.default_rng(22)
    n, k = 300_000, 8
    etv = degenerate_grid(kind, n, k, rng)
    d = exact_demands(n, k, rng)
    sol = solve_and_check(etv, np.zeros(n, np.int32), np.zeros(k, np.int32), d, d, False)
    assert sol.stats["loaded"] < n // 5
    assert sol.stats["moved"] < n // 20


def test_read_only_inputs():
    rng = np.random.default_rng(23)
    etv, ul, fl, dmin, dmax = random_instance(rng, 3000, 4, holdout=True, ranges=True)
    ref = solve_transport(etv, ul, fl, dmin, dmax, True)
    for x in (etv, ul, fl, dmin, dmax):
        x.setflags(write=False)
    sol = solve_and_check(etv, ul, fl, dmin, dmax, True)
    np.testing.assert_array_equal(sol.assignment, ref.assignment)


def test_many_funds_load_users_only_into_their_cheap_arcs():
    # a loaded user enters only the heaps of the arcs it is cheap for (a threshold per arc), not all k - 1 of
    # its node's heaps: with 50 funds the heaps (the memory on top of the grid) stay a fraction of n entries
    rng = np.random.default_rng(24)
    n, k = 200_000, 50
    etv = rng.gamma(1.0, 10.0, size=(n, k))
    d = exact_demands(n, k, rng)
    sol = solve_and_check(etv, np.zeros(n, np.int32), np.zeros(k, np.int32), d, d, False)
    # (a user that moves enters every heap of its new node: k - 1 entries each)
    assert sol.stats["heap_entries"] - (k - 1) * sol.stats["moved"] < n // 2


@pytest.mark.parametrize("kind", ["four_values", "ninety_percent_zeros", "gamma"])
def test_many_funds_ties_and_levels(kind):
    # > 15 funds (only the arc that needs users is refilled), several level codes per node (the ties at a
    # refill threshold are taken by user index across the codes), holdout and ranges: certified, and the
    # same with one or two threads
    rng = np.random.default_rng(25)
    n, k = 120_000, 20
    etv = rng.gamma(1.0, 10.0, size=(n, k)) if kind == "gamma" else degenerate_grid(kind, n, k, rng)
    ul = rng.integers(0, 4, n).astype(np.int32)
    fl = (np.arange(k) % 4).astype(np.int32)
    d = exact_demands(n // 2, k, rng)
    assert_same_for_one_and_two_threads(solve_and_check, etv, ul, fl, d // 2, d, True)


@pytest.mark.parametrize("kind", ["continuous", "spike"])
def test_first_candidates_are_the_smallest_gaps(kind):
    """The repair's first load: at least the requested number of users, every user left out has a gap at
    least the threshold (the bound the repair's arc costs rely on), and not many more than asked. A spike of
    equal gaps (tied users have gap 0) is cut to the requested number, smallest indices first."""
    from eoca.solvers import _transport_kernels as K

    rng = np.random.default_rng(3)
    n, k = 200_000, 4
    etv = rng.random((n, k)) * 100
    if kind == "spike":
        etv[: n // 2] = 5.0  # half the users value every fund the same: gap 0
    ul = np.zeros(n, np.int32)
    lo = np.array([0, 0, 0, 0, np.iinfo(np.int32).max], np.int32)
    hi = np.full(k + 1, np.iinfo(np.int32).max, np.int32)
    lam = np.zeros(k + 1)
    target_counts = np.full(k + 1, n // k, np.int64)
    _a, gap, _c, nbad, _s, hist = K.assign_pass(etv, ul, lo, hi, lam, target_counts)
    assert nbad == 0 and hist.sum() == n
    want = 5_000
    theta, cand = K.select_initial(gap, want, hist)
    assert np.all(np.diff(cand) > 0)
    out = np.ones(n, bool)
    out[cand] = False
    assert (gap[out] >= theta).all()
    if kind == "continuous":
        assert want <= len(cand) <= 2 * want
        assert (gap[cand] < theta).all()
    else:
        assert len(cand) == want and (cand == np.arange(want)).all() and theta == 0.0


def test_first_candidates_spike_with_tiny_positive_gaps():
    """Fewer exact-zero gaps than asked, the rest of the smallest histogram bin tiny positive gaps: the
    first load is still the requested number of smallest gaps, ties by user index."""
    from eoca.solvers import _transport_kernels as K

    rng = np.random.default_rng(0)
    n, want = 200_000, 5_000
    gap = (rng.random(n) * 10).astype(np.float32)
    gap[:3_000] = 0.0
    gap[3_000:103_000] = np.float32(1e-40)  # below the smallest normal float32: same bin as 0
    hist = np.bincount((gap.view(np.uint32) & 0x7FFFFFFF) >> 20, minlength=K.GAP_BINS)[None, :]
    theta, cand = K.select_initial(gap, want, hist.astype(np.int64))
    assert (cand == np.arange(want)).all()
    out = np.ones(n, bool)
    out[cand] = False
    assert (gap[out] >= theta).all() and theta > 0.0


@pytest.mark.parametrize("second_gap", [False, True], ids=["one-gap", "two-gaps"])
@pytest.mark.parametrize("holdout", [False, True])
def test_pass_marks_exactly_the_tied_nodes(holdout, second_gap):
    """The pass's first phase marks each user whose best nodes tie with exactly the nodes it may take whose
    value ties with its best, and gives every other user its unique best node. Half the grid has few
    distinct amounts (most users tie: their tied nodes are computed a whole sweep at a time), half is
    continuous with a tie every 50th user (computed user by user); both must agree with the definition.
    With node groups, each untied user's second gap is its gap to the best node outside its best node's
    group, stored as the top 16 bits of the float32 (0 for tied users, +inf where no other group is
    allowed); the assignment does not depend on it."""
    from eoca.solvers import _transport_kernels as K

    rng = np.random.default_rng(11)
    n, k = 20_000, 6
    kk = k + 1
    h = n // 2
    etv = np.concatenate([rng.choice([0.0, 0.0, 0.0, 10.0, 25.0], size=(h, k)), rng.random((n - h, k)) * 30])
    etv[h::50] = 12.0
    ulev = rng.integers(0, 3, n).astype(np.int32)
    big = np.iinfo(np.int32).max
    lo = np.array([0, 0, 1, 1, 2, 2, 0 if holdout else big], np.int32)  # node k is the holdout
    hi = np.full(kk, big, np.int32)
    lam = np.array([0.0, 5.0, 0.0, 15.0, 0.0, 0.0, 0.0])  # some funds cheaper than others: ties remain
    assign = np.empty(n, np.int32)
    gap = np.empty(n, np.float32)
    grp = np.array([0, 0, 1, 1, 2, 2, 3], np.float64)  # the nodes of one risk level
    gap2 = np.empty(n if second_gap else 0, np.uint16)
    K._pass_blocks(etv, ulev, lo, hi, lam, assign, gap, grp, gap2)
    vals = np.concatenate([etv, np.zeros((n, 1))], axis=1) - lam[None, :]
    allowed = (lo[None, :] <= ulev[:, None]) & (ulev[:, None] < hi[None, :])
    vals = np.where(allowed, vals, -np.inf)
    best = vals.max(axis=1)
    tie = vals >= (best - 1e-12 * (np.abs(best) + np.abs(lam).max()))[:, None]
    marked = assign <= K.TIED
    sweeps = marked[: h // K.PASS_SWEEP * K.PASS_SWEEP].reshape(-1, K.PASS_SWEEP).sum(axis=1)
    assert (sweeps * 8 > K.PASS_SWEEP).all() and 0 < marked[h:].sum() < h // 20  # both ways are exercised
    assert (marked == (tie.sum(axis=1) > 1)).all()
    assert (gap[marked] == 0).all()
    code = K.TIED - assign[marked].astype(np.int64)
    assert ((code & ((1 << kk) - 1)) == (tie[marked] * (1 << np.arange(kk))).sum(axis=1)).all()
    assert tie[np.flatnonzero(marked), code >> kk].all()  # the best node recorded is one of the tied
    unique = ~marked
    assert (assign[unique] == vals[unique].argmax(axis=1)).all()
    if second_gap:
        assert (gap2[marked] == 0).all()
        a = assign[unique]
        other = np.where(grp[None, :] != grp[a][:, None], vals[unique], -np.inf).max(axis=1)
        want = K.gap16(best[unique] - other)
        assert (gap2[unique] == want).all()
        assert (want < K.GAP2_INF).any() and (want == K.GAP2_INF).any() != holdout  # (holdout: T for all)
        # a lower bound of the float32 gap, within 1%
        g = (gap2[unique].astype(np.uint32) << 16).view(np.float32)
        true = (best[unique] - other).astype(np.float32)
        assert (g <= true).all() and (g[np.isfinite(true)] >= 0.99 * true[np.isfinite(true)]).all()


def test_one_node_member_list_matches_the_full_one():
    """A refill from a small node lists that node's users alone: the same groups, in the same order, as
    the member lists of every node, and no user of any other node."""
    from eoca.solvers import _transport_kernels as K

    rng = np.random.default_rng(21)
    n, nodes = 100_000, 6
    assign = rng.integers(0, nodes, n).astype(np.int32)
    ulev = rng.integers(-2, 6, n).astype(np.int32)
    loaded = (rng.random(n) < 0.1).astype(np.uint8)  # users that moved are in no list
    bnd = np.array([np.iinfo(np.int32).min, 0, 1, 3, np.iinfo(np.int32).max], np.int32)
    C = len(bnd) + 1
    start, mem = K._build_members(assign, loaded, nodes, ulev, bnd, -1)
    for a in range(nodes):
        st_a, mem_a = K._build_members(assign, loaded, nodes, ulev, bnd, a)
        assert len(mem_a) == ((assign == a) & (loaded == 0)).sum()
        for g in range(nodes * C):
            got = mem_a[st_a[g]:st_a[g + 1]]
            if g // C == a:
                assert (got == mem[start[g]:start[g + 1]]).all()
            else:
                assert len(got) == 0


def test_sample_demands_keep_each_risk_levels_share():
    """The warm prices come from a sample whose demands follow its own users per risk level: the sample's
    funds at risk code >= t get the full demand there times the share of the full problem's users at code
    >= t that the sample holds. (With one scale for all funds, a sample that happens to hold 6% more
    high-tolerance users would see a slack at the top that the full problem does not have.)"""
    from eoca.solvers._transport import _block_sample_demands, _code_ratios

    full = np.array([0, 5_000, 3_000, 2_000])  # users per code 1..3 (code 0: none)
    sample = np.array([0, 480, 290, 230])  # a 10% sample, heavy at the top
    fcode = np.array([1, 1, 2, 3, 3, 0])  # the last fund is closed
    dmin = np.array([3_000, 2_000, 2_900, 1_100, 900, 0])
    ratio = _code_ratios(sample, full, fcode, dmin, 0.1)
    at_s = np.cumsum(sample[::-1])[::-1]
    at_f = np.cumsum(full[::-1])[::-1]
    for t in (1, 2, 3):
        got = (ratio * dmin)[fcode >= t].sum()
        assert got == pytest.approx(at_s[t] / at_f[t] * dmin[fcode >= t].sum())
    assert ratio[fcode == 3] == pytest.approx(0.115)
    smin, smax = _block_sample_demands(sample, fcode, dmin, dmin, False, ratio, np.zeros(0, np.int64))
    # the top funds' slack (users at code 3 minus their demand) is the full problem's, 0, up to rounding
    assert abs(int(smin[fcode == 3].sum()) - 230) <= 2 and smin.sum() <= 1_000 <= smax.sum()


@pytest.mark.parametrize("family,ranges", [("matching", False), ("fighting", False), ("tight", False),
                                           ("matching", True)])
def test_newton_step_on_the_prices_keeps_the_optimum(monkeypatch, family, ranges):
    """After the pass, a Newton step on the prices moves the users it concerns and leaves the repair a far
    smaller imbalance; the result is the same optimum, with a certificate, as without the step."""
    import eoca.solvers._transport as T
    from eoca.instances import synthetic_problem

    c = synthetic_problem(300_000, 8, family=family, seed=3).compile()
    dmin, dmax = c.demand_min, c.demand_max
    if ranges:  # demand ranges: the step aims at the bound each price sets
        dmin, dmax = (dmin * 0.98).astype(np.int64), (dmax * 1.02).astype(np.int64)
    args = (c.etv, c.user_level, c.fund_level, dmin, dmax, c.holdout)
    with_step = solve_and_check(*args)
    st_ = with_step.stats
    assert st_["initial_excess"] * 3 < st_["pass_excess"], st_
    monkeypatch.setattr(T._tuning, "NEWTON_USERS", 10**12)
    without = solve_and_check(*args)
    assert without.stats["initial_excess"] == without.stats["pass_excess"]
    assert objective(c.etv, with_step.assignment) == pytest.approx(objective(c.etv, without.assignment), rel=1e-12)


@pytest.mark.parametrize("second_gap", [False, True], ids=["one-gap", "two-gaps"])
def test_newton_step_with_one_or_two_gaps_on_tight_levels(monkeypatch, second_gap):
    """On nearly tight risk levels the sample's prices across levels are far off. With each user's second
    gap (to the best node outside its node's risk level) the Newton step reads a small part of the users
    that one gap would make it read; either way the result is the same certified optimum as without the
    step. The sample level (60k users, with its own step) is left unrepaired, at the step's prices."""
    import eoca.solvers._transport as T
    from eoca.instances import synthetic_problem

    c = synthetic_problem(600_000, 8, family="tight", seed=1).compile()
    args = (c.etv, c.user_level, c.fund_level, c.demand_min, c.demand_max, c.holdout)
    monkeypatch.setattr(T._tuning, "SECOND_GAP", -1.0 if second_gap else 2.0)  # always worth it / never
    sol = solve_and_check(*args)
    sample, top = sol.stats["levels"][-2:]
    assert sample["users"] == 60_000 and not sample["repaired"] and sample["second_gap"]
    assert sample["initial_excess"] * 3 < sample["pass_excess"]
    assert top["repaired"] and top["second_gap"] == second_gap
    read, one_gap = top["newton_read"]
    if second_gap:  # the whole step, reading few users
        assert 0 < read * 4 < one_gap and top["initial_excess"] * 3 < top["pass_excess"], top
    else:  # one gap reads so many users that the step is halved
        assert read == one_gap > 0 and top["initial_excess"] < 0.7 * top["pass_excess"], top
    monkeypatch.setattr(T._tuning, "WARM_CUT", 0.0)  # a sample level whose step leaves more is repaired
    repaired = solve_and_check(*args)
    assert repaired.stats["levels"][-2]["repaired"]
    monkeypatch.setattr(T._tuning, "NEWTON_USERS", 10**12)
    without = solve_and_check(*args)
    for other in (repaired, without):
        assert objective(c.etv, sol.assignment) == pytest.approx(objective(c.etv, other.assignment), rel=1e-12)


def test_best_nodes_and_arc_density_match_their_definitions():
    """The two scans of the Newton step against numpy: each listed user moves to its best allowed node
    (first of equal ones) with the gap to its second best (and those whose gap is below their new node's
    bound are listed for the first load), and the density counts, per pair of nodes, the users whose
    reduced key is below the threshold."""
    from eoca.solvers import _transport_kernels as K

    rng = np.random.default_rng(5)
    n, k = 20_000, 5
    etv = np.round(rng.gamma(1.0, 10.0, size=(n, k)), 2)
    ulev = rng.integers(1, 4, n).astype(np.int32)
    lo = np.array([1, 1, 2, 3, 3, np.iinfo(np.int32).max], np.int32)
    hi = np.full(k + 1, np.iinfo(np.int32).max, np.int32)
    lam = np.append(rng.normal(0, 3, k), 0.0)
    vals = np.where((lo[None, :] <= ulev[:, None]) & (ulev[:, None] < hi[None, :]),
                    np.append(etv, np.zeros((n, 1)), axis=1) - lam, -np.inf)
    assign = vals.argmax(axis=1).astype(np.int32)
    users = np.sort(rng.choice(n, 5_000, replace=False)).astype(np.int32)
    reduced = vals[users, assign[users]][:, None] - vals[users]
    theta = 4.0
    want = np.zeros((k + 1, k + 1), np.int64)
    below = (reduced < theta) & (np.arange(k + 1)[None, :] != assign[users][:, None])  # (not allowed: inf)
    np.add.at(want, (np.repeat(assign[users], k + 1), np.tile(np.arange(k + 1), len(users))), below.ravel())
    W, per_node = K.arc_density(etv, ulev, lo, hi, lam, assign, users, theta, 1)
    assert (W == want).all()
    assert (per_node == np.bincount(assign[users], minlength=k + 1)).all()
    W3, per3 = K.arc_density(etv, ulev, lo, hi, lam, assign, users, theta, 3)  # every 3rd user
    assert (per3 == np.bincount(assign[users[::3]], minlength=k + 1)).all()
    third = np.zeros_like(want)
    np.add.at(third, (np.repeat(assign[users[::3]], k + 1), np.tile(np.arange(k + 1), len(users[::3]))),
              below[::3].ravel())
    assert (W3 == third).all()

    lam2 = lam + rng.normal(0, 2, k + 1)
    vals2 = vals + lam - lam2
    old = np.empty(len(users), np.int32)
    gap1 = np.empty(len(users))
    a0 = assign.copy()
    below = rng.uniform(0, 5, k + 1)
    moved, first = K.best_nodes(etv, ulev, lo, hi, lam2, assign, users, old, gap1, below)
    best = vals2[users].argmax(axis=1)
    srt = np.sort(vals2[users], axis=1)
    assert (assign[users] == best).all() and (old == a0[users]).all()
    assert np.allclose(gap1, srt[:, -1] - srt[:, -2])
    assert (first == users[gap1 < below[best]]).all() and 0 < len(first) < len(users)
    assert (moved == np.bincount(best, minlength=k + 1) - np.bincount(a0[users], minlength=k + 1)).all()
    others = np.setdiff1d(np.arange(n), users)
    assert (assign[others] == a0[others]).all()


@pytest.mark.parametrize("second_gap", [False, True], ids=["one-gap", "two-gaps"])
def test_gaps_below_node_lists_each_users_own_limit(second_gap):
    """The Newton step reads the users whose gap is below their own node's limit or, with second gaps,
    whose second gap is below their node's second limit (compared as stored: top 16 bits), in index
    order; it also counts the users one gap would read, and gives up (None) past the most it may read."""
    from eoca.solvers import _transport_kernels as K

    rng = np.random.default_rng(8)
    gap = rng.exponential(1.0, 100_001).astype(np.float32)
    gap2 = K.gap16(gap * rng.uniform(1.0, 5.0, len(gap))) if second_gap else np.empty(0, np.uint16)
    assign = rng.integers(0, 6, len(gap)).astype(np.int32)
    limit = np.array([0.0, 0.1, 0.5, 1.0, 3.0, np.inf])
    limit2 = rng.choice([0.0, 0.5, 2.0, 8.0], size=6)
    limit1 = np.maximum(limit, limit2)
    want = gap < limit[assign]
    if second_gap:
        want |= gap2 <= K.gap16(limit2)[assign]
    got, one = K.gaps_below_node(gap, gap2, assign, limit, K.gap16(limit2), len(gap), limit1)
    assert (got == np.flatnonzero(want)).all() and 0 < want.sum() < len(gap)
    assert one == ((gap < limit1[assign]).sum() if second_gap else want.sum())
    none, one2 = K.gaps_below_node(gap, gap2, assign, limit, K.gap16(limit2), int(want.sum()) - 1, limit1)
    assert none is None and one2 == one
