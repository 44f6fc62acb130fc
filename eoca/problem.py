"""The allocation problem users declare: pure data, validated once, never mutated by solving."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from eoca.constraints import CompiledConstraint, compile_constraints, compile_mask
from eoca.errors import DemandError, ETVError, IdError, RiskError, show_values
from eoca.feasibility import level_counts

__all__ = ["USER", "FUND", "AllocationProblem", "CompiledProblem", "Diagnosis", "Shortfall"]

USER = "user"
FUND = "fund"
DIMS = (USER, FUND)

_INT64_MAX = int(np.iinfo(np.int64).max)


@dataclass(frozen=True, eq=False)
class CompiledProblem:
    """The array form every solver works on; produced once by :class:`AllocationProblem`.

    Attributes
    ----------
    etv : ndarray of float32 or float64, shape (n_users, n_funds), or dask.array.Array
        Read-only view of the ETV grid in the dtype it was given (never a copy when the grid already is
        C-contiguous float32 or float64; other numeric dtypes are converted to float64 once).
        For a Dask-backed grid (see :attr:`is_lazy`) a lazy float64 dask array chunked along users with
        all funds in one chunk; it is never loaded whole (see :mod:`eoca.distributed`).
    user_level : ndarray of int32, shape (n_users,)
        Each user's risk tolerance as a code on the shared ordinal risk scale.
    fund_level : ndarray of int32, shape (n_funds,)
        Each fund's risk level as a code on the same scale. User i may get fund j iff
        ``user_level[i] >= fund_level[j]``.
    demand_min, demand_max : ndarray of int64, shape (n_funds,)
        Bounds on the number of users each fund receives (equal for an exact demand). A declared maximum
        above the number of users is clipped to it here (no fund can take more), so that the solvers' int64
        sums of the maxima cannot wrap; ``AllocationProblem.demand_max`` keeps the value as declared.
    holdout : bool
        Whether a user may receive no fund.
    mask : ndarray of bool, shape (n_users, n_funds), or None
        The declared eligibility (``False``: the pair may never be shown), on top of the risk rule; None
        when every pair is eligible.
    constraints : tuple of CompiledConstraint
        The side constraints (quotas, linear budgets) in array form; empty when there are none.
    """

    etv: np.ndarray
    user_level: np.ndarray
    fund_level: np.ndarray
    demand_min: np.ndarray
    demand_max: np.ndarray
    holdout: bool
    n_levels: int
    mask: np.ndarray | None = None
    constraints: tuple[CompiledConstraint, ...] = ()

    @property
    def n_users(self) -> int:
        return int(self.etv.shape[0])

    @property
    def n_funds(self) -> int:
        return int(self.etv.shape[1])

    @property
    def is_lazy(self) -> bool:
        """True when ``etv`` is a Dask array (a grid opened lazily, e.g. from Zarr) rather than in memory."""
        return _is_dask(self.etv)

    @property
    def exact_demands(self) -> bool:
        return bool(np.array_equal(self.demand_min, self.demand_max))

    @cached_property
    def users_per_level(self) -> np.ndarray:
        """Users whose tolerance is each risk level (int64, length ``n_levels``); counted once, when the
        problem is declared."""
        counts = np.bincount(self.user_level, minlength=self.n_levels).astype(np.int64)
        counts.flags.writeable = False
        return counts

    def level_counts(self) -> dict[str, np.ndarray]:
        """Per risk level L (arrays of length ``n_levels``): the counts behind feasibility, see
        :func:`level_counts`."""
        return level_counts(self.users_per_level, self.fund_level, self.demand_min, self.demand_max)

    def eligible(self, users: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Boolean (users, funds) mask of the pairs a user may be shown: the risk rule and, where declared,
        the eligibility mask. Built on demand for the users asked (never stored as a grid of its own)."""
        allowed = self.user_level[users, None] >= self.fund_level[None, :]
        if self.mask is not None:
            allowed &= self.mask[users]
        return allowed

    @property
    def has_side_rules(self) -> bool:
        """Whether the problem has an eligibility mask or side constraints (beyond demands and risk)."""
        return self.mask is not None or bool(self.constraints)


