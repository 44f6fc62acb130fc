"""Hypothesis strategies shared by the property tests: small random problems of every shape."""

import numpy as np
import pandas as pd
import xarray as xr
from hypothesis import strategies as st

import eoca

#: A declared risk scale whose order is not the labels' sort order ("high" < "low" < "mid" alphabetically).
ORDERED_SCALE = ["low", "mid", "high"]


@st.composite
def small_problems(draw, max_users: int = 6, max_funds: int = 3, labels: bool | None = None):
    """A valid declaration with 1..max_users users and 1..max_funds funds.

    Few distinct ETV values make ties the normal case; demands are exact or ranges, with or without
    holdout, and not always feasible. Risk levels are numbers, labels ("R1".."R3") or an ordered categorical
    on ``ORDERED_SCALE``.
    """
    n = draw(st.integers(1, max_users))
    k = draw(st.integers(1, max_funds))
    distinct = draw(st.sampled_from([2, 4, 100]))
    etv = np.array(draw(st.lists(st.integers(0, distinct - 1), min_size=n * k, max_size=n * k)), float).reshape(n, k)
    n_levels = draw(st.integers(1, 3))
    tol = draw(st.lists(st.integers(1, n_levels), min_size=n, max_size=n))
    risk = draw(st.lists(st.integers(1, n_levels), min_size=k, max_size=k))
    ordered = False
    if labels if labels is not None else draw(st.booleans()):
        ordered = draw(st.booleans())
        if ordered:  # an ordered categorical whose order is not the labels' sort order
            tol, risk = [ORDERED_SCALE[t - 1] for t in tol], [ORDERED_SCALE[r - 1] for r in risk]
        else:
            tol, risk = [f"R{t}" for t in tol], [f"R{r}" for r in risk]
    holdout = draw(st.booleans())
    counts = draw(st.lists(st.integers(0, n), min_size=k, max_size=k))
    ranged = draw(st.lists(st.booleans(), min_size=k, max_size=k))
    extra = draw(st.lists(st.integers(0, 2), min_size=k, max_size=k))
    demand = {}
    for j in range(k):
        demand[f"f{j}"] = (counts[j], counts[j] + extra[j]) if ranged[j] else counts[j]
    lo = sum(counts)
    hi = sum(c + (e if r else 0) for c, e, r in zip(counts, extra, ranged))
    if lo > n or (not holdout and hi < n):  # not a valid declaration; scale the demand onto n users
        scaled = np.floor(np.array(counts) * n / max(sum(counts), 1)).astype(int)
        scaled[0] += n - scaled.sum()
        demand = {f"f{j}": int(scaled[j]) for j in range(k)}
    users = [f"u{i}" for i in range(n)]
    risk_level, risk_tolerance = dict(zip(demand, risk)), dict(zip(users, tol))
    if ordered:
        scale = pd.CategoricalDtype(ORDERED_SCALE, ordered=True)
        risk_level = pd.Series(risk, index=list(demand), dtype=scale)
        risk_tolerance = pd.Series(tol, index=users, dtype=scale)
    return eoca.AllocationProblem(
        etv=xr.DataArray(etv, dims=("user", "fund"), coords={"user": users, "fund": list(demand)}),
        demand=demand,
        risk_level=risk_level,
        risk_tolerance=risk_tolerance,
        holdout=holdout,
    )


@st.composite
def allocations(draw, problem: eoca.AllocationProblem):
    """Any fund code per user: a fund, -1 (none) or an invalid code (-2, or one past the last fund)."""
    k = problem.n_funds
    codes = draw(st.lists(st.integers(-2, k), min_size=problem.n_users, max_size=problem.n_users))
    return np.array(codes, dtype=np.int32)
