"""The one independent checker every allocation goes through, and the Lagrangian bound.

Nothing here is shared with any solver: counts, risk rule and objective are recomputed from the problem's
arrays, and the bound is evaluated from the dual formula for whatever prices are given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numba
import numpy as np
import pandas as pd
import xarray as xr

from eoca._arrays import writeable
from eoca.distributed.blocks import map_user_blocks
from eoca.errors import ValidationError
from eoca.problem import AllocationProblem, CompiledProblem, fund_vector
from eoca.result import Checks

if TYPE_CHECKING:
    from eoca.result import Result

__all__ = ["check_allocation", "check_and_bound", "dual_bound", "codes_from_assignment"]


_CHUNKS = 64  # fixed split of the users: sums never depend on the number of threads


@numba.njit(cache=True, inline="always")
def _tally_user(values, level, code, fund_level, counts, other):  # pragma: no cover - compiled
    """One user's part of the tally: counts its fund (or ``other``'s unplaced, invalid; and risk when the
    fund is above the user's level) and returns the ETV it adds."""
    if code == -1:
        other[0] += 1
    elif code < 0 or code >= len(counts):
        other[1] += 1
    else:
        counts[code] += 1
        if level < fund_level[code]:
            other[2] += 1
        return values[code]
    return 0.0


@numba.njit(cache=True, inline="always")
def _best_user(values, priced, floor):  # pragma: no cover - compiled
    """One user's best reduced value: the max over the row of ``values - priced`` (``priced`` is its
    level's row of prices, +inf above the level), at least ``floor``."""
    best = floor
    for j in range(len(values)):
        reduced = values[j] - priced[j]
        best = reduced if reduced > best else best
    return best


@numba.njit(cache=True, nogil=True, parallel=True)
def _tally_bound_rows(etv, user_level, fund_level, codes, prices, holdout, tally, bound):  # pragma: no cover
    """One read of the grid, row by row: with ``tally``, the allocation's counts per fund, ETV, unplaced,
    invalid and risk-breaking users; with ``bound``, the users' part of the dual value for ``prices``.
    The risk rule enters the bound as a price table per risk level (+inf where a fund is above the level),
    so each user's best reduced value is a branch-free max over one row. Each mix of the two flags has a
    loop of its own (testing them per user cost eoca.solve's pass, both together, 3-8%)."""
    n, k = etv.shape
    floor = 0.0 if holdout else -np.inf
    top = fund_level.max() if bound else 0  # levels at or above the riskiest fund may take every fund
    level_price = np.empty((top + 1, k))
    for lv in range(top + 1):
        for j in range(k):
            level_price[lv, j] = prices[j] if lv >= fund_level[j] else np.inf
    counts_c = np.zeros((_CHUNKS, k), dtype=np.int64)
    objective_c = np.zeros(_CHUNKS)
    bound_c = np.zeros(_CHUNKS)
    other_c = np.zeros((_CHUNKS, 3), dtype=np.int64)  # unplaced, invalid, risk
    for c in numba.prange(_CHUNKS):
        # per-chunk accumulators: threads never write the same cache line in the loop
        cnt = np.zeros(k, dtype=np.int64)
        other = np.zeros(3, dtype=np.int64)
        obj = 0.0
        total = 0.0
        lo, hi = c * n // _CHUNKS, (c + 1) * n // _CHUNKS
        if tally and bound:  # eoca.solve's pass
            for i in range(lo, hi):
                values, lv = etv[i], user_level[i]
                obj += _tally_user(values, lv, codes[i], fund_level, cnt, other)
                total += _best_user(values, level_price[min(lv, top)], floor)
        elif tally:
            for i in range(lo, hi):
                obj += _tally_user(etv[i], user_level[i], codes[i], fund_level, cnt, other)
        elif bound:
            for i in range(lo, hi):
                total += _best_user(etv[i], level_price[min(user_level[i], top)], floor)
        counts_c[c] = cnt
        objective_c[c] = obj
        bound_c[c] = total
        other_c[c] = other
    counts = np.zeros(k, dtype=np.int64)
    objective = 0.0
    users = 0.0
    unplaced = 0
    invalid = 0
    risk = 0
    for c in range(_CHUNKS):
        counts += counts_c[c]
        objective += objective_c[c]
        users += bound_c[c]
        unplaced += other_c[c, 0]
        invalid += other_c[c, 1]
        risk += other_c[c, 2]
    return counts, objective, unplaced, invalid, risk, users