@dataclass(frozen=True)
class Shortfall:
    """One reason a problem is infeasible, in the terms of the delivery contract."""

    level: Any
    # "risk" (too few users tolerate this level), "capacity" (too few places below it); with an
    # eligibility mask: "cover" (funds whose minimum demands the users allowed them cannot cover), "fit"
    # (funds that cannot hold the users allowed only them), "none" (users allowed no fund at all) and
    # "flow" (the demands together, no single set of funds explains it)
    kind: str
    available: int
    required: int
    funds: tuple[Any, ...] = ()

    @property
    def short_by(self) -> int:
        return self.required - self.available

    def describe(self) -> str:
        if self.kind == "cover":
            return (f"funds {list(self.funds)}: their minimum demands need {self.required} users but only "
                    f"{self.available} users may be shown any of them (eligibility and risk rule; short by "
                    f"{self.short_by})")
        if self.kind == "fit":
            return (f"{self.required} users may be shown only funds {list(self.funds)}, which take at most "
                    f"{self.available} (short by {self.short_by} places; raise their maximum, widen the "
                    f"eligibility or pass holdout=True)")
        if self.kind == "none":
            return (f"{self.required} users may be shown no fund at all (eligibility and risk rule together); "
                    f"widen the eligibility or pass holdout=True")
        if self.kind == "flow":
            return (f"the demands cannot be met together within the eligibility and the risk rule: the best "
                    f"allocation misses them by {self.short_by} users")
        if self.kind == "risk":
            return (
                f"risk level {self.level!r} and above: funds need at least {self.required} users but only "
                f"{self.available} users tolerate that risk (short by {self.short_by})"
            )
        return (
            f"below risk level {self.level!r}: {self.required} users tolerate only lower risk but funds "
            f"below that level take at most {self.available} (short by {self.short_by} places; "
            f"raise those funds' maximum or pass holdout=True)"
        )


@dataclass(frozen=True)
class Diagnosis:
    """Whether a problem has any allocation meeting every contract and risk rule, and if not, why."""

    feasible: bool
    shortfalls: tuple[Shortfall, ...] = field(default_factory=tuple)

    @property
    def message(self) -> str:
        if self.feasible:
            return "feasible: every demand can be met within the risk rule"
        return "infeasible: " + "; ".join(s.describe() for s in self.shortfalls)

    def __bool__(self) -> bool:
        return self.feasible

    def __str__(self) -> str:
        return self.message


