"""Side constraints an operations team declares on top of demands and risk: quotas and linear budgets.

A side constraint bounds one linear function of the allocation, ``activity = sum_ij a[i, j] * x[i, j]``
(``x[i, j] = 1`` iff user i is shown fund j):

- :class:`Quota`: ``a[i, j] = 1`` for the users of a group and the funds named (default: all), so the
  activity is how many of those users receive one of those funds;
- :class:`Linear`: ``a[i, j] = weights[i, j]`` over (user, fund), or ``weights[i]`` for the funds named
  (a commission per user, a budget per fund).

Declared constraints are validated when the :class:`~eoca.problem.AllocationProblem` holding them is
built and compiled to :class:`CompiledConstraint` (arrays in the grid's order); solvers and the checker
only ever see the compiled form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numba
import numpy as np
import pandas as pd
import xarray as xr

from eoca._arrays import writeable
from eoca.errors import ConstraintError, show_values

__all__ = ["Quota", "Linear", "CompiledConstraint", "compile_constraints", "compile_mask"]

USER = "user"  # the grid's dimensions (eoca.problem names them the same; this room imports only errors)
FUND = "fund"
DIMS = (USER, FUND)


def _as_series(values: Any, field: str) -> pd.Series:
    if isinstance(values, pd.Series):
        return values
    if isinstance(values, xr.DataArray):
        if values.dims != (USER,) or USER not in values.coords:
            raise ConstraintError(field, f"expected a DataArray over ('user',) with a 'user' coordinate; got dims "
                                         f"{tuple(values.dims)}")
        data = np.asarray(values.values)
        return pd.Series(data, index=values.get_index(USER), dtype=data.dtype, copy=False)
    raise ConstraintError(field, f"expected a pandas Series or a DataArray over 'user'; got {type(values).__name__}")


@dataclass(frozen=True, eq=False)
class CompiledConstraint:
    """A side constraint in array form: ``lo <= sum_i a[i, codes[i]] <= hi``.

    The coefficients are either a full grid (``grid``, float64 (n_users, n_funds)) or the product of a
    weight per user and a weight per fund (``user_weight`` (n_users,), ``fund_weight`` (n_funds,)), which
    is how a quota (0/1 by user and by fund) and a per-user budget are stored without a grid.
    ``lo`` is ``-inf`` and ``hi`` ``+inf`` where the constraint has no such bound.
    """

    name: str
    kind: str  # "quota" or "linear"
    lo: float
    hi: float
    fund_weight: np.ndarray
    user_weight: np.ndarray | None = None
    grid: np.ndarray | None = None

    def coefficients(self, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """``a[rows, :]`` as a float64 (len(rows), n_funds) array (built for these rows only)."""
        if self.grid is not None:
            return self.grid[rows]
        return self.user_weight[rows, None] * self.fund_weight[None, :]

    def activity(self, codes: np.ndarray) -> float:
        """``sum_i a[i, codes[i]]`` over the users with a fund (``codes`` in ``0..n_funds-1``; others add 0)."""
        k = len(self.fund_weight)
        weights = self.grid if self.grid is not None else self.user_weight
        if isinstance(weights, np.ndarray) and isinstance(codes, np.ndarray) and codes.shape == weights.shape[:1] \
                and codes.dtype.kind in "iu":  # in memory: one compiled pass (the rules are recounted often)
            if codes.dtype != np.int32:  # one compiled type; a code beyond int32 names no fund either way
                codes = np.clip(codes, -1, np.iinfo(np.int32).max)
            codes = np.ascontiguousarray(codes, dtype=np.int32)
            grid = np.zeros((0, k)) if self.grid is None else np.ascontiguousarray(self.grid, dtype=np.float64)
            user = np.zeros(0) if self.user_weight is None else np.ascontiguousarray(self.user_weight, dtype=np.float64)
            return float(_activity(*writeable(grid, user, np.ascontiguousarray(self.fund_weight, dtype=np.float64),
                                              codes)))
        placed = np.flatnonzero((codes >= 0) & (codes < k))
        if self.grid is not None:
            return float(self.grid[placed, codes[placed]].sum())
        return float(np.dot(self.user_weight[placed], self.fund_weight[codes[placed]]))

    @property
    def bounds(self) -> tuple[float, float]:
        return self.lo, self.hi


_CHUNKS = 64  # a fixed split of the users: a sum never depends on the number of threads


@numba.njit(cache=True, nogil=True)
def _in_order(parts):  # pragma: no cover - compiled
    # a plain loop: under parallel=True numba would split an array's sum by thread
    total = 0.0
    for part in parts:
        total += part
    return total


@numba.njit(cache=True, nogil=True, parallel=True)
def _activity(grid, user_weight, fund_weight, codes):  # pragma: no cover - compiled
    """``sum_i a[i, codes[i]]`` over codes naming a fund: ``a`` is ``grid`` where it has a row per user, else
    ``user_weight[i] * fund_weight[j]``."""
    n, k = codes.shape[0], fund_weight.shape[0]
    per_pair = grid.shape[0] == n
    parts = np.zeros(_CHUNKS)
    for c in numba.prange(_CHUNKS):
        total = 0.0
        for i in range(c * n // _CHUNKS, (c + 1) * n // _CHUNKS):
            j = codes[i]
            if j >= 0 and j < k:
                total += grid[i, j] if per_pair else user_weight[i] * fund_weight[j]
        parts[c] = total
    return _in_order(parts)


def _bound(value: Any, field: str, what: str, *, count: bool) -> float | None:
    if value is None:
        return None
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)
    ok = ok and math.isfinite(float(value)) and (not count or float(value) >= 0)
    if not ok:
        kind = "a non-negative number of users" if count else "a finite number"
        raise ConstraintError(field, f"{what} must be {kind} or None; got {value!r}")
    return float(value)


def _bounds(c: Quota | Linear, field: str, count: bool) -> tuple[float, float]:
    lo = _bound(c.at_least, field, "at_least", count=count)
    hi = _bound(c.at_most, field, "at_most", count=count)
    if lo is None and hi is None:
        raise ConstraintError(field, "needs at_least, at_most or both; got neither")
    if lo is not None and hi is not None and lo > hi:
        raise ConstraintError(field, f"at_least ({c.at_least!r}) exceeds at_most ({c.at_most!r})")
    return (-math.inf if lo is None else lo), (math.inf if hi is None else hi)


def _fund_weight(funds: Any, fund_ids: pd.Index, field: str) -> np.ndarray:
    """1.0 for the funds named (every fund when ``funds`` is None), 0.0 for the others."""
    if funds is None:
        return np.ones(len(fund_ids))
    named = [funds] if isinstance(funds, str | int | np.integer) else list(funds)
    if not named:
        raise ConstraintError(field, "funds is empty; name at least one fund or pass None for all funds")
    pos = fund_ids.get_indexer(pd.Index(named)) if pd.Index(named).is_unique else None
    if pos is None:
        raise ConstraintError(field, f"funds named twice: {show_values(pd.Index(named)[pd.Index(named).duplicated()])}")
    if (pos < 0).any():
        unknown = [f for f, p in zip(named, pos) if p < 0]
        raise ConstraintError(field, f"unknown fund id(s) {show_values(unknown)}; funds are {show_values(fund_ids, 10)}")
    weight = np.zeros(len(fund_ids))
    weight[pos] = 1.0
    return weight


def _user_positions(users: Any, user_ids: pd.Index, field: str) -> np.ndarray:
    """Positions of a group of users given as ids (a list, array or Index)."""
    ids = pd.Index(users)
    if not ids.is_unique:
        raise ConstraintError(field, f"users named twice: {show_values(ids[ids.duplicated()].unique())}")
    pos = user_ids.get_indexer(ids)
    if (pos < 0).any():
        raise ConstraintError(field, f"{int((pos < 0).sum())} user id(s) not in the ETV grid: {show_values(ids[pos < 0])}")
    return pos


def _aligned_user_values(values: Any, user_ids: pd.Index, field: str) -> np.ndarray:
    """A Series or DataArray over "user" as an array in the grid's user order; every user must be given."""
    series = _as_series(values, field)
    index = series.index
    if index is user_ids or (len(index) == len(user_ids) and index.equals(user_ids)):
        return series.to_numpy()
    if not index.is_unique:
        raise ConstraintError(field, f"user ids must be unique; duplicated: {show_values(index[index.duplicated()].unique())}")
    pos = user_ids.get_indexer(index)
    if (pos < 0).any():
        raise ConstraintError(field, f"{int((pos < 0).sum())} user id(s) not in the ETV grid: {show_values(index[pos < 0])}")
    if len(index) != len(user_ids):
        given = np.zeros(len(user_ids), dtype=bool)
        given[pos] = True
        raise ConstraintError(field, f"missing for {int((~given).sum())} user(s) of the ETV grid: {show_values(user_ids[~given])}")
    data = series.to_numpy()
    out = np.empty(len(user_ids), dtype=data.dtype)
    out[pos] = data
    return out