def _tally_bound(etv, user_level, fund_level, codes, prices, holdout, tally, bound):
    """:func:`_tally_bound_rows` with every array typed writeable (one compiled variant per grid dtype)."""
    return _tally_bound_rows(*writeable(etv, user_level, fund_level, codes, prices), bool(holdout), bool(tally),
                             bool(bound))


_NO_PRICES = np.zeros(0)
_NO_CODES = np.zeros(0, dtype=np.int32)


def _tally(etv, user_level, fund_level, codes):
    """Counts per fund, ETV, unplaced, invalid and risk-breaking users of an allocation (one pass)."""
    return _tally_bound(etv, user_level, fund_level, codes, _NO_PRICES, True, True, False)[:5]


def _best_reduced(etv, user_level, fund_level, prices, holdout):
    """The users' part of the dual value for ``prices`` (one pass)."""
    return _tally_bound(etv, user_level, fund_level, _NO_CODES, prices, holdout, False, True)[5]


def _tally_block(etv, user_level, codes, fund_level):
    """:func:`_tally` on one chunk of users (argument order of :func:`eoca.distributed.blocks.map_user_blocks`)."""
    return _tally(etv, user_level, fund_level, codes)


def _tally_bound_block(etv, user_level, codes, fund_level, prices, holdout):
    """:func:`_tally` and :func:`_best_reduced` in one read of one chunk of a Dask grid."""
    return _tally_bound(etv, user_level, fund_level, codes, prices, holdout, True, True)


def _tally_masked_block(etv, user_level, codes, mask, fund_level, prices, holdout):
    """:func:`_tally_bound_block` for a grid with an eligibility mask (its chunk beside the grid's)."""
    return (*_tally(etv, user_level, fund_level, codes),
            _masked_best_block(etv, user_level, mask, fund_level, prices, holdout))


def _summed(parts: list, n_funds: int, scalars: int) -> tuple:
    """The per-chunk results of a tally pass (counts per fund, then ``scalars`` numbers) summed over the
    chunks."""
    counts = np.sum([p[0] for p in parts], axis=0, dtype=np.int64) if parts else np.zeros(n_funds, np.int64)
    return (counts, *(sum(p[i] for p in parts) for i in range(1, scalars + 1)))


def codes_from_assignment(problem: AllocationProblem, assignment: xr.DataArray) -> np.ndarray:
    """Turn a labelled assignment (fund id per user, missing for none) into fund codes (-1 for none)."""
    if not isinstance(assignment, xr.DataArray) or assignment.dims != ("user",):
        raise ValidationError("assignment", "expected a DataArray over ('user',) holding fund ids")
    assignment = assignment.reindex(user=problem.users)
    values = assignment.to_pandas()
    codes = problem.funds.get_indexer(values.to_numpy())
    missing = values.isna().to_numpy()
    codes = np.where(missing, -1, np.where(codes < 0, -2, codes))
    return codes.astype(np.int32)


def _codes(problem: AllocationProblem, codes: np.ndarray | xr.DataArray) -> np.ndarray:
    if isinstance(codes, xr.DataArray):
        codes = codes_from_assignment(problem, codes)
    c = problem.compile()
    codes = np.asarray(codes)
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValidationError("assignment", f"fund codes must be integers; got dtype {codes.dtype}")
    # codes outside int32 are invalid, never wrapped onto a fund: -2 (below) and int32's max (above)
    if codes.dtype != np.int32:
        codes = np.clip(codes, -2, np.iinfo(np.int32).max)
    codes = np.ascontiguousarray(codes, dtype=np.int32)
    if codes.shape != (c.n_users,):
        raise ValidationError("assignment", f"expected {c.n_users} entries, one per user; got shape {codes.shape}")
    return codes


_SIDE_ROWS = 1 << 20  # users whose side-rule coefficients are built at once


