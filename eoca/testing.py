"""Helpers for users' own tests: an independent recount of a result, and reference optima.

Nothing here shares code with :mod:`eoca.checks` or with a solver. The recount works in plain numpy on
the problem's public arrays (the grid, the declared demands, the fund risk levels and user tolerances as
given), so a fault in the library's checker, in its bound or in the problem's risk coding makes
:func:`assert_valid_result` fail instead of agreeing with it. :func:`brute_force` enumerates tiny
problems and :func:`milp_optimum` solves the allocation as the mixed-integer program of its definition
with SciPy's HiGHS interface (not the Pyomo model of the ``ip`` solver).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from eoca.problem import AllocationProblem
from eoca.result import Result, Status

__all__ = ["Recount", "assert_valid_result", "brute_force", "dual_value", "etv_grid", "feasible", "milp_optimum", "recount"]

_BLOCK = 1 << 18  # users per block where the recount needs a (users, funds) temporary

#: Words the message of a result must contain for each rule its allocation breaks.
RULE_WORDS = {
    "risk_violations": "risk tolerance",
    "demand_misses": "demand",
    "unplaced": "unplaced",
    "invalid": "no fund",
    "ineligible": "eligibility mask",
}


def etv_grid(values, users=None, funds=None) -> xr.DataArray:
    """A small ETV grid for examples and tests.

    Parameters
    ----------
    values : array_like, shape (n_users, n_funds)
    users, funds : sequence, optional
        Ids; "u1", "u2", ... and "f1", "f2", ... by default.

    Returns
    -------
    xarray.DataArray over ("user", "fund"), named "etv"
    """
    values = np.asarray(values, dtype=float)
    users = list(users) if users is not None else [f"u{i + 1}" for i in range(values.shape[0])]
    funds = list(funds) if funds is not None else [f"f{j + 1}" for j in range(values.shape[1])]
    return xr.DataArray(values, dims=("user", "fund"), coords={"user": users, "fund": funds}, name="etv")


@dataclass(frozen=True)
class Recount:
    """What an allocation does, counted again from the problem's public arrays.

    Attributes
    ----------
    counts : ndarray of int64, shape (n_funds,)
        Users placed in each fund.
    miss_per_fund : ndarray of int64, shape (n_funds,)
        Users above the fund's maximum demand (positive) or below its minimum (negative).
    unplaced : int
        Users with no fund, counted only when the problem does not allow holdout.
    invalid : int
        Entries that name no fund (a code below -1 or past the last fund).
    risk_violations : int
        Users placed in a fund whose risk level is above their tolerance.
    objective : float
        Total ETV of the placed users.
    """

    counts: np.ndarray
    miss_per_fund: np.ndarray
    unplaced: int
    invalid: int
    risk_violations: int
    objective: float
    ineligible: int = 0
    activity: dict = None  # side constraint name -> activity recounted from the declaration
    broken: tuple = ()  # names of the side constraints whose bounds the activity misses

    @property
    def demand_misses(self) -> int:
        """Total users by which the funds miss their demands (over plus under)."""
        return int(np.abs(self.miss_per_fund).sum())

    @property
    def ok(self) -> bool:
        """True when the allocation breaks no rule."""
        return (self.unplaced == 0 and self.invalid == 0 and self.risk_violations == 0 and self.demand_misses == 0
                and self.ineligible == 0 and not self.broken)


def _mask(problem: AllocationProblem) -> np.ndarray:
    """The declared eligibility as a bool (users, funds) array in the problem's order (all True if none)."""
    if problem.eligible is None:
        return np.ones((problem.n_users, problem.n_funds), dtype=bool)
    mask = problem.eligible.transpose("user", "fund").reindex(user=problem.users, fund=problem.funds)
    return np.asarray(mask.values, dtype=bool)


def _by_user(values, problem: AllocationProblem) -> np.ndarray:
    series = values.to_series() if isinstance(values, xr.DataArray) else values
    return series.reindex(problem.users).to_numpy()


