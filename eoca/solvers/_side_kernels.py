"""Compiled passes of the exact method with side constraints: every user's best and second-best option
under fund prices and constraint multipliers, in one read of the grid.

The reduced value of user i on fund j is ``etv[i, j] - lam[j] - sum_q mu_q a_q[i, j]`` where the pair is
allowed (risk rule and mask), ``-inf`` where not, and 0 for "no fund" with holdout. A constraint's
coefficients are either a weight per user times a weight per fund (quotas, per-user budgets) or a grid of
their own (per-pair budgets); both are read in place, never materialised per block.
"""

from __future__ import annotations

import numba
import numpy as np

from eoca._arrays import mutable_view, writeable

__all__ = ["reduced_choices", "coefficient_sizes", "stacked_user_weights"]

_SLOTS = 2  # per-pair constraints read in place; more than this are stacked into one array per solve


@numba.njit(cache=True, parallel=True)
def _choices_kernel(etv, lam, user_level, fund_level, mask, use_mask, user_w, fund_wm, grid0, mu0, grid1, mu1,
                    stacked, stacked_mu, holdout, fixed, use_fixed, best, gap, short):  # pragma: no cover - compiled
    n, k = etv.shape
    n_user_w = user_w.shape[0]
    use0, use1 = grid0.shape[0] == n, grid1.shape[0] == n
    n_stacked = stacked.shape[0]
    for i in numba.prange(n):
        b1 = -np.inf
        b2 = -np.inf
        arg = -1
        own = -np.inf
        f = fixed[i] if use_fixed else -2
        for j in range(k):
            if user_level[i] < fund_level[j] or (use_mask and not mask[i, j]):
                r = -np.inf
            else:
                r = etv[i, j] - lam[j]
                for q in range(n_user_w):
                    r -= user_w[q, i] * fund_wm[q, j]
                if use0:
                    r -= mu0 * grid0[i, j]
                if use1:
                    r -= mu1 * grid1[i, j]
                for g in range(n_stacked):
                    r -= stacked_mu[g] * stacked[g, i, j]
            if j == f:
                own = r
            if r > b1:
                b2 = b1
                b1 = r
                arg = j
            elif r > b2:
                b2 = r
        if holdout:
            if f == -1:
                own = 0.0
            if 0.0 > b1:
                b2 = b1
                b1 = 0.0
                arg = -1
            elif 0.0 > b2:
                b2 = 0.0
        elif arg < 0:
            arg = 0  # no option allowed at all: like argmax over -inf, the first fund
        best[i] = arg
        gap[i] = b1 - b2
        short[i] = b1 - own if use_fixed else 0.0


def stacked_user_weights(constraints, n: int) -> np.ndarray:
    """The per-user weights of the constraints that have them (in order) as one float64 (rules, n) array:
    the array they are rows of where the declaration stacked them (no copy), else a stacked copy."""
    rows = [con.user_weight for con in constraints if con.grid is None]
    base = rows[0].base if rows else None
    if (isinstance(base, np.ndarray) and base.dtype == np.float64 and base.flags.c_contiguous
            and base.shape == (len(rows), n)
            and all(r.base is base and r.ctypes.data == base[p].ctypes.data for p, r in enumerate(rows))):
        return mutable_view(base)
    return np.array(rows, dtype=np.float64).reshape(len(rows), n)


def reduced_choices(c, etv: np.ndarray, lam: np.ndarray, mu: np.ndarray, fixed: np.ndarray | None):
    """Per user, under fund prices ``lam`` and multipliers ``mu``: the best option (fund, or -1 for none
    with holdout; the first on ties), the gap to the second best and, for ``fixed`` codes, how far each
    is below the best. ``etv`` is the float64 grid to price (``c``'s, or a penalised copy of it)."""
    n, k = etv.shape
    # every per-user rule's weights as the declaration stacked them (a rule not priced weighs 0 on each fund)
    fund_rows, grids, grid_mu = [], [], []
    for q, con in enumerate(c.constraints):
        if con.grid is None:
            fund_rows.append(mu[q] * con.fund_weight)
        elif mu[q]:
            grids.append(np.ascontiguousarray(con.grid, dtype=np.float64))
            grid_mu.append(mu[q])
    user_w = stacked_user_weights(c.constraints, n)
    fund_wm = np.ascontiguousarray(np.array(fund_rows, dtype=np.float64).reshape(len(fund_rows), k))
    mask = c.mask if c.mask is not None else np.zeros((0, 0), dtype=np.bool_)
    use_fixed = fixed is not None
    fixed = np.ascontiguousarray(fixed, dtype=np.int32) if use_fixed else np.zeros(0, dtype=np.int32)
    best = np.empty(n, dtype=np.int32)
    gap = np.empty(n)
    short = np.empty(n)
    none = np.zeros((0, k))
    slots = grids[:_SLOTS] + [none] * (_SLOTS - len(grids[:_SLOTS]))
    slot_mu = grid_mu[:_SLOTS] + [0.0] * (_SLOTS - len(grid_mu[:_SLOTS]))
    stacked = np.stack(grids[_SLOTS:]) if len(grids) > _SLOTS else np.zeros((0, 0, k))
    if not (etv.dtype in (np.float32, np.float64) and etv.flags.c_contiguous):
        etv = np.ascontiguousarray(etv, dtype=np.float64)  # a float32 or float64 grid is read as it is
    _choices_kernel(*writeable(etv, np.asarray(lam, dtype=np.float64),
                               c.user_level, c.fund_level, mask, c.mask is not None, user_w, fund_wm, slots[0],
                               slot_mu[0], slots[1], slot_mu[1], stacked, np.array(grid_mu[_SLOTS:], dtype=np.float64),
                               bool(c.holdout), fixed, use_fixed, best, gap, short))
    return best, gap, short


@numba.njit(cache=True)
def _sizes_kernel(a):  # pragma: no cover - compiled
    smallest = np.inf
    total = 0.0
    count = 0
    for v in a:
        v = abs(v)
        if v != 0.0:
            smallest = min(smallest, v)
            total += v
            count += 1
    return smallest, total, count


def coefficient_sizes(con) -> tuple[float, float]:
    """The smallest and the mean size of a constraint's non-zero coefficients ((1, 1) when it has none),
    in one pass over its weights."""
    def sizes(a):
        smallest, total, count = _sizes_kernel(np.ascontiguousarray(a, dtype=np.float64).reshape(-1))
        return (smallest, total / count) if count else (1.0, 1.0)

    if con.grid is not None:
        return sizes(con.grid)
    (u_min, u_mean), (f_min, f_mean) = sizes(con.user_weight), sizes(con.fund_weight)
    return u_min * f_min, u_mean * f_mean