def aligned_grid(values: Any, user_ids: pd.Index, fund_ids: pd.Index, field: str) -> np.ndarray:
    """A DataArray over ("user", "fund") or a DataFrame (users as rows, funds as columns) as an array in
    the grid's order; every (user, fund) pair must be given."""
    if isinstance(values, pd.DataFrame):
        rows, cols, data = values.index, values.columns, values.to_numpy()
    elif isinstance(values, xr.DataArray):
        if set(values.dims) != set(DIMS) or values.ndim != 2:
            raise ConstraintError(field, f"expected dims {DIMS}; got {tuple(values.dims)}")
        values = values.transpose(*DIMS)
        if USER not in values.coords or FUND not in values.coords:
            raise ConstraintError(field, f"needs {USER!r} and {FUND!r} coordinates holding the ids")
        rows, cols, data = values.get_index(USER), values.get_index(FUND), np.asarray(values.values)
    else:
        raise ConstraintError(
            field, f"expected a DataArray over {DIMS} or a DataFrame (users as rows, funds as columns); "
                   f"got {type(values).__name__}")
    out = data
    for axis, (given, ids, dim) in enumerate(((rows, user_ids, USER), (cols, fund_ids, FUND))):
        if given is ids or (len(given) == len(ids) and given.equals(ids)):
            continue
        if not given.is_unique:
            raise ConstraintError(field, f"{dim} ids must be unique; duplicated: {show_values(given[given.duplicated()].unique())}")
        pos = given.get_indexer(ids)
        if (pos < 0).any():
            raise ConstraintError(field, f"missing for {int((pos < 0).sum())} {dim}(s) of the ETV grid: {show_values(ids[pos < 0])}")
        if len(given) != len(ids):
            extra = given[ids.get_indexer(given) < 0]
            raise ConstraintError(field, f"{len(extra)} {dim} id(s) not in the ETV grid: {show_values(extra)}")
        out = np.take(out, pos, axis=axis)
    return out