def side_constraints(problem: AllocationProblem) -> list[tuple[str, float, float, np.ndarray]]:
    """Each declared side constraint as (name, at_least, at_most, coefficients (users, funds)), rebuilt
    from the declaration with pandas (not from the compiled arrays); absent bounds are -inf / +inf."""
    out = []
    funds = pd.Index(problem.funds)
    for con in problem.constraints:
        named = None if con.funds is None else ([con.funds] if isinstance(con.funds, str | int) else list(con.funds))
        fund_w = np.ones(len(funds)) if named is None else funds.isin(named).astype(float)
        if type(con).__name__ == "Quota":
            if isinstance(con.users, pd.Series | xr.DataArray):
                user_w = _by_user(con.users, problem).astype(float)
            else:
                user_w = pd.Index(problem.users).isin(list(con.users)).astype(float)
            coef = user_w[:, None] * fund_w[None, :]
        elif isinstance(con.weights, pd.DataFrame):
            coef = con.weights.reindex(index=problem.users, columns=problem.funds).to_numpy(dtype=float)
        elif isinstance(con.weights, xr.DataArray) and con.weights.ndim == 2:
            coef = np.asarray(con.weights.transpose("user", "fund").reindex(user=problem.users, fund=problem.funds)
                              .values, dtype=float)
        else:
            coef = _by_user(con.weights, problem).astype(float)[:, None] * fund_w[None, :]
        lo = -np.inf if con.at_least is None else float(con.at_least)
        hi = np.inf if con.at_most is None else float(con.at_most)
        out.append((con.name, lo, hi, coef))
    return out


def _ranks(problem: AllocationProblem) -> tuple[np.ndarray, np.ndarray]:
    """Positions of each user's tolerance and each fund's risk level on one scale of the raw values.

    Numbers are placed by their own sort. Labels are placed on the declared scale ``problem.risk_levels``
    (an ordered categorical's order, which need not be the labels' sort order); a label off that scale
    fails the recount."""
    tolerance = np.asarray(problem.risk_tolerance.values)
    level = np.asarray(problem.risk_level.values)
    if tolerance.dtype.kind in "iuf" and level.dtype.kind in "iuf":
        _, positions = np.unique(np.concatenate([tolerance, level]), return_inverse=True)
        return positions[: len(tolerance)], positions[len(tolerance):]
    scale = pd.Index(np.asarray(problem.risk_levels, dtype=object))
    ranks = []
    for name, values in (("risk tolerance", tolerance), ("risk level", level)):
        positions = scale.get_indexer(values.astype(object))
        if (positions < 0).any():
            off = sorted({str(v) for v in values[positions < 0].tolist()})
            raise AssertionError(f"{name}s {off} are not on the problem's risk scale {scale.tolist()}")
        ranks.append(positions.astype(np.int64))
    return ranks[0], ranks[1]


def _demands(problem: AllocationProblem) -> tuple[np.ndarray, np.ndarray]:
    # No fund takes more than every user, so a maximum above the users states the same problem as the
    # users themselves; the dual of that stated problem is the one with the tighter (and finite) value.
    return (np.asarray(problem.demand_min.values, dtype=np.int64),
            np.minimum(np.asarray(problem.demand_max.values, dtype=np.int64), problem.n_users))


def recount(problem: AllocationProblem, codes) -> Recount:
    """Count what an allocation does, in plain numpy, without the library's checker.

    Parameters
    ----------
    problem : AllocationProblem
    codes : array_like of int, shape (n_users,)
        Fund position per user in ``problem.funds``; -1 for no fund.

    Returns
    -------
    Recount
    """
    etv = problem.etv.values
    n, k = etv.shape
    codes = np.asarray(codes).astype(np.int64)
    if codes.shape != (n,):
        raise AssertionError(f"the allocation has shape {codes.shape}; the problem has {n} users")
    placed = np.flatnonzero((codes >= 0) & (codes < k))
    funds = codes[placed]
    counts = np.bincount(funds, minlength=k).astype(np.int64)
    lo, hi = _demands(problem)
    miss = np.maximum(counts - hi, 0) - np.maximum(lo - counts, 0)
    user_rank, fund_rank = _ranks(problem)
    activity, broken = {}, []
    for name, at_least, at_most, coef in side_constraints(problem):  # not the demands' lo and hi above
        activity[name] = float(coef[placed, funds].sum())
        if not (at_least - 1e-9 * max(1.0, abs(at_least)) <= activity[name]
                <= at_most + 1e-9 * max(1.0, abs(at_most))):
            broken.append(name)
    return Recount(
        counts=counts,
        miss_per_fund=miss,
        unplaced=0 if problem.holdout else int(np.count_nonzero(codes == -1)),
        invalid=int(np.count_nonzero((codes < -1) | (codes >= k))),
        risk_violations=int(np.count_nonzero(user_rank[placed] < fund_rank[funds])),
        objective=float(np.asarray(etv[placed, funds], dtype=np.float64).sum()),
        ineligible=int(np.count_nonzero(~_mask(problem)[placed, funds])),
        activity=activity,
        broken=tuple(broken),
    )