def _side_checks(c: CompiledProblem, codes: np.ndarray) -> tuple[int, pd.DataFrame | None]:
    """Users placed on a pair the eligibility mask forbids, and every side constraint recounted from its
    coefficients: activity, bounds, slack (distance to the nearer bound, negative when broken), ok."""
    k = c.n_funds
    placed = np.flatnonzero((codes >= 0) & (codes < k))
    ineligible = 0 if c.mask is None else int((~c.mask[placed, codes[placed]]).sum())
    if not c.constraints:
        return ineligible, None
    rows = []
    for con in c.constraints:
        activity = con.activity(codes)
        scale = 1e-9 * max(1.0, abs(activity), *(abs(b) for b in con.bounds if np.isfinite(b)))
        slack = min(activity - con.lo, con.hi - activity)
        rows.append({"activity": activity, "at_least": con.lo if np.isfinite(con.lo) else np.nan,
                     "at_most": con.hi if np.isfinite(con.hi) else np.nan, "slack": slack, "ok": bool(slack >= -scale)})
    table = pd.DataFrame(rows, index=pd.Index([con.name for con in c.constraints], name="constraint"))
    return ineligible, table


def _checks(problem: AllocationProblem, counts, objective, unplaced, invalid, risk, codes=None) -> Checks:
    c = problem.compile()
    miss = np.where(counts > c.demand_max, counts - c.demand_max, np.where(counts < c.demand_min, counts - c.demand_min, 0))
    if c.holdout:
        unplaced = 0
    ineligible, table = _side_checks(c, codes) if codes is not None and c.has_side_rules else (0, None)
    side_ok = ineligible == 0 and (table is None or bool(table["ok"].all()))
    return Checks(
        ok=bool(unplaced == 0 and invalid == 0 and risk == 0 and not miss.any() and side_ok),
        ineligible=ineligible,
        constraints=table,
        unplaced=int(unplaced),
        demand_misses=int(np.abs(miss).sum()),
        risk_violations=int(risk),
        invalid=int(invalid),
        counts=fund_vector(problem, counts, "users"),
        miss_per_fund=fund_vector(problem, miss.astype(np.int64), "miss"),
        objective=float(objective),
    )


def check_allocation(problem: AllocationProblem, codes: np.ndarray | xr.DataArray) -> Checks:
    """Check an allocation against every rule of ``problem``.

    Parameters
    ----------
    problem : AllocationProblem
    codes : ndarray of int, shape (n_users,), or DataArray over "user" of fund ids
        Fund index per user, -1 for no fund (other negative values count as invalid).

    Returns
    -------
    Checks
    """
    codes = _codes(problem, codes)
    c = problem.compile()
    if c.is_lazy:  # chunk by chunk on the Dask workers, summed here
        parts = map_user_blocks(_tally_block, c.etv, [c.user_level, codes], args=(c.fund_level,))
        counts, objective, unplaced, invalid, risk = _summed(parts, c.n_funds, 4)
    else:
        counts, objective, unplaced, invalid, risk = _tally(c.etv, c.user_level, c.fund_level, codes)
    return _checks(problem, counts, objective, unplaced, invalid, risk, codes)


def check_and_bound(problem: AllocationProblem, codes: np.ndarray, prices: np.ndarray,
                    multipliers: np.ndarray | None = None) -> tuple[Checks, float]:
    """:func:`check_allocation` and :func:`dual_bound` together, in one read of the grid (in memory, or one
    map-reduce pass over a Dask grid's chunks; a problem with side constraints takes the two apart).

    Parameters
    ----------
    problem : AllocationProblem
    codes : ndarray of int, shape (n_users,)
        Fund index per user, -1 for no fund.
    prices : ndarray of float, shape (n_funds,)
        Any finite fund prices.
    multipliers : ndarray of float, shape (n_constraints,), optional
        Multipliers of the side constraints (0 for each when None); see :func:`dual_bound`.

    Returns
    -------
    (Checks, float)
        The checker's report and the Lagrangian dual value of ``prices`` (an upper bound on the optimum).
    """
    c = problem.compile()
    if c.is_lazy and not c.constraints:  # one map-reduce over the grid's chunks for both
        codes = _codes(problem, codes)
        prices = _prices(c, prices)
        if c.mask is None:
            parts = map_user_blocks(_tally_bound_block, c.etv, [c.user_level, codes],
                                    args=(c.fund_level, prices, c.holdout))
        else:
            parts = map_user_blocks(_tally_masked_block, c.etv, [c.user_level, codes, c.mask],
                                    args=(c.fund_level, prices, c.holdout))
        counts, objective, unplaced, invalid, risk, users = _summed(parts, c.n_funds, 5)
        checks = _checks(problem, counts, objective, unplaced, invalid, risk, codes)
        return checks, float(users + _fund_term(c, prices))
    if c.is_lazy or c.has_side_rules:
        return check_allocation(problem, codes), dual_bound(c, prices, multipliers)
    codes = _codes(problem, codes)
    prices = _prices(c, prices)
    counts, objective, unplaced, invalid, risk, users = _tally_bound(
        c.etv, c.user_level, c.fund_level, codes, prices, c.holdout, True, True
    )
    return _checks(problem, counts, objective, unplaced, invalid, risk), float(users + _fund_term(c, prices))


