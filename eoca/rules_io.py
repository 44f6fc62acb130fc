"""The side rules of a problem (eligibility mask, quotas, linear constraints) in and out of problem files.

:mod:`eoca.io` writes the grid, ids and risk; this module says which extra arrays and attributes a
problem with side rules adds, and rebuilds the declared rules from them on reading:

- ``eligible``: the mask, bool (users x funds), chunked like the grid (absent when every pair is allowed);
- ``constraint_<q>``: the user weights (users,) of a quota or a per-user :class:`~eoca.constraints.Linear`,
  or the weights (users x funds) of a per-pair one, float64;
- the attribute ``constraints``: one JSON record per constraint in declaration order (name, kind, bounds,
  the funds it counts, whether its array is per user or per pair).

A quota declared with a list of user ids comes back as the equivalent boolean Series; a constraint over
every fund comes back with ``funds=None``. The problem's fingerprint covers the compiled rules, so a
round trip that changed any of them is refused as corrupt by the loader.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from eoca.constraints import Linear, Quota
from eoca.errors import FileFormatError
from eoca.problem import FUND, USER, AllocationProblem

__all__ = ["side_records", "side_arrays", "side_rules", "dataset_array"]


def _bound(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def side_records(problem: AllocationProblem) -> list[dict[str, Any]]:
    """The JSON-ready description of each compiled side constraint (arrays apart)."""
    funds = problem.funds
    out = []
    for con in problem.compile().constraints:
        counted = None if (con.fund_weight == 1).all() else [
            f.item() if isinstance(f, np.generic) else f for f in funds[con.fund_weight != 0].tolist()
        ]
        out.append({"name": con.name, "kind": con.kind, "at_least": _bound(con.lo), "at_most": _bound(con.hi),
                    "funds": counted, "per": "pair" if con.grid is not None else "user"})
    return out


def side_arrays(problem: AllocationProblem) -> dict[str, np.ndarray]:
    """The arrays a problem's side rules add to its file, by name (users along the first axis)."""
    c = problem.compile()
    out = {}
    if c.mask is not None:
        out["eligible"] = c.mask
    for q, con in enumerate(c.constraints):
        out[f"constraint_{q}"] = con.grid if con.grid is not None else con.user_weight
    return out


def side_rules(records: Any, has_mask: bool, read: Callable[[str, tuple[int, ...]], np.ndarray],
               users: pd.Index, funds: pd.Index, where: str) -> tuple[xr.DataArray | None, list[Any]]:
    """Rebuild ``(eligible, constraints)`` for :class:`AllocationProblem` from a file's records and its
    arrays; ``read(name, shape)`` returns an array of the file (raising FileFormatError when absent)."""
    n, k = len(users), len(funds)
    eligible = None
    if has_mask:
        mask = read("eligible", (n, k))
        if mask.dtype != np.bool_:
            raise FileFormatError(f"{where}: array 'eligible' is {mask.dtype}, expected bool (corrupt file)")
        eligible = xr.DataArray(mask, dims=(USER, FUND), coords={USER: users, FUND: funds})
    if not isinstance(records, list):
        raise FileFormatError(f"{where}: the attribute 'constraints' is not a list (corrupt file)")
    constraints = []
    for q, rec in enumerate(records):
        try:
            kind, per, name = rec["kind"], rec["per"], rec["name"]
            bounds = {"at_least": rec["at_least"], "at_most": rec["at_most"], "name": name}
            counted = rec["funds"]
        except (KeyError, TypeError):
            raise FileFormatError(f"{where}: side constraint {q} is described incompletely (corrupt file)") from None
        if per == "pair":
            weights = read(f"constraint_{q}", (n, k))
            constraints.append(Linear(weights=xr.DataArray(weights, dims=(USER, FUND),
                                                           coords={USER: users, FUND: funds}), **bounds))
            continue
        values = read(f"constraint_{q}", (n,))
        if kind == "quota":
            constraints.append(Quota(users=pd.Series(values != 0, index=users), funds=counted, **bounds))
        elif kind == "linear":
            constraints.append(Linear(weights=pd.Series(values, index=users), funds=counted, **bounds))
        else:
            raise FileFormatError(f"{where}: side constraint {name!r} has an unknown kind {kind!r} (corrupt file)")
    return eligible, constraints


def dataset_array(ds: xr.Dataset, path: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A variable of a loaded NetCDF problem file, of the shape expected (FileFormatError otherwise)."""
    if name not in ds.data_vars:
        raise FileFormatError(f"{path} lacks the variable {name!r} (truncated or not a problem file)")
    values = ds[name].values
    if values.shape != shape:
        raise FileFormatError(f"{path}: variable {name!r} has shape {values.shape}, expected {shape}")
    return values
