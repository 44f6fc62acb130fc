"""What a solve returns: a frozen record of the allocation, its independent checks and its bound."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from eoca.problem import FUND, USER, user_vector

if TYPE_CHECKING:
    from eoca.problem import AllocationProblem

__all__ = ["Status", "Checks", "Result"]


class Status(enum.StrEnum):
    """Outcome of a solve.

    ``optimal``: proven optimal. ``feasible``: meets every demand and risk rule, optimality not proven.
    ``infeasible``: no allocation can meet the demands within the risk rule (see the message).
    ``time_limit``: stopped by a time limit; the allocation is the best found (check ``checks.ok``).
    ``error``: the solver failed or returned an allocation that breaks a rule (see ``checks``).
    """

    OPTIMAL = "optimal"
    FEASIBLE = "feasible"
    INFEASIBLE = "infeasible"
    TIME_LIMIT = "time_limit"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


#: Users whose grid rows are read at once where a lazy grid is read block by block.
_VALUE_ROWS = 1 << 20


def assigned_values(etv: Any, codes: np.ndarray) -> np.ndarray:
    """ETV of each user's fund (0 for a code outside ``0..n_funds-1``), in the grid's dtype. A Dask-backed
    grid is read one block of users at a time, never whole."""
    k = etv.shape[1]
    out = np.zeros(len(codes), dtype=np.dtype(etv.dtype))
    for s in range(0, len(codes), _VALUE_ROWS):
        part = codes[s:s + _VALUE_ROWS]
        placed = (part >= 0) & (part < k)
        block = np.asarray(etv[s:s + _VALUE_ROWS])
        out[s:s + len(part)] = np.where(placed, block[np.arange(len(part)), np.where(placed, part, 0)], 0)
    return out


@dataclass(frozen=True)
class Checks:
    """The independent checker's report on an allocation (see :func:`eoca.checks.check_allocation`).

    Attributes
    ----------
    ok : bool
        True iff no rule is broken.
    unplaced : int
        Users with no fund although the problem does not allow holdout.
    demand_misses : int
        Total users by which fund counts fall outside their demand (over plus under).
    risk_violations : int
        Users given a fund above their risk tolerance.
    invalid : int
        Entries that name no fund of the problem.
    counts : xarray.DataArray over "fund"
        Users placed in each fund.
    miss_per_fund : xarray.DataArray over "fund"
        Signed miss per fund: positive over the maximum, negative under the minimum, 0 within the demand.
    objective : float
        Total ETV of the allocation, recomputed from the grid.
    ineligible : int
        Users given a pair the eligibility mask forbids.
    constraints : pandas.DataFrame or None
        One row per side constraint (indexed by name): ``activity`` recounted from the allocation,
        ``at_least``, ``at_most`` (NaN where absent), ``slack`` (distance to the nearer bound; negative
        when broken) and ``ok``. None when the problem has no side constraints.
    """

    ok: bool
    unplaced: int
    demand_misses: int
    risk_violations: int
    invalid: int
    counts: xr.DataArray
    miss_per_fund: xr.DataArray
    objective: float
    ineligible: int = 0
    constraints: pd.DataFrame | None = None

    def describe(self) -> str:
        if self.ok:
            return "all checks pass: every demand met, every user within risk tolerance" + (
                f", every side constraint met ({len(self.constraints)})" if self.constraints is not None else "")
        parts = []
        if self.risk_violations:
            parts.append(f"{self.risk_violations:,} users above their risk tolerance")
        if self.demand_misses:
            missed = [f"{f}: {int(m):+d}" for f, m in zip(self.miss_per_fund[FUND].values, self.miss_per_fund.values) if m]
            parts.append(f"demand missed by {self.demand_misses:,} users ({', '.join(missed)})")
        if self.unplaced:
            parts.append(f"{self.unplaced:,} users unplaced")
        if self.invalid:
            parts.append(f"{self.invalid:,} entries name no fund of the problem")
        if self.ineligible:
            parts.append(f"{self.ineligible:,} users shown a fund the eligibility mask forbids")
        if self.constraints is not None:
            for name, row in self.constraints[~self.constraints["ok"]].iterrows():
                bound = row["at_least"] if row["activity"] < row["at_least"] else row["at_most"]
                parts.append(f"constraint {name!r} broken: activity {row['activity']:,.6g} against "
                             f"{'at_least' if row['activity'] < row['at_least'] else 'at_most'} {bound:,.6g}")
        return "; ".join(parts)


@dataclass(frozen=True, repr=False, eq=False)
class Result:
    """The outcome of :func:`eoca.solve`. Frozen; the problem it answers is never modified.

    Attributes
    ----------
    problem : AllocationProblem
    codes : ndarray of int32, shape (n_users,)
        Fund index per user (-1: no fund). ``assignment`` is the labelled view.
    objective : float
        Total ETV, recomputed by the checker.
    status : Status
    checks : Checks
    bound : float
        A proven upper bound on the optimum: the Lagrangian dual value of the solver's prices, or of
        optimal prices computed for the purpose when the solver has none.
    prices : xarray.DataArray over "fund" or None
        The solver's dual price per fund: the marginal ETV of the fund's contract, i.e. how much the best
        total ETV rises with one more contracted user for the fund (falls with one fewer). Moving one
        contracted user from fund a to fund b changes it by about ``price[b] - price[a]``. None when the
        solver has no prices.
    timings : dict
        Seconds of the solver's phases (at least "solve"), "check" (the independent recount and the dual
        bound, one read of the grid) and, for a solver without prices, "bound" (computing optimal prices
        for the bound). "compile" when the solve spent time in numba's compiler (not counted in
        "solve" or "check"): compiling kernels on their first call or loading them from the on-disk cache
        (once per process); "jit" the part of it spent compiling, which ``eoca warmup`` pays ahead.
    solver : str
    message : str
    stats : dict
        Solver counters (for example users moved by a repair).
    multipliers : ndarray of float or None
        The solver's multiplier per side constraint (>= 0 on a binding maximum, <= 0 on a binding minimum),
        part of the bound's certificate; None without side constraints or when the solver has none.
    """

    problem: AllocationProblem
    codes: np.ndarray
    objective: float
    status: Status
    checks: Checks
    bound: float
    prices: xr.DataArray | None
    timings: dict[str, float]
    solver: str
    message: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    multipliers: np.ndarray | None = None

    @property
    def constraints(self) -> pd.DataFrame | None:
        """One row per side constraint (indexed by name): the checker's ``activity``, ``at_least``,
        ``at_most``, ``slack`` and ``ok``, and ``price``: the ETV the optimum gains per unit by which the
        binding bound is relaxed (``abs`` of the solver's multiplier; NaN when the solver has none).
        None when the problem has no side constraints."""
        table = self.checks.constraints
        if table is None:
            return None
        table = table.copy()
        price = np.full(len(table), np.nan) if self.multipliers is None else np.abs(self.multipliers)
        table.insert(len(table.columns) - 1, "price", price)
        return table

    @property
    def assignment(self) -> xr.DataArray:
        """The fund id given to each user, over "user"; missing (None) for a user with no fund.

        Built from :attr:`codes` by one take from the fund ids (no loop over users); the user index is
        the problem's own (not copied).
        """
        funds = self.problem.funds.to_numpy()
        codes = self.codes
        if codes.size and (codes.min() < 0 or codes.max() >= len(funds)):
            # any code that names no fund (no fund, or an invalid one) takes the last entry: None
            labels = np.empty(len(funds) + 1, dtype=object)
            labels[:-1] = funds
            values = labels.take(np.where((codes >= 0) & (codes < len(funds)), codes, len(funds)))
        else:
            values = funds.take(codes)
        return user_vector(self.problem.etv, values, "fund")

    @property
    def counts(self) -> xr.DataArray:
        """Users placed in each fund, over "fund" (the checker's count)."""
        return self.checks.counts

    @property
    def gap(self) -> float:
        """Relative gap (bound - objective) / bound; 0 for a proven optimum.

        NaN when undefined: no allocation, or one that breaks a rule (its ETV is not bounded by the bound).
        """
        if not self.checks.ok or not np.isfinite(self.bound) or not np.isfinite(self.objective):
            return float("nan")
        diff = max(self.bound - self.objective, 0.0)
        return diff / abs(self.bound) if self.bound else (0.0 if diff == 0 else float("inf"))

    @property
    def ok(self) -> bool:
        """True when the allocation can be delivered: every rule met (optimal, feasible or time-limited)."""
        return self.checks.ok and self.status in (Status.OPTIMAL, Status.FEASIBLE, Status.TIME_LIMIT)

    def to_frame(self) -> pd.DataFrame:
        """One row per user: ``user`` id, ``fund`` (a categorical over the fund ids, missing for no fund)
        and ``etv`` of the user's fund (0 for no fund), built from :attr:`codes` without a loop."""
        etv = self.problem.compile().etv
        placed = (self.codes >= 0) & (self.codes < etv.shape[1])  # an invalid code names no fund
        codes = np.where(placed, self.codes, -1)
        value = assigned_values(etv, codes)
        fund = pd.Categorical.from_codes(codes, categories=self.problem.funds)
        return pd.DataFrame({USER: self.problem.users.to_numpy(), FUND: fund, "etv": value}, copy=False)

    def summary(self) -> pd.DataFrame:
        """Per fund: users placed against demand, the miss, the ETV delivered and the price."""
        c = self.problem.compile()
        etv_per_fund = np.zeros(c.n_funds)
        placed = self.codes >= 0
        if placed.any():
            rows = np.nonzero(placed)[0]
            np.add.at(etv_per_fund, self.codes[placed], c.etv[rows, self.codes[placed]])
        table = pd.DataFrame(
            {
                "users": self.checks.counts.values,
                "demand_min": c.demand_min,
                "demand_max": c.demand_max,
                "miss": self.checks.miss_per_fund.values,
                "etv": etv_per_fund,
                "risk": self.problem.risk_level.values,
            },
            index=self.problem.funds,
        )
        if self.prices is not None:
            table["price"] = self.prices.values
        return table

    def __repr__(self) -> str:
        gap = self.gap
        lines = [
            f"<eoca.Result solver={self.solver!r} status={self.status.value!r}>",
            f"  objective  {self.objective:,.4f}",
            f"  bound      {self.bound:,.4f}   gap {gap:.4%}" if np.isfinite(gap) else f"  bound      {self.bound}",
            f"  checks     {self.checks.describe()}",
            "  seconds    " + ", ".join(f"{k} {v:.3f}" for k, v in self.timings.items()),
        ]
        if self.message:
            lines.append(f"  message    {self.message}")
        return "\n".join(lines)
