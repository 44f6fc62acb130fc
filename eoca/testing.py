"""Helpers for users' own tests: check a result independently and brute-force tiny problems."""

from __future__ import annotations

import itertools

import numpy as np
import xarray as xr

from eoca.checks import check_allocation, dual_bound
from eoca.problem import AllocationProblem
from eoca.result import Result, Status

__all__ = ["assert_valid_result", "brute_force", "etv_grid"]


def etv_grid(values, users=None, funds=None) -> xr.DataArray:
    """A small ETV grid for examples and tests: users "u1".., funds "f1".. unless ids are given."""
    values = np.asarray(values, dtype=float)
    users = list(users) if users is not None else [f"u{i + 1}" for i in range(values.shape[0])]
    funds = list(funds) if funds is not None else [f"f{j + 1}" for j in range(values.shape[1])]
    return xr.DataArray(values, dims=("user", "fund"), coords={"user": users, "fund": funds}, name="etv")


def assert_valid_result(result: Result, *, rtol: float = 1e-9) -> None:
    """Assert that a result's allocation, checks, objective and bound are what an independent recount says.

    Raises AssertionError (not used for input validation, only in tests) describing the first mismatch.
    """
    recount = check_allocation(result.problem, result.codes)
    for name in ("ok", "unplaced", "demand_misses", "risk_violations", "invalid"):
        got, want = getattr(result.checks, name), getattr(recount, name)
        if got != want:
            raise AssertionError(f"result.checks.{name} is {got!r} but a recount gives {want!r}")
    if result.status in (Status.OPTIMAL, Status.FEASIBLE) and not recount.ok:
        raise AssertionError(f"status {result.status.value!r} claimed for an allocation that breaks rules: "
                             f"{recount.describe()}")
    if result.status is not Status.INFEASIBLE:
        tol = rtol * max(1.0, abs(recount.objective))
        if not np.isclose(result.objective, recount.objective, rtol=rtol, atol=tol):
            raise AssertionError(f"objective {result.objective!r} but the grid gives {recount.objective!r}")
        if recount.ok and result.bound < recount.objective - tol:
            raise AssertionError(f"bound {result.bound!r} is below the allocation's ETV {recount.objective!r}")
        if result.prices is not None:
            again = dual_bound(result.problem.compile(), result.prices.values)
            if not np.isclose(again, result.bound, rtol=rtol, atol=tol):
                raise AssertionError(f"bound {result.bound!r} does not match its prices' dual value {again!r}")
        if result.status is Status.OPTIMAL and result.bound - recount.objective > 1e-6 * max(1.0, abs(result.bound)):
            raise AssertionError(f"optimal claimed with gap {result.bound - recount.objective!r} to the bound")


def brute_force(problem: AllocationProblem, limit: int = 2_000_000) -> tuple[float, np.ndarray | None]:
    """The optimum of a tiny problem by enumerating every allocation; ``(nan, None)`` if none is feasible."""
    c = problem.compile()
    n, k = c.n_users, c.n_funds
    options = [[j for j in range(k) if c.user_level[i] >= c.fund_level[j]] + ([-1] if c.holdout else [])
               for i in range(n)]
    size = int(np.prod([len(o) for o in options], dtype=float)) if n else 1
    if size > limit:
        raise ValueError(f"brute_force: {size} allocations exceed the limit of {limit}")
    best, best_codes = float("nan"), None
    for combo in itertools.product(*options):
        codes = np.array(combo, dtype=np.int64)
        counts = np.bincount(codes[codes >= 0], minlength=k)
        if (counts < c.demand_min).any() or (counts > c.demand_max).any():
            continue
        value = float(sum(c.etv[i, j] for i, j in enumerate(combo) if j >= 0))
        if best_codes is None or value > best:
            best, best_codes = value, codes.astype(np.int32)
    return best, best_codes
