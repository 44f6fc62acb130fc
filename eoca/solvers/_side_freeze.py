"""Users frozen at their best option while the smoothed dual's Newton steps read only the others
(:mod:`eoca.solvers._side_dual`): what the frozen users take, and whether a step keeps every one of them at
its option.
"""

from __future__ import annotations

import numpy as np

from eoca.problem import CompiledProblem
from eoca.solvers import _tuning

__all__ = ["Freeze", "quantile"]


def quantile(values: np.ndarray, share: float) -> float:
    at = int(share * (len(values) - 1))
    return float(np.partition(values, at)[at])


class Freeze:
    """Users frozen at their best option under ``y`` (those whose gap is at least ``margin``): what they
    take (``taken``: fund counts, then constraint activities), the others (``rows``), and ``inside(point)``:
    whether every frozen user is still at its option with the others weighing nothing at ``point``."""

    def __init__(self, c: CompiledProblem, access, y: np.ndarray, best: np.ndarray | None, gap: np.ndarray | None,
                 margin: float, tau: float, ranges: np.ndarray):
        n, k = c.n_users, c.n_funds
        self.anchor, self.margin, self.tau, self.k, self.holdout = y, margin, tau, k, c.holdout
        self.wide = 4.0 * margin
        self.ranges = ranges
        if not np.isfinite(margin):  # every user free (no choices needed): the steps read them where they are
            self.free = np.ones(n, dtype=bool)
            self.rows = np.arange(n)
            self.held = np.full(n, -1, dtype=np.int32)
            self.taken = np.zeros(k + len(c.constraints))
            self.value = 0.0
            self.near_gap, self._near, self._near_ranges = np.zeros(0), None, np.zeros((0, len(c.constraints)))
            return
        free = gap < margin
        if free.mean() > _tuning.DUAL_GATHER:
            free[:] = True  # the steps read every user where they are (no gathering of most of a Dask grid)
        if free.sum() < min(n, _tuning.DUAL_MIN_ACTIVE):
            free[np.argpartition(gap, min(n, _tuning.DUAL_MIN_ACTIVE) - 1)[:_tuning.DUAL_MIN_ACTIVE]] = True
        self.rows = np.flatnonzero(free)
        self.held = np.where(free, -1, best)
        self.free = free
        self.taken = np.r_[np.bincount(self.held[self.held >= 0], minlength=k).astype(np.float64),
                           [con.activity(self.held) for con in c.constraints]]
        self.value = access.value(self.held)
        # the frozen users nearest to the margin are checked one by one (how far each constraint can move
        # one of their options against another); the rest against the largest such move of any user
        self._near = np.flatnonzero(~free & (gap < self.wide))
        self.near_gap = gap[self._near]
        self._c, self._near_ranges = c, None  # read when a step first needs them (often none does)

    @property
    def near_ranges(self) -> np.ndarray:
        if self._near_ranges is None:
            self._near_ranges = _user_ranges(self._c, self._near)
        return self._near_ranges

    @np.errstate(all="ignore")
    def inside(self, point: np.ndarray) -> bool:
        k = self.k
        shift = point[:k] - self.anchor[:k]
        spread = float(max(shift.max(), 0.0 if self.holdout else -np.inf) - min(shift.min(), 0.0 if self.holdout else np.inf))
        moves = np.abs(point[k:] - self.anchor[k:])
        room = 30.0 * self.tau + spread  # a shift shared by all prices moves no choice
        if room + float(moves @ self.ranges) <= self.margin:
            return True
        if room + float(moves @ self.ranges) > self.wide:
            return False
        return bool(np.all(room + self.near_ranges @ moves <= self.near_gap))

    def kept(self, best: np.ndarray) -> bool:
        frozen = ~self.free
        return bool(np.array_equal(best[frozen], self.held[frozen]))


def _user_ranges(c: CompiledProblem, users: np.ndarray) -> np.ndarray:
    """Per user of ``users`` and constraint: the largest difference between two of the user's coefficients
    (0 for "no fund" counted with holdout), over every fund (at least the pairs the user may take)."""
    cols = []
    for con in c.constraints:
        if con.grid is not None:
            rows = con.grid[users]
            top, low = rows.max(axis=1, initial=-np.inf), rows.min(axis=1, initial=np.inf)
            if c.holdout:
                top, low = np.maximum(top, 0.0), np.minimum(low, 0.0)
            cols.append(top - low)
        else:
            f = con.fund_weight
            spread = float(max(f.max(), 0.0 if c.holdout else -np.inf) - min(f.min(), 0.0 if c.holdout else np.inf))
            cols.append(np.abs(con.user_weight[users]) * spread)
    return np.array(cols).reshape(len(c.constraints), len(users)).T.copy()