def _prices(compiled: CompiledProblem, prices: np.ndarray) -> np.ndarray:
    prices = np.ascontiguousarray(prices, dtype=np.float64)
    if prices.shape != (compiled.n_funds,) or not np.isfinite(prices).all():
        raise ValidationError("prices", f"expected {compiled.n_funds} finite prices; got {prices!r}")
    return prices


def _fund_term(compiled: CompiledProblem, prices: np.ndarray) -> float:
    return float(np.where(prices >= 0, prices * compiled.demand_max, prices * compiled.demand_min).sum())


def _multipliers(compiled: CompiledProblem, multipliers: np.ndarray | None) -> np.ndarray:
    m = len(compiled.constraints)
    if multipliers is None:
        return np.zeros(m)
    mu = np.asarray(multipliers, dtype=np.float64)
    if mu.shape != (m,) or not np.isfinite(mu).all():
        raise ValidationError("multipliers", f"expected {m} finite multipliers, one per side constraint; got {mu!r}")
    return mu


@numba.njit(cache=True, parallel=True)
def _best_priced(etv, extra, use_extra, prices, user_level, fund_level, mask, use_mask, user_w, fund_wm, floor):  # pragma: no cover - compiled
    """Each user's best value of ``etv - prices - extra - sum_p user_w[p] * fund_wm[p]`` over the pairs the
    risk rule and the mask allow (at least ``floor``)."""
    n, k = etv.shape
    best = np.empty(n)
    for i in numba.prange(n):
        top = floor
        for j in range(k):
            if user_level[i] < fund_level[j] or (use_mask and not mask[i, j]):
                continue
            v = etv[i, j] - prices[j]
            if use_extra:
                v -= extra[i, j]
            for p in range(user_w.shape[0]):
                v -= user_w[p, i] * fund_wm[p, j]
            top = max(top, v)
        best[i] = top
    return best


def _side_users_block(etv, *items):
    """The users' part of the dual value with side rules on a block of users: each user's best reduced
    value over the pairs the risk rule and the mask allow. ``items``: the block's risk codes, its mask rows
    (if any), the user weights of the priced per-user constraints, the grids of the priced per-pair ones,
    then ``(fund_level, fund_wm, grid_mu, prices, floor, has_mask)`` (``fund_wm``: each per-user
    constraint's fund weights times its multiplier)."""
    vectors, (fund_level, fund_wm, grid_mu, prices, floor, has_mask) = items[:-6], items[-6:]
    user_level, rest = vectors[0], list(vectors[1:])
    mask = rest.pop(0) if has_mask else np.zeros((0, 0), dtype=np.bool_)
    n_w = fund_wm.shape[0]
    user_w = np.array(rest[:n_w], dtype=np.float64).reshape(n_w, len(etv))
    extra = np.zeros((0, 0))
    for m, grid in zip(grid_mu, rest[n_w:]):
        extra = m * grid if not extra.size else extra + m * grid
    best = _best_priced(*writeable(etv, np.ascontiguousarray(extra, dtype=np.float64), bool(len(grid_mu)), prices,
                                   user_level, fund_level, mask, has_mask, user_w, fund_wm, floor))
    return float(best.sum())