def dual_value(problem: AllocationProblem, prices, multipliers=None) -> float:
    """The Lagrangian dual value of fund prices, from its formula: an upper bound on the optimum.

    ``sum_i max_{j allowed} (etv[i, j] - prices[j])`` (at least 0 with holdout) plus, per fund,
    ``prices[j]`` times the maximum demand (at most the users) where the price is positive, the minimum where
    it is negative.

    Parameters
    ----------
    problem : AllocationProblem
    prices : array_like of float, shape (n_funds,)
    multipliers : array_like of float, shape (n_constraints,), optional
        One per side constraint: ``etv`` becomes ``etv - sum_q mu_q a_q`` and ``mu_q`` times the
        constraint's maximum (``mu_q > 0``) or minimum (``mu_q < 0``) is added. "Allowed" includes the
        eligibility mask.

    Returns
    -------
    float
    """
    etv = problem.etv.values
    prices = np.asarray(prices, dtype=np.float64)
    user_rank, fund_rank = _ranks(problem)
    mask = _mask(problem)
    sides = side_constraints(problem)
    mu = np.zeros(len(sides)) if multipliers is None else np.asarray(multipliers, dtype=np.float64)
    adjusted = np.asarray(etv, dtype=np.float64) - sum((m * coef for m, (_, _, _, coef) in zip(mu, sides) if m),
                                                       np.zeros(etv.shape))
    total = 0.0
    for start in range(0, etv.shape[0], _BLOCK):  # blocks of users keep the temporaries small
        stop = start + _BLOCK
        allowed = (user_rank[start:stop, None] >= fund_rank[None, :]) & mask[start:stop]
        reduced = np.where(allowed, adjusted[start:stop] - prices[None, :], -np.inf)
        best = reduced.max(axis=1, initial=-np.inf)
        if problem.holdout:
            best = np.maximum(best, 0.0)
        total += float(best.sum())
    lo, hi = _demands(problem)
    side = sum(m * (h if m > 0 else lw) for m, (_, lw, h, _) in zip(mu.tolist(), sides) if m)
    return float(total + np.sum(np.where(prices > 0, prices * hi, prices * lo)) + side)


def feasible(problem: AllocationProblem) -> bool:
    """Whether some allocation meets every demand within the risk rule (Hall's condition on ordered levels).

    A user may take any fund at or below its tolerance, so for every level L on the scale: the users who
    tolerate L or more must cover the minimum demand of the funds at L or above, and (without holdout) the
    users below L must fit into the maximum demand of the funds below L. The totals must fit as well.

    Parameters
    ----------
    problem : AllocationProblem

    Returns
    -------
    bool
    """
    if problem.eligible is not None or problem.constraints:  # no ordered structure left: the MILP decides
        return milp_optimum(problem)[1] is not None
    user_rank, fund_rank = _ranks(problem)
    lo, hi = _demands(problem)
    n = len(user_rank)
    if lo.sum() > n or (not problem.holdout and hi.sum() < n):
        return False
    for level in np.unique(np.concatenate([user_rank, fund_rank])):
        if np.count_nonzero(user_rank >= level) < lo[fund_rank >= level].sum():
            return False
        if not problem.holdout and np.count_nonzero(user_rank < level) > hi[fund_rank < level].sum():
            return False
    return True


def _fail(message: str) -> None:
    raise AssertionError(message)


