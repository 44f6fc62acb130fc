"""Synthetic allocation problems for tests, benchmarks, scenarios and demos.

Each family is feasible by construction: demands are the fund counts of an allocation drawn within the
risk rule, so every instance has a solution, and the families differ in how that allocation relates to
users' preferences.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from eoca.errors import ValidationError
from eoca.problem import FUND, USER, AllocationProblem

__all__ = ["FAMILIES", "FUND_TYPES", "synthetic_problem", "synthetic_grid"]

#: Instance families: how demands relate to preferences, and how degenerate the grid is.
FAMILIES = {
    "matching": "demands drawn from users' preferred funds (mostly their best eligible fund)",
    "fighting": "demands drawn from users' least preferred eligible funds",
    "tight": "tolerances equal the risk of the fund drawn for the user, so risk levels are exactly tight",
    "ties": "ETV rounded to four distinct values",
    "zeros": "90% of ETV entries exactly zero",
}

#: The eight promoted fund types of a typical delivery, with risk levels R1 (lowest) to R5.
FUND_TYPES = {
    "money_market": 1,
    "short_bond": 1,
    "bond": 2,
    "fixed_income_plus": 2,
    "balanced": 3,
    "index": 3,
    "equity": 4,
    "sector_qdii": 5,
}


def _fund_table(n_funds: int) -> tuple[list[str], np.ndarray]:
    if n_funds == len(FUND_TYPES):
        return list(FUND_TYPES), np.array(list(FUND_TYPES.values()))
    names = [f"fund_{j:02d}" for j in range(n_funds)]
    levels = 1 + (np.arange(n_funds) * 5) // max(n_funds, 1)
    return names, levels


def synthetic_grid(n_users: int, n_funds: int = 8, *, family: str = "matching", seed: int = 0) -> xr.DataArray:
    """An ETV grid shaped like a model's output: purchase probability times a heavy-tailed amount.

    Returns a DataArray over ("user", "fund") with integer user ids and fund-type names.
    """
    rng = np.random.default_rng(seed)
    names, _ = _fund_table(n_funds)
    taste = rng.normal(size=(n_users, 3)).astype(np.float32)
    fund_taste = rng.normal(size=(3, n_funds)).astype(np.float32)
    logit = taste @ fund_taste - 3.0 + rng.normal(0, 0.5, size=n_funds).astype(np.float32)
    etv = np.empty((n_users, n_funds), dtype=np.float64)
    np.exp(-logit, out=etv)
    etv += 1.0
    np.reciprocal(etv, out=etv)  # purchase probability
    etv *= rng.lognormal(mean=8.0, sigma=1.0, size=(n_users, 1))  # the user's typical amount
    if family == "ties":
        # four distinct values: amounts bucketed like a coarse model's output
        edges = np.quantile(etv[: min(n_users, 100_000)], [0.5, 0.8, 0.95])
        etv = np.select([etv < edges[0], etv < edges[1], etv < edges[2]], [0.0, 100.0, 500.0], 2000.0)
    elif family == "zeros":
        etv[rng.random(size=etv.shape) < 0.9] = 0.0
    return xr.DataArray(etv, dims=(USER, FUND), coords={USER: np.arange(n_users), FUND: names}, name="etv")


def synthetic_problem(
    n_users: int,
    n_funds: int = 8,
    *,
    family: str = "matching",
    seed: int = 0,
    holdout: bool = False,
) -> AllocationProblem:
    """A feasible delivery of ``n_users`` users and ``n_funds`` fund types with risk levels 1 (R1) to 5 (R5).

    Parameters
    ----------
    n_users, n_funds : int
    family : {"matching", "fighting", "tight", "ties", "zeros"}
        See :data:`FAMILIES`.
    seed : int
    holdout : bool
        Shrink demands by 10% and allow users to receive no fund.
    """
    if family not in FAMILIES:
        raise ValidationError("family", f"must be one of {sorted(FAMILIES)}; got {family!r}")
    if n_users < 1 or n_funds < 1:
        raise ValidationError("n_users", f"need at least one user and one fund; got {n_users} x {n_funds}")
    rng = np.random.default_rng(seed + 1)
    grid = synthetic_grid(n_users, n_funds, family=family, seed=seed)
    names, levels = _fund_table(n_funds)
    tolerance = rng.choice(np.arange(1, 6), size=n_users, p=[0.15, 0.3, 0.3, 0.15, 0.1])
    eligible = tolerance[:, None] >= levels[None, :]
    # draw one allocation within the risk rule; its fund counts become the demands
    noise = rng.random(size=(n_users, n_funds))
    etv = grid.values
    if family in ("matching", "ties", "zeros"):
        score = np.where(noise < 0.75, etv, noise * etv.max())
    elif family == "fighting":
        score = -etv
    else:  # tight
        score = noise
    score = np.where(eligible, score, -np.inf)
    drawn = np.argmax(score, axis=1)
    if family == "tight":
        # tolerance equal to the drawn fund's risk for almost everyone: users with t >= L barely cover
        # the demand of funds with risk >= L
        tolerance = np.where(rng.random(n_users) < 0.97, levels[drawn], tolerance)
    demand = np.bincount(drawn, minlength=n_funds)
    if holdout:
        demand = (demand * 0.9).astype(np.int64)
    return AllocationProblem(
        etv=grid,
        demand=dict(zip(names, demand.tolist())),
        risk_level=dict(zip(names, levels.tolist())),
        risk_tolerance=pd.Series(tolerance, index=grid[USER].values),
        holdout=holdout,
        name=f"{family}-{n_users}x{n_funds}",
    )
