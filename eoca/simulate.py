"""Simulated deliveries on a synthetic platform whose ground truth decides who buys and how much.

This is how eoca replays the paper's online A/B tests (Table 3) offline: each framework (an ETV model
plus an allocation strategy) allocates the same delivery, then the platform's true click, conversion and
amount laws draw what users actually do with the fund they were shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from eoca.errors import ValidationError
from eoca.problem import FUND, USER, AllocationProblem

__all__ = ["DeliveryOutcome", "simulate_delivery", "contract_demands", "delivery_problem", "allocation_value_ratio",
           "true_optimum", "lift_table"]


@dataclass(frozen=True)
class DeliveryOutcome:
    """What a delivery produced: counts and amounts, and the per-mille metrics of the paper (eqs. 17-18)."""

    deliveries: int
    conversions: int
    amount: float
    expected_amount: float

    @property
    def cpmd(self) -> float:
        """Conversions per mille deliveries (eq. 17)."""
        return 1000.0 * self.conversions / self.deliveries if self.deliveries else float("nan")

    @property
    def tapmd(self) -> float:
        """Transaction amount per mille deliveries (eq. 18)."""
        return 1000.0 * self.amount / self.deliveries if self.deliveries else float("nan")

    @property
    def expected_tapmd(self) -> float:
        """TAPMD in expectation under the true laws (no sampling noise)."""
        return 1000.0 * self.expected_amount / self.deliveries if self.deliveries else float("nan")


def _pairs(grid: xr.DataArray, users: np.ndarray, funds: np.ndarray) -> np.ndarray:
    g = grid.transpose(USER, FUND)
    rows = pd.Index(g[USER].values).get_indexer(users)
    cols = pd.Index(g[FUND].values).get_indexer(funds)
    if (rows < 0).any() or (cols < 0).any():
        raise ValidationError("assignment", "names users or funds the platform's truth does not have")
    return np.asarray(g.values)[rows, cols]


def simulate_delivery(platform, assignment: xr.DataArray, seed: int = 0) -> DeliveryOutcome:
    """Draw users' responses to the funds they were shown, from the platform's true laws.

    Parameters
    ----------
    platform : eoca.data.SyntheticPlatform
        Carries ``true_pctcvr``, ``true_mu``, ``true_sigma`` and ``true_etv`` over ("user", "fund").
    assignment : DataArray over "user"
        Fund id per user (missing: not delivered).
    seed : int
    """
    shown = assignment.to_series().dropna()
    users = shown.index.to_numpy()
    funds = shown.to_numpy()
    p = _pairs(platform.true_pctcvr, users, funds)
    mu = _pairs(platform.true_mu, users, funds)
    sigma = _pairs(platform.true_sigma, users, funds)
    expected = _pairs(platform.true_etv, users, funds)
    rng = np.random.default_rng(seed)
    converted = rng.random(len(users)) < p
    amount = np.where(converted, np.expm1(rng.normal(mu, sigma)), 0.0)
    return DeliveryOutcome(
        deliveries=len(users),
        conversions=int(converted.sum()),
        amount=float(np.maximum(amount, 0.0).sum()),
        expected_amount=float(expected.sum()),
    )


def contract_demands(risk_tolerance: np.ndarray, risk_level: np.ndarray, seed: int = 0,
                     share: Sequence[float] | None = None) -> np.ndarray:
    """Fund demands a delivery can meet: the counts of a random allocation within the risk rule.

    Fund j is drawn for a user with weight ``share[j]`` among the funds the user may be shown. Users who
    may be shown no fund at all are not part of a delivery (see :func:`delivery_problem`).
    """
    rng = np.random.default_rng(seed)
    k = len(risk_level)
    weights = np.ones(k) if share is None else np.asarray(share, dtype=float)
    eligible = risk_tolerance[:, None] >= risk_level[None, :]
    eligible = eligible[eligible.any(axis=1)]
    w = np.where(eligible, weights[None, :], 0.0) * rng.random(eligible.shape)
    return np.bincount(np.argmax(w, axis=1), minlength=k)


def delivery_problem(platform, etv: xr.DataArray, demand: np.ndarray, name: str = "delivery") -> AllocationProblem:
    """The allocation problem of delivering ``platform``'s funds to its users with ETV from a model.

    Users whose risk tolerance is below every fund's risk level cannot be shown any promoted fund and are
    left out of the delivery.
    """
    data = platform.data
    users = data.users.set_index("user_id")
    funds = data.funds.set_index("fund_id")
    reachable = users.index[users["risk_tolerance"].to_numpy() >= funds["risk_level"].min()]
    users = users.loc[reachable]
    return AllocationProblem(
        etv=etv.sel(user=reachable.to_numpy()),
        demand=dict(zip(funds.index, np.asarray(demand).tolist())),
        risk_level=funds["risk_level"],
        risk_tolerance=users["risk_tolerance"],
        name=name,
    )


def true_optimum(platform, demand: np.ndarray) -> float:
    """The true value of the best delivery of ``demand``: the exact allocation of ``platform.true_etv``."""
    from eoca.solve import solve

    best = solve(delivery_problem(platform, platform.true_etv, demand, name="truth"))
    if not best.checks.ok:
        raise ValidationError("etv", f"the allocation breaks the contract: {best.checks.describe()}")
    return best.objective


def allocation_value_ratio(platform, etv: xr.DataArray, *, demand: np.ndarray | None = None, seed: int = 0,
                           optimum: float | None = None) -> float:
    """What a model's grid is worth to the platform: the true value of the exact allocation computed from
    ``etv``, over the true optimum.

    Both allocations serve the same contract (:func:`delivery_problem`: every user who may be shown a
    fund, the funds' risk levels and the users' tolerances, and ``demand``, by default
    :func:`contract_demands` drawn with ``seed``, as the demo builds it); the model's allocation is
    valued with the platform's ``true_etv``. 1 for the true grid; the ETV a model's errors cost the
    platform is ``1 - ratio`` of the best it could have had.

    Parameters
    ----------
    platform : eoca.data.SyntheticPlatform
    etv : DataArray over ("user", "fund")
        A model's grid for every user of the platform (e.g. ``predictor.predict(test)``).
    demand : array of int, optional
    seed : int
    optimum : float, optional
        :func:`true_optimum` of the same contract, when several grids are valued against it.

    Returns
    -------
    float
    """
    from eoca.solve import solve

    users, funds = platform.data.users, platform.data.funds
    if demand is None:
        demand = contract_demands(users["risk_tolerance"].to_numpy(), funds["risk_level"].to_numpy(), seed=seed)
    chosen = solve(delivery_problem(platform, etv, demand, name="model"))
    if not chosen.checks.ok:
        raise ValidationError("etv", f"the allocation breaks the contract: {chosen.checks.describe()}")
    if optimum is None:
        optimum = true_optimum(platform, demand)
    value = _pairs(platform.true_etv, chosen.problem.users.to_numpy(), chosen.assignment.to_numpy()).sum()
    return float(value / optimum) if optimum > 0 else float("nan")


def lift_table(rows: pd.DataFrame, baseline: str, by: str = "framework") -> pd.DataFrame:
    """Mean CPMD/TAPMD per framework over seeds, with lifts over ``baseline`` and 95% intervals.

    ``rows`` has one row per (seed, framework) with columns ``seed``, ``framework``, ``cpmd``, ``tapmd``.
    Lifts are computed per seed (paired: same platform, same users) and summarised by their mean and a
    normal-approximation 95% interval over seeds.
    """
    base = rows[rows[by] == baseline].set_index("seed")
    out = []
    for name, df in rows.groupby(by, sort=False):
        df = df.set_index("seed")
        entry = {by: name, "seeds": len(df)}
        for metric in ("cpmd", "tapmd", "expected_tapmd"):
            if metric not in df:
                continue
            entry[metric] = df[metric].mean()
            lift = (df[metric] / base[metric].reindex(df.index) - 1.0) * 100.0
            half = 1.96 * lift.std(ddof=1) / np.sqrt(len(lift)) if len(lift) > 1 else float("nan")
            entry[f"{metric}_lift_%"] = lift.mean()
            entry[f"{metric}_lift_ci95"] = half
        out.append(entry)
    return pd.DataFrame(out)