def _scalar(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _readonly(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


_FINGERPRINT_ROWS = 4096  # users whose ids and ETV rows a fingerprint covers

#: Grid dtypes a solver reads as given; any other numeric dtype is converted to float64 once.
GRID_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _as_grid(etv: Any) -> xr.DataArray:
    if isinstance(etv, pd.DataFrame):
        # renamed views (no copy of the ids): a named index or columns must not become a dimension of its own
        coords = {USER: etv.index.rename(USER), FUND: etv.columns.rename(FUND)}
        etv = xr.DataArray(etv.to_numpy(), dims=DIMS, coords=coords, name="etv")
    if not isinstance(etv, xr.DataArray):
        raise ETVError(
            "etv",
            f"expected an xarray.DataArray with dims {DIMS} or a pandas DataFrame (users as rows, funds as "
            f"columns); got {type(etv).__name__}",
        )
    if set(etv.dims) != set(DIMS) or etv.ndim != 2:
        raise ETVError("etv", f"dims must be {DIMS}; got {tuple(etv.dims)}")
    if etv.dims != DIMS:
        etv = etv.transpose(*DIMS)
    for dim in DIMS:
        if dim not in etv.coords:
            raise IdError(f"etv.{dim}", f"the grid needs a {dim!r} coordinate holding the {dim} ids")
    return etv


def id_kind(index: pd.Index) -> str:
    """``"integer"`` or ``"string"``: the kind of a set of ids, or what else they are (``"mixed-integer"``,
    ``"floating"``, ...) as :func:`pandas.api.types.infer_dtype` names it. Missing values count as a kind
    of their own (``infer_dtype`` without ``skipna``), so one scan settles both the kind and the gaps."""
    if len(index) == 0:  # an empty float coordinate (xarray's default for no values) holds no id
        return "empty"
    if isinstance(index, pd.CategoricalIndex):
        return "mixed" if (index.codes < 0).any() else id_kind(index.categories)
    if index.dtype.kind in "iu":
        return "integer"
    return pd.api.types.infer_dtype(index, skipna=False)


def _check_ids(index: pd.Index, field_name: str) -> pd.Index:
    """Check a set of ids once: all integers or all strings, none missing, each once. Returns the index
    (object strings stay object: no conversion of millions of strings)."""
    kind = id_kind(index)
    # pandas' string dtypes report "string" however many of their values are missing
    if kind not in ("integer", "string", "empty") or (index.dtype != object and index.hasnans):
        if index.hasnans:
            raise IdError(field_name, "ids must not be missing (NaN/None)")
        sample = pd.Index(index[:1000])
        kinds = sorted({type(v).__name__ for v in sample.tolist()})
        raise IdError(
            field_name,
            f"ids must be all integers or all strings; got {kind} ids ({', '.join(kinds)}): "
            f"{show_values(index[:5])}",
        )
    if index.dtype.kind == "u" and len(index) and index.max() > _INT64_MAX:
        raise IdError(field_name, f"integer ids must fit in int64 (files store them so); got {index.max()}")
    if not index.is_unique:
        dup = index[index.duplicated()].unique()
        raise IdError(field_name, f"ids must be unique; duplicated: {show_values(dup)}")
    return index


def _named(index: pd.Index, name: str) -> pd.Index:
    """``index`` named ``name``: itself when it already is, so that a Series built on the grid's own index
    aligns by identity (a renamed copy is another object, and comparing millions of ids costs more than
    the solve)."""
    return index if index.name == name else index.rename(name)


def _is_dask(values: Any) -> bool:
    return type(values).__module__.startswith("dask.") and hasattr(values, "__dask_graph__")


def _grid_values(etv: xr.DataArray, users: pd.Index, funds: pd.Index) -> np.ndarray:
    values = etv.data
    if _is_dask(values):
        return _lazy_grid_values(values, users, funds)
    if not isinstance(values, np.ndarray):
        values = np.asarray(values)
    if values.dtype.kind not in "fiub":
        raise ETVError("etv", f"values must be numeric; got dtype {values.dtype}")
    # float32 and float64 are read as given (no copy when C-contiguous); others become float64 once
    values = np.ascontiguousarray(values, dtype=values.dtype if values.dtype in GRID_DTYPES else np.float64)
    # two vectorised reductions settle the common case; NaN propagates through min
    if values.size and not (values.min() >= 0 and np.isfinite(values.max())):
        _raise_bad_entries(values, users, funds)
    return values


def _lazy_grid_values(values: Any, users: pd.Index, funds: pd.Index) -> Any:
    """Validate a lazy (Dask-backed) grid without loading it and return it as float64, chunked along users
    with every fund in one chunk. Only array operations of the numpy protocol and the array's own
    ``rechunk``/``compute`` are used: one reduction over the chunks counts the bad entries, and only if
    there are some does a second one find the first users that hold them."""
    if values.dtype.kind not in "fiub":
        raise ETVError("etv", f"values must be numeric; got dtype {values.dtype}")
    if values.numblocks[1] != 1:
        values = values.rechunk({0: values.chunks[0], 1: -1})
    if values.dtype != np.float64:
        values = values.astype(np.float64)
    if values.shape[0] == 0:
        return values
    bad = ~np.isfinite(values)
    negative = values < 0
    nbad, nneg = (int(v) for v in np.stack([bad.sum(), negative.sum()]).compute())
    if nbad or nneg:
        # the users that hold the first bad entries, read as a small in-memory grid to name them
        rows = np.flatnonzero(np.asarray((bad if nbad else negative).any(axis=1).compute()))[:5]
        _raise_bad_entries(np.asarray(values[rows].compute()), users[rows], funds, nbad if nbad else nneg)
    return values


def _raise_bad_entries(values: np.ndarray, users: pd.Index, funds: pd.Index, total: int | None = None) -> None:
    """Name the first NaN/infinite, else the first negative (user, fund) entries of a grid."""
    bad = ~np.isfinite(values)
    if bad.any():
        count = int(bad.sum()) if total is None else total
        rows, cols = np.nonzero(bad)
        where = [(_scalar(users[r]), _scalar(funds[c])) for r, c in zip(rows[:5], cols[:5])]
        raise ETVError(
            "etv",
            f"values must be finite; {count} NaN or infinite entries at (user, fund) {show_values(where)}"
            + (" ..." if count > 5 else ""),
        )
    del bad
    rows, cols = np.nonzero(values < 0)
    where = [(_scalar(users[r]), _scalar(funds[c]), float(values[r, c])) for r, c in zip(rows[:5], cols[:5])]
    raise ETVError(
        "etv",
        f"values must be non-negative (an expected transaction value); {len(rows) if total is None else total} "
        "negative entries "
        f"(user, fund, value): {show_values(where)}",
    )


def _share_index(grid: xr.DataArray, data: Any, name: str) -> xr.DataArray:
    # handed over as a Variable, object data is taken as it is: otherwise xarray passes it through a pandas
    # Series, which in pandas 3 converts millions of strings to Arrow and back
    wrapped = xr.Variable(grid.dims, data, fastpath=True) if isinstance(data, np.ndarray) else data
    out = grid.reset_coords(drop=True).copy(deep=False, data=wrapped).rename(name)
    out.attrs = {}
    return out


def user_vector(grid: xr.DataArray, data: np.ndarray, name: str) -> xr.DataArray:
    """A DataArray over "user" holding ``data`` and sharing ``grid``'s user index object (no copy of the
    ids, and their hash table is kept)."""
    return _share_index(grid.isel({FUND: 0}, drop=True), data, name)


def fund_vector(problem: AllocationProblem, data: np.ndarray, name: str) -> xr.DataArray:
    """A DataArray over "fund" holding ``data``, sharing ``problem``'s fund index object: a shallow copy of
    its risk levels' array (about 20 us, where building the fund coordinate and the array again took
    50-100 us, three times in every solve's report)."""
    out = problem.risk_level.copy(deep=False, data=data)
    out.name = name
    return out


def _as_series(value: Any, field_name: str, dim: str) -> pd.Series:
    """Turn a mapping, Series or 1-d DataArray over ``dim`` into a Series indexed by id."""
    if isinstance(value, xr.DataArray):
        if value.dims != (dim,):
            raise IdError(field_name, f"expected a DataArray over ({dim!r},); got dims {tuple(value.dims)}")
        if dim not in value.coords:
            raise IdError(field_name, f"the DataArray needs a {dim!r} coordinate holding the ids")
        data = np.asarray(value.values)
        return pd.Series(data, index=value.get_index(dim), dtype=data.dtype, copy=False)
    if isinstance(value, pd.Series):
        return value
    if isinstance(value, Mapping):
        return pd.Series(list(value.values()), index=pd.Index(list(value.keys())), dtype=object)
    raise IdError(
        field_name,
        f"expected a mapping, a pandas Series or a DataArray over {dim!r}; got {type(value).__name__}",
    )


def _demand_series(demand: Any) -> pd.Series:
    """Demands as a Series over funds; ranges as (min, max) pairs. Besides what ``_as_series`` takes, a
    DataArray over ("fund", "bound") (what ``problem.demand`` returns for ranges) and a DataFrame with
    "min" and "max" columns indexed by fund are read as ranges."""
    if isinstance(demand, xr.DataArray) and set(demand.dims) == {FUND, "bound"}:
        if FUND not in demand.coords or "bound" not in demand.coords:
            raise IdError("demand", 'a range DataArray needs "fund" and "bound" coordinates')
        bounds = [str(b) for b in demand.coords["bound"].values.tolist()]
        if sorted(bounds) != ["max", "min"]:
            raise DemandError("demand", f'the "bound" coordinate must be ("min", "max"); got {tuple(bounds)}')
        demand = demand.transpose(FUND, "bound").to_pandas()
        demand.columns = bounds
    if isinstance(demand, pd.DataFrame):
        if sorted(map(str, demand.columns)) != ["max", "min"]:
            raise DemandError("demand", f'a DataFrame of ranges needs columns "min" and "max"; got {list(demand.columns)}')
        pairs = list(zip(demand["min"].tolist(), demand["max"].tolist(), strict=True))
        return pd.Series(pairs, index=demand.index, dtype=object)
    return _as_series(demand, "demand", FUND)


def _align(series: pd.Series, ids: pd.Index, field_name: str, dim: str, missing_error: type) -> pd.Series:
    """``series`` in the order of ``ids`` (unique, checked). A Series already in that order is used as it
    is (``Index.equals`` is one comparison pass); otherwise one hash lookup into ``ids`` places every
    entry and finds duplicates, missing and unknown ids together."""
    index = series.index
    if index is ids or (len(index) == len(ids) and index.equals(ids)):
        return series
    pos = ids.get_indexer(index)
    known = pos >= 0
    seen = np.bincount(pos[known], minlength=len(ids))
    if (seen > 1).any():
        raise IdError(field_name, f"ids must be unique; duplicated: {show_values(ids[seen > 1])}")
    missing = seen == 0
    if missing.any():
        raise missing_error(
            field_name, f"missing for {int(missing.sum())} {dim}(s) of the ETV grid: {show_values(ids[missing])}"
        )
    if not known.all():
        extra = index[~known]
        raise IdError(
            field_name,
            f"{len(extra)} {dim} id(s) that are not in the ETV grid's {dim!r} coordinate: {show_values(extra)}",
        )
    data = series.to_numpy()
    out = np.empty(len(ids), dtype=data.dtype)
    out[pos] = data
    return pd.Series(out, index=ids, dtype=series.dtype, copy=False)


def _parse_demand(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    lo = np.empty(len(series), dtype=np.int64)
    hi = np.empty(len(series), dtype=np.int64)
    for pos, (fund, value) in enumerate(series.items()):
        pair = value if isinstance(value, tuple | list) else (value, value)
        if len(pair) != 2:
            raise DemandError("demand", f"fund {fund!r}: a range is (min, max); got {value!r}")
        for bound in pair:
            if isinstance(bound, bool | np.bool_) or not isinstance(bound, int | np.integer | float | np.floating):
                raise DemandError("demand", f"fund {fund!r}: demand must be a non-negative integer; got {value!r}")
            whole = isinstance(bound, int | np.integer) or (np.isfinite(bound) and bound == int(bound))
            if not whole or bound < 0:
                raise DemandError("demand", f"fund {fund!r}: demand must be a non-negative integer; got {value!r}")
            if int(bound) > _INT64_MAX:
                raise DemandError("demand", f"fund {fund!r}: demand must be at most 2**63 - 1; got {value!r}")
        lo[pos], hi[pos] = int(pair[0]), int(pair[1])
        if lo[pos] > hi[pos]:
            raise DemandError("demand", f"fund {fund!r}: range minimum exceeds maximum; got {value!r}")
    return lo, hi


def _risk_codes(fund_risk: pd.Series, user_tol: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Put fund risk levels and user tolerances on one ordinal scale: (levels, fund codes, user codes)."""
    for field_name, s in (("risk_level", fund_risk), ("risk_tolerance", user_tol)):
        if s.isna().any():
            bad = s.index[s.isna().to_numpy()]
            raise RiskError(field_name, f"missing for {len(bad)} id(s): {show_values(bad)}")
    # factorize first: millions of users share a handful of levels, so only the distinct values are sorted
    fund_raw, fund_distinct = pd.factorize(fund_risk, sort=False)
    user_raw, user_distinct = pd.factorize(user_tol, sort=False)
    distinct = pd.unique(np.concatenate([np.asarray(fund_distinct, dtype=object), np.asarray(user_distinct, dtype=object)]))
    kinds = {
        "number" if isinstance(v, int | float | np.number) and not isinstance(v, bool | np.bool_) else type(v).__name__
        for v in distinct
    }
    if len(kinds) > 1:
        raise RiskError(
            "risk_level",
            f"risk levels and tolerances must be on one scale (all numbers or all labels); got {sorted(kinds)}",
        )
    scales = [s.dtype.categories for s in (fund_risk, user_tol)
              if isinstance(s.dtype, pd.CategoricalDtype) and s.dtype.ordered]
    if scales:  # an ordered categorical declares the scale: its order, not the labels' sort order
        if any(not other.equals(scales[0]) for other in scales[1:]):
            raise RiskError("risk_level", f"risk levels and tolerances are ordered categoricals with different "
                                          f"orders: {show_values(scales[0])} and {show_values(scales[1])}")
        levels = np.asarray(scales[0])
        off = [v for v in distinct if v not in set(scales[0])]
        if off:
            raise RiskError("risk_level", f"values not on the ordered risk scale {show_values(scales[0])}: "
                                          f"{show_values(off)}")
    else:
        try:
            levels = np.sort(np.asarray(distinct.tolist()))
        except TypeError as exc:
            raise RiskError("risk_level", f"risk levels and tolerances must be comparable: {exc}") from None
    if levels.dtype.kind == "f" and not np.isfinite(levels).all():
        raise RiskError("risk_level", f"risk levels and tolerances must be finite; got {show_values(levels)}")
    index = pd.Index(levels)
    fund_codes = index.get_indexer(np.asarray(fund_distinct, dtype=object)).astype(np.int32)[fund_raw]
    user_codes = index.get_indexer(np.asarray(user_distinct, dtype=object)).astype(np.int32)[user_raw]
    return levels, fund_codes, user_codes


class AllocationProblem:
    """An allocation scenario: which fund type each user is shown.

    Maximise the total ETV of the users' assigned funds so that every fund reaches its contracted number
    of users and no user gets a fund above their risk tolerance (paper eqs. 1-5).

    Parameters
    ----------
    etv : xarray.DataArray with dims ("user", "fund"), or pandas.DataFrame
        Expected transaction value of showing each fund to each user; coordinates hold the ids.
        A DataFrame has users as rows and funds as columns. Values must be finite and non-negative.
        float32 and float64 grids are used as given (float32 halves the memory; every solver and the
        checker read it without a float64 copy); other numeric dtypes are converted to float64 once.
        User and fund ids must be all integers or all strings, each once.
    demand : mapping, pandas.Series or DataArray over "fund"
        Users each fund must receive: an integer, or a ``(min, max)`` range.
    risk_level : mapping, pandas.Series or DataArray over "fund"
        Risk level of each fund (numbers, or labels such as "R1".."R5" that sort in risk order).
    risk_tolerance : pandas.Series indexed by user id, DataArray over "user", or mapping
        Highest risk level each user may be shown, on the same scale as ``risk_level``.
    holdout : bool, default False
        Allow users to receive no fund (when demands total less than the number of users).
    name : str, optional
        A label used in summaries and files.
    eligible : boolean DataArray over ("user", "fund") or DataFrame (users x funds), optional
        ``False`` marks a pair that may never be shown (compliance, opt-outs, funds already held). A pair
        is allowed iff it is eligible and within the user's risk tolerance. Stored as one byte per pair.
    constraints : list of :class:`eoca.Quota` / :class:`eoca.Linear`, optional
        Side constraints on top of the demands: quotas on groups of users, linear budgets and targets.

    Raises
    ------
    ETVError, IdError, DemandError, RiskError, ConstraintError
        All :class:`ValueError` subclasses naming the field and the offending values.
    """

    __slots__ = (
        "_etv", "_risk_level", "_risk_tolerance", "_demand_min", "_demand_max", "_holdout", "_name",
        "_compiled", "_levels", "_users", "_funds", "_fingerprint", "_frozen", "_eligible", "_constraints",
        "_diagnosis",
    )

    def __init__(
        self,
        etv: xr.DataArray | pd.DataFrame,
        demand: Mapping[Any, Any] | pd.Series | xr.DataArray,
        risk_level: Mapping[Any, Any] | pd.Series | xr.DataArray,
        risk_tolerance: pd.Series | xr.DataArray | Mapping[Any, Any],
        *,
        holdout: bool = False,
        name: str | None = None,
        eligible: xr.DataArray | pd.DataFrame | None = None,
        constraints: Any = None,
    ):
        grid = _as_grid(etv)
        # the grid's own indexes, checked once; their hash tables serve every alignment below
        users = _named(_check_ids(grid.get_index(USER), "etv.user"), USER)
        funds = _named(_check_ids(grid.get_index(FUND), "etv.fund"), FUND)
        if len(funds) == 0:
            raise ETVError("etv", "the grid has no funds")
        values = _grid_values(grid, users, funds)

        if not isinstance(holdout, bool | np.bool_):
            raise DemandError("holdout", f"must be True or False; got {holdout!r}")
        demand_s = _align(_demand_series(demand), funds, "demand", FUND, DemandError)
        lo, hi = _parse_demand(demand_s)
        n = len(users)
        lo_total, hi_total = sum(lo.tolist()), sum(hi.tolist())  # Python ints: int64 sums could wrap
        if lo_total > n:
            raise DemandError(
                "demand", f"funds demand at least {lo_total} users in total but the grid has only {n} users"
            )
        if not holdout and hi_total < n:
            raise DemandError(
                "demand",
                f"demands total at most {hi_total} but all {n} users must be placed; pass holdout=True "
                f"to let {n - hi_total} users receive no fund, or raise the demands",
            )
        risk_s = _align(_as_series(risk_level, "risk_level", FUND), funds, "risk_level", FUND, RiskError)
        tol_s = _align(
            _as_series(risk_tolerance, "risk_tolerance", USER), users, "risk_tolerance", USER, RiskError
        )
        levels, fund_codes, user_codes = _risk_codes(risk_s, tol_s)
        mask = compile_mask(eligible, users, funds)
        side = compile_constraints(constraints, users, funds)

        ro = values if _is_dask(values) else _readonly(values)
        # shallow copies that share the grid's index objects: a DataArray built from coords deep-copies them
        # (and drops their hash tables), which at millions of string ids costs more than the solve
        self._etv = _share_index(grid, ro, "etv")
        self._risk_level = xr.DataArray(_readonly(risk_s.to_numpy()), dims=(FUND,), coords={FUND: funds}, name="risk_level")
        self._risk_tolerance = user_vector(self._etv, _readonly(np.asarray(tol_s.array)), "risk_tolerance")
        self._demand_min = xr.DataArray(_readonly(lo), dims=(FUND,), coords={FUND: funds}, name="demand_min")
        self._demand_max = xr.DataArray(_readonly(hi), dims=(FUND,), coords={FUND: funds}, name="demand_max")
        self._users = users
        self._funds = funds
        self._holdout = bool(holdout)
        self._name = name
        self._levels = levels
        self._compiled = CompiledProblem(
            etv=ro,
            user_level=_readonly(user_codes),
            fund_level=_readonly(fund_codes),
            demand_min=_readonly(lo),
            # no fund can take more than every user: the solvers sum and subtract these in int64
            demand_max=_readonly(np.minimum(hi, n)),
            holdout=bool(holdout),
            n_levels=len(levels),
            mask=mask,
            constraints=side,
        )
        self._eligible = None if mask is None else _share_index(self._etv, mask, "eligible")
        self._constraints = tuple(constraints) if isinstance(constraints, list | tuple) else (
            () if constraints is None else (constraints,))
        _ = self._compiled.users_per_level  # counted here, with the declaration, not on every solve
        self._frozen = True

    def __setattr__(self, key: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(f"AllocationProblem is immutable; cannot set {key!r} (build a new problem)")
        object.__setattr__(self, key, value)

    # pickling (Dask ships a problem to its workers, joblib and multiprocessing to theirs): the declared
    # state as it is, restored without the immutability guard; the kept diagnosis is worked out again
    def __getstate__(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__slots__ if key != "_diagnosis" and hasattr(self, key)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)

    # ---- read-only views -------------------------------------------------------------------------------
    @property
    def etv(self) -> xr.DataArray:
        """The ETV grid, dims ("user", "fund")."""
        return self._etv

    @property
    def users(self) -> pd.Index:
        """The user ids, in the grid's order (integers or strings, as given)."""
        return self._users

    @property
    def funds(self) -> pd.Index:
        """The fund ids, in the grid's order."""
        return self._funds

    @property
    def n_users(self) -> int:
        return self._compiled.n_users

    @property
    def n_funds(self) -> int:
        return self._compiled.n_funds

    @property
    def demand_min(self) -> xr.DataArray:
        return self._demand_min

    @property
    def demand_max(self) -> xr.DataArray:
        return self._demand_max

    @property
    def has_ranges(self) -> bool:
        """Whether some fund's demand is a range, as declared (the compiled maxima are clipped to the users)."""
        return not np.array_equal(self._demand_min.values, self._demand_max.values)

    @property
    def demand(self) -> xr.DataArray:
        """Exact demands over "fund"; for range demands, a DataArray over ("fund", "bound")."""
        if not self.has_ranges:
            return self._demand_min.rename("demand")
        return xr.concat([self._demand_min, self._demand_max], dim=pd.Index(["min", "max"], name="bound")).T.rename(
            "demand"
        )

    @property
    def risk_level(self) -> xr.DataArray:
        return self._risk_level

    @property
    def risk_tolerance(self) -> xr.DataArray:
        return self._risk_tolerance

    @property
    def risk_levels(self) -> np.ndarray:
        """The ordered risk scale shared by funds and users."""
        return self._levels

    @property
    def holdout(self) -> bool:
        return self._holdout

    @property
    def eligible(self) -> xr.DataArray | None:
        """The declared eligibility mask over ("user", "fund") (bool), or None when every pair is eligible."""
        return self._eligible

    @property
    def constraints(self) -> tuple[Any, ...]:
        """The declared side constraints (:class:`eoca.Quota`, :class:`eoca.Linear`), in declaration order."""
        return self._constraints

    @property
    def name(self) -> str | None:
        return self._name

    def fingerprint(self) -> str:
        """A short hex digest that tells problems apart, recorded in the files of its results.

        It covers the ids' kinds and count, the fund table (ids, demands, risk levels), holdout, every
        user's risk level and, for a fixed sample of up to 4,096 users spread over the grid, their ids and
        ETV rows, so it costs the same few milliseconds at any size (the checks, not the fingerprint, are
        what judge an allocation). Computed once per problem.
        """
        if getattr(self, "_fingerprint", None) is None:
            import hashlib
            import json

            c = self._compiled
            n = c.n_users
            rows = np.unique(np.linspace(0, max(n - 1, 0), min(n, _FINGERPRINT_ROWS)).astype(np.int64))
            sample = np.asarray(c.etv[rows] if n else np.empty((0, c.n_funds)), dtype=np.float64)
            digest = hashlib.blake2b(digest_size=16)
            head = {
                "users": n, "user_kind": id_kind(self._users), "fund_kind": id_kind(self._funds),
                "funds": [str(f) for f in self._funds], "holdout": self._holdout,
                "levels": [str(v) for v in self._levels], "fund_level": c.fund_level.tolist(),
                "demand": [c.demand_min.tolist(), c.demand_max.tolist()],
                "sample_ids": [str(u) for u in self._users[rows]],
            }
            digest.update(json.dumps(head).encode())
            digest.update(np.ascontiguousarray(c.user_level, dtype=np.int32).tobytes())
            digest.update(np.ascontiguousarray(sample).tobytes())
            if c.mask is not None:
                digest.update(np.packbits(c.mask).tobytes())
            for con in c.constraints:
                digest.update(json.dumps([con.name, con.kind, con.lo, con.hi]).encode())
                digest.update(np.ascontiguousarray(con.fund_weight).tobytes())
                digest.update(np.ascontiguousarray(con.coefficients(rows)).tobytes())
            object.__setattr__(self, "_fingerprint", digest.hexdigest())
        return self._fingerprint

    def compile(self) -> CompiledProblem:
        """The array form solvers work on (shared by every solver; computed once)."""
        return self._compiled

    # ---- feasibility -----------------------------------------------------------------------------------
    def diagnose(self) -> Diagnosis:
        """Say whether any allocation meets every demand within the risk rule, and if not, why.

        Risk levels are ordered, so the problem is feasible iff for every level L the users with tolerance
        at least L can cover the minimum demand of funds with risk at least L, and (unless ``holdout``)
        the users with tolerance below L fit into the maximum demand of funds with risk below L.
        With an eligibility mask a max-flow over users grouped by their allowed funds decides. Worked out
        once per problem (it is immutable) and kept: every solve asks.
        """
        cached = getattr(self, "_diagnosis", None)
        if cached is None:
            cached = self._diagnose_mask() if self._compiled.mask is not None else self._diagnose_levels()
            object.__setattr__(self, "_diagnosis", cached)
        return cached

    def _diagnose_levels(self) -> Diagnosis:
        c = self._compiled
        counts = c.level_counts()
        users_ge, lo_ge, users_lt, hi_lt = counts["users_ge"], counts["min_ge"], counts["users_lt"], counts["max_lt"]
        found = []
        for level in range(c.n_levels):
            if lo_ge[level] > users_ge[level]:
                found.append(Shortfall(_scalar(self._levels[level]), "risk", int(users_ge[level]), int(lo_ge[level])))
            # With exact demands the capacity condition at L restates the risk condition at L: say it once.
            risk_short = lo_ge[level] > users_ge[level]
            if not c.holdout and users_lt[level] > hi_lt[level] and not (risk_short and c.exact_demands):
                found.append(
                    Shortfall(_scalar(self._levels[level]), "capacity", int(hi_lt[level]), int(users_lt[level]))
                )
        return Diagnosis(feasible=not found, shortfalls=tuple(found))

    def _diagnose_mask(self) -> Diagnosis:
        """The general diagnosis for a problem with an eligibility mask: a max-flow over users grouped by
        the funds they may take decides, the simplest violated set of funds explains (see eoca.feasibility)."""
        from eoca.feasibility import allowed_patterns, explain, flow_shortfall

        c = self._compiled
        groups, counts = allowed_patterns(c.user_level, c.fund_level, c.mask)
        short = flow_shortfall(groups, counts, c.demand_min, c.demand_max, c.holdout)
        if short == 0:
            return Diagnosis(feasible=True)
        found = [
            Shortfall(None, kind, available, required, tuple(_scalar(self._funds[j]) for j in funds))
            for kind, funds, available, required in explain(groups, counts, c.demand_min, c.demand_max, c.holdout)
        ]
        return Diagnosis(feasible=False, shortfalls=tuple(found) or (Shortfall(None, "flow", 0, short),))

    # ---- display ---------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        kind = "ranges" if self.has_ranges else "exact"
        lines = [
            f"<eoca.AllocationProblem{' ' + repr(self._name) if self._name else ''}: {self.n_users:,} users x "
            f"{self.n_funds} funds, demands {kind}{', holdout' if self._holdout else ''}>",
        ]
        for j, fund in enumerate(self.funds):
            lo, hi = int(self._demand_min.values[j]), int(self._demand_max.values[j])
            dem = f"{lo:,}" if lo == hi else f"{lo:,}..{hi:,}"
            lines.append(f"  {fund!s:<16} demand {dem:>14}   risk {self._risk_level.values[j]!r}")
        return "\n".join(lines)