def assert_valid_result(result: Result, *, rtol: float = 1e-9) -> None:
    """Assert that a result says what an independent recount of its allocation says.

    Checks, against :func:`recount`: every count of ``result.checks``; that ``optimal`` and ``feasible``
    are claimed only for allocations that break no rule, and that any other allocation that breaks a rule
    has status ``error`` (or ``time_limit``) and a message naming each broken rule; that ``infeasible`` is
    claimed only for problems that are (see :func:`feasible`); the objective; that the bound is at least
    the ETV of a valid allocation, equals the dual value of the result's prices when it has prices, and
    equals the objective when ``optimal`` is claimed.

    Parameters
    ----------
    result : Result
    rtol : float
        Relative tolerance on the objective and the bound.

    Raises
    ------
    AssertionError
        Describing the first mismatch (this is a test helper: it never validates user input).

    Notes
    -----
    The recount reads the grid into memory (a Dask-backed grid is loaded whole), in blocks of users
    where it needs a (users, funds) temporary.
    """
    problem = result.problem
    again = recount(problem, result.codes)
    checks = result.checks
    for name in ("unplaced", "invalid", "risk_violations", "demand_misses", "ineligible"):
        got, want = getattr(checks, name), getattr(again, name)
        if got != want:
            _fail(f"result.checks.{name} is {got!r} but a recount gives {want!r}")
    if checks.ok != again.ok:
        _fail(f"result.checks.ok is {checks.ok!r} but a recount gives {again.ok!r}")
    for name, want in (("counts", again.counts), ("miss_per_fund", again.miss_per_fund)):
        got = np.asarray(getattr(checks, name).values)
        if not np.array_equal(got, want):
            _fail(f"result.checks.{name} is {got.tolist()} but a recount gives {want.tolist()}")

    table = checks.constraints
    for name, want in (again.activity or {}).items():
        got = float(table.loc[name, "activity"]) if table is not None and name in table.index else None
        if got is None or not abs(got - want) <= 1e-9 * max(1.0, abs(want)):
            _fail(f"result.checks.constraints says activity {got!r} for {name!r} but a recount gives {want!r}")
        if bool(table.loc[name, "ok"]) == (name in again.broken):
            _fail(f"result.checks.constraints says ok={bool(table.loc[name, 'ok'])} for {name!r}; a recount disagrees")

    if result.status is Status.INFEASIBLE:
        if feasible(problem):
            _fail("status 'infeasible' for a problem that Hall's condition on its risk levels says is feasible")
        return
    if result.status in (Status.OPTIMAL, Status.FEASIBLE) and not again.ok:
        _fail(f"status {result.status.value!r} claimed for an allocation that breaks rules: {again}")
    if not again.ok:
        if result.status not in (Status.ERROR, Status.TIME_LIMIT):
            _fail(f"status {result.status.value!r} for an allocation that breaks rules")
        for name, words in RULE_WORDS.items():
            if getattr(again, name) and words not in result.message:
                _fail(f"the allocation breaks a rule ({name} = {getattr(again, name)}) but the message "
                      f"does not say {words!r}: {result.message!r}")
        for name in again.broken:
            if repr(name) not in result.message:
                _fail(f"side constraint {name!r} is broken but the message does not name it: {result.message!r}")

    tol = rtol * max(1.0, abs(again.objective))
    if not abs(result.objective - again.objective) <= tol:
        _fail(f"objective {result.objective!r} but the grid gives {again.objective!r}")
    if not np.isfinite(result.bound):
        _fail(f"bound {result.bound!r} is not a number")
    if again.ok and result.bound < again.objective - tol:
        _fail(f"bound {result.bound!r} is below the ETV {again.objective!r} of a valid allocation")
    if result.prices is not None:
        value = dual_value(problem, result.prices.values, result.multipliers)
        if not abs(value - result.bound) <= rtol * max(1.0, abs(value)):
            _fail(f"bound {result.bound!r} but the dual value of the result's prices is {value!r}")
    if result.status is Status.OPTIMAL and result.bound - again.objective > 1e-6 * max(1.0, abs(result.bound)):
        _fail(f"optimal claimed with a gap of {result.bound - again.objective!r} to the bound")