@dataclass(frozen=True, eq=False)
class Quota:
    """At least / at most so many users of a group receive one of the funds named.

    Parameters
    ----------
    users : boolean Series or DataArray over "user", or a list / Index of user ids
        The group: ``True`` (or listed) users count. A boolean Series must cover every user of the grid.
    funds : fund id or list of fund ids, optional
        The funds that count (default: every fund, i.e. how many of the group are placed at all).
    at_least, at_most : number of users, optional
        The bounds; at least one of them.
    name : str
        Names the constraint in ``result.constraints``, the checker's report and errors; unique per problem.

    Example: ``eoca.Quota(users=is_new, funds=["A", "B"], at_least=30_000, name="new users in A or B")``.
    """

    users: Any
    funds: Any = None
    at_least: float | None = None
    at_most: float | None = None
    name: str = ""

    kind = "quota"

    def _compile(self, user_ids: pd.Index, fund_ids: pd.Index, field: str) -> CompiledConstraint:
        lo, hi = _bounds(self, field, count=True)
        fund_weight = _fund_weight(self.funds, fund_ids, field)
        if isinstance(self.users, pd.Series | xr.DataArray):
            member = _aligned_user_values(self.users, user_ids, field + ".users")
            if member.dtype != np.bool_:
                raise ConstraintError(field, f"users must be boolean (True = in the group); got dtype {member.dtype}")
            user_weight = member.astype(np.float64)
        elif isinstance(self.users, str) or not isinstance(self.users, Sequence | np.ndarray | pd.Index):
            raise ConstraintError(
                field, f"users must be a boolean Series/DataArray over 'user' or a list of user ids; got "
                       f"{type(self.users).__name__}")
        else:
            user_weight = np.zeros(len(user_ids))
            user_weight[_user_positions(self.users, user_ids, field)] = 1.0
        return CompiledConstraint(self.name, self.kind, lo, hi, _readonly(fund_weight), _readonly(user_weight))