def _side_bound(compiled: CompiledProblem, prices: np.ndarray, mu: np.ndarray) -> float:
    """The dual value with side rules, block by block of users (chunk by chunk of a Dask grid): the
    coefficients of the constraints priced by ``mu``, a weight per user times one per fund read in place,
    a constraint with a grid of its own priced per block."""
    c = compiled
    priced = [(m, con) for m, con in zip(mu.tolist(), c.constraints) if m]
    by_user = [(m, con) for m, con in priced if con.grid is None]
    by_pair = [(m, con) for m, con in priced if con.grid is not None]
    fund_wm = np.array([m * con.fund_weight for m, con in by_user], dtype=np.float64).reshape(len(by_user), c.n_funds)
    vectors = [c.user_level] + ([c.mask] if c.mask is not None else [])
    vectors += [con.user_weight for _, con in by_user] + [con.grid for _, con in by_pair]
    args = (c.fund_level, fund_wm, np.array([m for m, _ in by_pair]), prices, 0.0 if c.holdout else -np.inf,
            c.mask is not None)
    if c.is_lazy:
        users = sum(map_user_blocks(_side_users_block, c.etv, vectors, args=args))
    else:
        users = 0.0
        for s in range(0, c.n_users, _SIDE_ROWS):
            rows = slice(s, min(s + _SIDE_ROWS, c.n_users))
            users += _side_users_block(np.asarray(c.etv[rows]), *[v[rows] for v in vectors], *args)
    side = sum((m * con.hi if m > 0 else m * con.lo) for m, con in priced)
    return users + float(side)


def dual_bound(compiled: CompiledProblem, prices: np.ndarray, multipliers: np.ndarray | None = None) -> float:
    """Lagrangian dual value for fund prices: an upper bound on the optimum for *any* prices.

    ``sum_i max(0 if holdout else -inf, max_{j eligible} etv[i, j] - prices[j])
    + sum_j (prices[j] * demand_max[j] if prices[j] >= 0 else prices[j] * demand_min[j])``.
    At optimal prices it equals the optimum (the problem is a transportation problem, so LP duality is
    exact).

    With side constraints ``lo_q <= sum_ij a_q[i, j] x[i, j] <= hi_q``, each has a multiplier ``mu_q``
    (>= 0 prices its maximum, <= 0 its minimum): ``etv[i, j]`` above becomes
    ``etv[i, j] - sum_q mu_q a_q[i, j]`` and ``sum_q (mu_q * hi_q if mu_q >= 0 else mu_q * lo_q)`` is
    added (+inf when a multiplier prices a bound the constraint does not have). "Eligible" is the risk
    rule and the eligibility mask together. With side constraints the bound is an upper bound on the LP
    relaxation, so it may stay above the best integer allocation.
    """
    prices = _prices(compiled, prices)
    if compiled.has_side_rules and compiled.is_lazy and not compiled.constraints:
        users = sum(map_user_blocks(_masked_best_block, compiled.etv, [compiled.user_level, compiled.mask],
                                    args=(compiled.fund_level, prices, compiled.holdout)))
        return float(users + _fund_term(compiled, prices))
    if compiled.has_side_rules:
        return _side_bound(compiled, prices, _multipliers(compiled, multipliers)) + _fund_term(compiled, prices)
    if compiled.is_lazy:  # a sum over users: one map-reduce over the grid's chunks
        users = sum(
            map_user_blocks(
                _best_reduced, compiled.etv, [compiled.user_level],
                args=(compiled.fund_level, prices, compiled.holdout),
            )
        )
    else:
        users = _best_reduced(compiled.etv, compiled.user_level, compiled.fund_level, prices, compiled.holdout)
    return float(users + _fund_term(compiled, prices))


def _masked_best_block(etv, user_level, mask, fund_level, prices, holdout):
    """The users' part of the dual value on one chunk of a Dask grid with an eligibility mask."""
    reduced = np.where((user_level[:, None] >= fund_level[None, :]) & mask, etv - prices[None, :], -np.inf)
    best = reduced.max(axis=1, initial=-np.inf)
    return float((np.maximum(best, 0.0) if holdout else best).sum())


def recount(result: Result) -> Checks:
    """Re-run the checker on a result (what :func:`eoca.testing.assert_valid_result` relies on)."""
    return check_allocation(result.problem, result.codes)