def brute_force(problem: AllocationProblem, limit: int = 2_000_000) -> tuple[float, np.ndarray | None]:
    """The optimum of a tiny problem, by enumerating every allocation the risk rule allows.

    Parameters
    ----------
    problem : AllocationProblem
    limit : int
        Most allocations to enumerate.

    Returns
    -------
    (float, ndarray of int32 or None)
        The best total ETV and one allocation reaching it (fund positions, -1 for none);
        ``(nan, None)`` when no allocation meets every demand.
    """
    etv = np.asarray(problem.etv.values, dtype=np.float64)
    n, k = etv.shape
    user_rank, fund_rank = _ranks(problem)
    lo, hi = _demands(problem)
    mask = _mask(problem)
    sides = side_constraints(problem)
    options = [[j for j in range(k) if user_rank[i] >= fund_rank[j] and mask[i, j]] + ([-1] if problem.holdout else [])
               for i in range(n)]
    size = float(np.prod([len(o) for o in options], dtype=float))
    if size > limit:
        raise ValueError(f"brute_force: {size:.0f} allocations exceed the limit of {limit}")
    best, best_codes = float("nan"), None
    for combo in itertools.product(*options):
        codes = np.array(combo, dtype=np.int64)
        counts = np.bincount(codes[codes >= 0], minlength=k)
        if (counts < lo).any() or (counts > hi).any():
            continue
        placed = np.flatnonzero(codes >= 0)
        if any(not lw - 1e-9 <= coef[placed, codes[placed]].sum() <= h + 1e-9 for _, lw, h, coef in sides):
            continue
        value = float(sum(etv[i, j] for i, j in enumerate(combo) if j >= 0))
        if best_codes is None or value > best:
            best, best_codes = value, codes.astype(np.int32)
    return best, best_codes


def milp_optimum(problem: AllocationProblem, *, relax: bool = False) -> tuple[float, np.ndarray | None]:
    """The optimum of a small problem as the mixed-integer program of its definition (SciPy's ``milp``).

    maximise ``sum etv[i, j] x[i, j]`` over the pairs the risk rule and the eligibility mask allow, with
    ``x`` binary, each user in exactly one fund (at most one with holdout), each fund's count within its
    demand and each side constraint's ``sum a[i, j] x[i, j]`` within its bounds.

    Parameters
    ----------
    problem : AllocationProblem
    relax : bool
        Solve the linear relaxation (``0 <= x <= 1``) instead. Without side constraints the constraint
        matrix is totally unimodular, so its optimum equals the integer one.

    Returns
    -------
    (float, ndarray of int32 or None)
        The optimum and an allocation reaching it (rounded from ``x`` with ``relax``); ``(nan, None)``
        when no allocation meets every demand.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    etv = np.asarray(problem.etv.values, dtype=np.float64)
    n, k = etv.shape
    user_rank, fund_rank = _ranks(problem)
    users, funds = np.nonzero((user_rank[:, None] >= fund_rank[None, :]) & _mask(problem))
    m = len(users)
    lo, hi = _demands(problem)
    each_user = csr_array((np.ones(m), (users, np.arange(m))), shape=(n, m))
    each_fund = csr_array((np.ones(m), (funds, np.arange(m))), shape=(k, m))
    constraints = [
        LinearConstraint(each_user, 0 if problem.holdout else 1, 1),
        LinearConstraint(each_fund, lo, hi),
    ]
    for _, lw, h, coef in side_constraints(problem):
        constraints.append(LinearConstraint(coef[users, funds][None, :], lw, h))
    if m == 0 or ((each_user.sum(axis=1) == 0).any() and not problem.holdout):
        # nobody may take any fund (or some user none): feasible only if nobody has to
        if problem.holdout and lo.sum() == 0:
            return 0.0, np.full(n, -1, dtype=np.int32)
        return float("nan"), None
    out = milp(-etv[users, funds], constraints=constraints, bounds=Bounds(0, 1),
               integrality=np.zeros(m) if relax else np.ones(m))
    if out.status == 2:  # infeasible
        return float("nan"), None
    if not out.success:
        raise RuntimeError(f"milp_optimum: HiGHS ended with {out.message}")
    codes = np.full(n, -1, dtype=np.int32)
    chosen = out.x > 0.5
    codes[users[chosen]] = funds[chosen]
    return float(-out.fun), codes
