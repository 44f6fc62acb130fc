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

__all__ = ["FAMILIES", "FUND_TYPES", "synthetic_problem", "synthetic_grid", "constrained_problem"]

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


def _draw(n_users: int, n_funds: int, family: str, seed: int):
    """The grid, fund table, tolerances and one allocation drawn within the risk rule (fund per user)."""
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
    return grid, names, levels, tolerance, drawn


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
    grid, names, levels, tolerance, drawn = _draw(n_users, n_funds, family, seed)
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


def constrained_problem(n_users: int, n_funds: int = 8, *, seed: int = 0, eligible_share: float = 0.9,
                        family: str = "matching") -> AllocationProblem:
    """A delivery with the side rules an operations team writes, feasible by construction.

    On top of :func:`synthetic_problem`'s family: an eligibility mask allowing about ``eligible_share``
    of the pairs, and six constraints whose bounds are the activities of the drawn allocation (which the
    mask allows), so that the rules hold for it but bind against the unconstrained optimum: new users
    (30%) in the two lowest-risk funds at least, high-value users (top 10% by mean ETV) in the first fund
    at most, a group in the two riskiest funds at most, a group in the third fund at least, a commission
    budget per user on the four middle funds, and a cost per (user, fund) pair.
    """
    from eoca.constraints import Linear, Quota

    grid, names, levels, tolerance, drawn = _draw(n_users, n_funds, family, seed)
    rng = np.random.default_rng(seed + 7)
    ids = grid[USER].values
    mask = rng.random(size=(n_users, n_funds)) < eligible_share
    mask[np.arange(n_users), drawn] = True
    new = rng.random(n_users) < 0.3
    value = grid.values.mean(axis=1)
    high = value >= np.quantile(value, 0.9)
    group_a, group_b = rng.random(n_users) < 0.4, rng.random(n_users) < 0.5
    commission = rng.gamma(2.0, 5.0, size=n_users)
    cost = rng.random(size=(n_users, n_funds)) * np.linspace(1.0, 2.0, n_funds)

    def count(users, funds):
        return int((users & np.isin(drawn, funds)).sum())

    low, risky, mid = [0, 1 % n_funds], [n_funds - 2, n_funds - 1], list(range(n_funds // 4, n_funds - n_funds // 4))
    on_mid = np.isin(drawn, mid)
    constraints = [
        Quota(users=pd.Series(new, index=ids), funds=[names[j] for j in set(low)], at_least=count(new, low),
              name="new users in low-risk funds"),
        Quota(users=pd.Series(high, index=ids), funds=[names[0]], at_most=count(high, [0]),
              name=f"high value in {names[0]}"),
        Quota(users=pd.Series(group_a, index=ids), funds=[names[j] for j in set(risky)],
              at_most=count(group_a, risky), name="group A in the riskiest funds"),
        Quota(users=pd.Series(group_b, index=ids), funds=[names[2 % n_funds]], at_least=count(group_b, [2 % n_funds]),
              name=f"group B in {names[2 % n_funds]}"),
        Linear(weights=pd.Series(commission, index=ids), funds=[names[j] for j in mid],
               at_most=float(commission[on_mid].sum()), name="commission budget"),
        Linear(weights=xr.DataArray(cost, dims=(USER, FUND), coords={USER: ids, FUND: names}),
               at_most=float(cost[np.arange(n_users), drawn].sum()), name="cost budget"),
    ]
    demand = np.bincount(drawn, minlength=n_funds)
    return AllocationProblem(
        etv=grid,
        demand=dict(zip(names, demand.tolist())),
        risk_level=dict(zip(names, levels.tolist())),
        risk_tolerance=pd.Series(tolerance, index=ids),
        eligible=xr.DataArray(mask, dims=(USER, FUND), coords={USER: ids, FUND: names}),
        constraints=constraints,
        name=f"constrained-{family}-{n_users}x{n_funds}",
    )
