"""Safety net of the paper's heuristic: a small exact re-allocation that makes Algorithm 1's allocation
deliverable.

Algorithm 1 as printed can place users above their risk tolerance and, with demand ranges, strand users.
The repair frees those users, frees as few of the well-placed users as the risk levels require (the ones
that give up the least ETV by moving to a riskier fund they tolerate), and re-allocates the freed users
exactly (the ``exact`` solver's kernel) against the capacity the others leave over. Everyone else keeps
Algorithm 1's choice.

Which well-placed users must be freed follows from the level-wise feasibility conditions of the remaining
problem: for every fund risk level L, the freed users whose tolerance reaches L must cover the unmet
minimum demand of the funds at L and above, and (unless holdout) the freed users below L must fit into the
room left in the funds below L. Freeing a user of tolerance >= L who sits in a fund below L adds one to
the first side and one place to the second, so the shortfall at L says how many such users to free.
"""

from __future__ import annotations

import numba
import numpy as np

from eoca.problem import level_counts

__all__ = ["repair_allocation"]

_SLACK = 2  # free this many times the shortfall (plus a few): the exact re-allocation then has a choice


@numba.njit(cache=True, parallel=True)
def _move_up_loss(etv, user_level, fund_level, codes, free, level):
    """ETV a user gives up by leaving its place for its best fund at risk >= ``level`` (+inf for a user
    who cannot help there: already freed, tolerance below ``level``, or already at a fund at that level).
    A held-out user (code -1) gives up nothing."""
    n, k = etv.shape
    out = np.full(n, np.inf)
    for i in numba.prange(n):
        lv = user_level[i]
        if free[i] or lv < level:
            continue
        c = codes[i]
        cur = 0.0
        if c >= 0:
            if fund_level[c] >= level:
                continue
            cur = etv[i, c]
        best = -np.inf
        for j in range(k):
            if fund_level[j] >= level and fund_level[j] <= lv and etv[i, j] > best:
                best = etv[i, j]
        if best > -np.inf:
            out[i] = cur - best
    return out


class _Tally:
    """Users kept per fund and freed users per risk level, updated as users are freed."""

    def __init__(self, codes, free, user_level, n_levels, k):
        self.codes, self.user_level = codes, user_level
        kept = codes[~free]
        self.kept = np.bincount(kept[kept >= 0], minlength=k).astype(np.int64)
        self.freed = np.bincount(user_level[free], minlength=n_levels).astype(np.int64)

    def free(self, idx):
        c = self.codes[idx]
        self.kept -= np.bincount(c[c >= 0], minlength=len(self.kept))
        self.freed += np.bincount(self.user_level[idx], minlength=len(self.freed))

    def left_over(self, demand_min, demand_max):
        """Demands left for the freed users once the others keep their places."""
        return np.maximum(demand_min - self.kept, 0), demand_max - self.kept

    def shortfall(self, fund_level, demand_min, demand_max, holdout):
        """Freed users missing at each risk level (see the module docstring)."""
        c = level_counts(self.freed, fund_level, *self.left_over(demand_min, demand_max))
        need = c["min_ge"] - c["users_ge"]
        if not holdout:
            need = np.maximum(need, c["users_lt"] - c["max_lt"])
        return np.maximum(need, 0)


def _cheapest(loss, m):
    """Indices of the m smallest finite entries of ``loss``, ties to the lower index (deterministic)."""
    idx = np.flatnonzero(np.isfinite(loss))
    if len(idx) <= m:
        return idx
    vals = loss[idx]
    cut = np.partition(vals, m - 1)[m - 1]
    below = idx[vals < cut]
    at = idx[vals == cut][: m - len(below)]
    return np.concatenate([below, at])


def repair_allocation(compiled, codes, forbidden=None):
    """Make ``codes`` (Algorithm 1's allocation, -1 = no fund) meet every rule, moving as few users as the
    risk levels require.

    ``forbidden``: the pairs an eligibility mask forbids (bool, users x funds; ``compiled`` then carries
    them as very low values). Users on one are freed too, and when the freed users cannot be placed
    without one, everyone is re-allocated.

    Returns
    -------
    codes : ndarray of int32
        The repaired allocation (the input is not modified).
    stats : dict
        ``repair_moved`` (users whose fund the repair changed, stranded users it placed included),
        ``repair_freed`` (users re-allocated), ``risk_breaches`` and ``stranded`` (what Algorithm 1 left).

    Raises
    ------
    ValueError
        If the problem itself is infeasible (the caller diagnoses it first).
    """
    from eoca.solvers._transport import solve_transport

    etv, user_level, fund_level = compiled.etv, compiled.user_level, compiled.fund_level
    demand_min = np.asarray(compiled.demand_min, dtype=np.int64)
    demand_max = np.asarray(compiled.demand_max, dtype=np.int64)
    holdout = bool(compiled.holdout)
    codes = np.asarray(codes, dtype=np.int32)
    placed = codes >= 0
    breach = np.zeros(len(codes), dtype=bool)
    breach[placed] = user_level[placed] < fund_level[codes[placed]]
    stranded = ~placed if not holdout else np.zeros(len(codes), dtype=bool)
    free = breach | stranded
    if forbidden is not None:
        free[placed] |= forbidden[np.flatnonzero(placed), codes[placed]]
    # a fund that takes nobody is nobody's way up
    open_level = np.where(demand_max > 0, fund_level, np.iinfo(np.int32).max).astype(fund_level.dtype)
    tally = _Tally(codes, free, user_level, compiled.n_levels, len(demand_min))
    for _round in range(4):
        short_any = False
        for level in range(compiled.n_levels - 1, -1, -1):  # highest first: freeing there helps below too
            short = int(tally.shortfall(fund_level, demand_min, demand_max, holdout)[level])
            if short:
                short_any = True
                loss = _move_up_loss(etv, user_level, open_level, codes, free, level)
                pick = _cheapest(loss, _SLACK * short + 16)
                free[pick] = True
                tally.free(pick)
        if not short_any:
            break
    stats = {"risk_breaches": int(breach.sum()), "stranded": int(stranded.sum())}
    out = codes.copy()
    if not free.any():
        return out, dict(stats, repair_moved=0, repair_freed=0)
    dmin_left, dmax_left = tally.left_over(demand_min, demand_max)
    idx = np.flatnonzero(free)
    try:
        sol = solve_transport(etv[idx], user_level[idx], fund_level, dmin_left, dmax_left, holdout)
    except ValueError:
        # the levels' conditions hold but the freed users still cannot be placed (a fund whose room is
        # taken entirely by kept users of the wrong levels): re-allocate everyone
        idx = np.arange(len(codes))
        sol = solve_transport(etv, user_level, fund_level, demand_min, demand_max, holdout)
    if forbidden is not None and len(idx) < len(codes) and _uses(forbidden, idx, sol.assignment):
        # the kept users leave the freed ones only forbidden places: re-allocate everyone
        idx = np.arange(len(codes))
        sol = solve_transport(etv, user_level, fund_level, demand_min, demand_max, holdout)
    out[idx] = sol.assignment
    moved = int((out[idx] != codes[idx]).sum())
    return out, dict(stats, repair_moved=moved, repair_freed=len(idx))


def _uses(forbidden, idx, assignment) -> bool:
    placed = assignment >= 0
    return bool(forbidden[idx[placed], assignment[placed]].any())