@dataclass(frozen=True, eq=False)
class Linear:
    """A budget or target on a weighted sum: ``at_least <= sum_ij weights[i, j] * x[i, j] <= at_most``.

    Parameters
    ----------
    weights : DataArray over ("user", "fund"), DataFrame (users x funds), or Series / DataArray over "user"
        The weight of each (user, fund) pair (e.g. the commission paid when the user is shown the fund);
        a weight per user applies to each of ``funds``. Finite; every pair (or user) of the grid given.
    funds : fund id or list of fund ids, optional
        With per-user weights only: the funds they apply to (default: every fund).
    at_least, at_most : float, optional
        The bounds; at least one of them.
    name : str
        Unique per problem.

    Example: ``eoca.Linear(weights=commission, at_most=1.2e6, name="commission budget")``.
    """

    weights: Any
    funds: Any = None
    at_least: float | None = None
    at_most: float | None = None
    name: str = ""

    kind = "linear"

    def _compile(self, user_ids: pd.Index, fund_ids: pd.Index, field: str) -> CompiledConstraint:
        lo, hi = _bounds(self, field, count=False)
        w = self.weights
        per_pair = isinstance(w, pd.DataFrame) or (isinstance(w, xr.DataArray) and w.ndim == 2)
        if per_pair:
            if self.funds is not None:
                raise ConstraintError(field, "funds applies to weights per user; weights per (user, fund) "
                                             "already say each fund's weight")
            values = aligned_grid(w, user_ids, fund_ids, field + ".weights")
        else:
            values = _aligned_user_values(w, user_ids, field + ".weights")
        if values.dtype.kind not in "fiu" or values.dtype.kind == "b":
            raise ConstraintError(field, f"weights must be numbers; got dtype {values.dtype}")
        values = np.ascontiguousarray(values, dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            where = np.argwhere(bad)[:5]
            named = [(_id(user_ids, r[0]), _id(fund_ids, r[1])) if per_pair else _id(user_ids, r[0]) for r in where]
            raise ConstraintError(field, f"weights must be finite; {int(bad.sum())} NaN or infinite at "
                                         f"{'(user, fund)' if per_pair else 'user'} {show_values(named)}")
        if per_pair:
            return CompiledConstraint(self.name, self.kind, lo, hi, _readonly(np.ones(len(fund_ids))),
                                      grid=_readonly(values))
        return CompiledConstraint(self.name, self.kind, lo, hi, _readonly(_fund_weight(self.funds, fund_ids, field)),
                                  _readonly(values))


def _id(index: pd.Index, pos: int) -> Any:
    v = index[pos]
    return v.item() if isinstance(v, np.generic) else v


def _readonly(a: np.ndarray) -> np.ndarray:
    v = a.view()  # a view: the caller's own array stays writeable
    v.flags.writeable = False
    return v


def compile_mask(eligible: Any, user_ids: pd.Index, fund_ids: pd.Index) -> np.ndarray | None:
    """The eligibility mask as a read-only bool (n_users, n_funds) array in the grid's order (None: no mask).
    ``False`` means the pair may never be shown; a mask that allows every pair is dropped (None)."""
    if eligible is None:
        return None
    mask = aligned_grid(eligible, user_ids, fund_ids, "eligible")
    if mask.dtype != np.bool_:
        raise ConstraintError("eligible", f"must be boolean (False = never show this pair); got dtype {mask.dtype}")
    if mask.all():
        return None
    return _readonly(np.ascontiguousarray(mask))


def compile_constraints(constraints: Any, user_ids: pd.Index, fund_ids: pd.Index) -> tuple[CompiledConstraint, ...]:
    """Validate declared constraints (a sequence of :class:`Quota` / :class:`Linear`) and compile them in
    the grid's order. Errors name the constraint: ``constraints['name']``."""
    if constraints is None:
        return ()
    if isinstance(constraints, Quota | Linear):
        constraints = [constraints]
    if isinstance(constraints, str) or not isinstance(constraints, Sequence):
        raise ConstraintError("constraints", f"expected a list of eoca.Quota / eoca.Linear; got {type(constraints).__name__}")
    out, seen = [], set()
    for pos, c in enumerate(constraints):
        if not isinstance(c, Quota | Linear):
            raise ConstraintError(f"constraints[{pos}]", f"expected an eoca.Quota or eoca.Linear; got {type(c).__name__}")
        if not isinstance(c.name, str) or not c.name.strip():
            raise ConstraintError(f"constraints[{pos}]", f"needs a name (a non-empty string); got {c.name!r}")
        if c.name in seen:
            raise ConstraintError(f"constraints[{c.name!r}]", "two constraints have this name; names must be unique")
        seen.add(c.name)
        out.append(c._compile(user_ids, fund_ids, f"constraints[{c.name!r}]"))
    return _stack_user_weights(out)


def _stack_user_weights(compiled: list[CompiledConstraint]) -> tuple[CompiledConstraint, ...]:
    """The per-user weights of the constraints that have them as rows of one (rules, users) array, each
    constraint holding its row: the solvers' passes read them side by side without stacking a copy
    (at 10M users, 80 MB per rule on every pass that would)."""
    rows = [con.user_weight for con in compiled if con.grid is None]
    if len(rows) < 2:
        return tuple(compiled)
    stacked = _readonly(np.array(rows, dtype=np.float64))
    it = iter(range(len(rows)))
    return tuple(con if con.grid is not None else replace(con, user_weight=stacked[next(it)]) for con in compiled)
