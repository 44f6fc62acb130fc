"""Shared pieces of the benchmark suites (run with ``python -m pytest benchmarks``)."""

from __future__ import annotations

import time

import numpy as np


def timed(fn, *args, **kwargs):
    """(seconds, value) of one call."""
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - start, value


def certified_gap(problem, codes, prices) -> float:
    """Relative gap between the dual value of ``prices`` and the ETV of ``codes``, both recounted by
    :mod:`eoca.testing` (plain numpy, no code shared with the solver or the library's checker); raises if
    the allocation breaks a rule."""
    from eoca.testing import dual_value, recount

    again = recount(problem, codes)
    assert again.ok, f"the allocation breaks rules: {again}"
    return (dual_value(problem, prices) - again.objective) / max(1.0, abs(again.objective))


def ortools_optimum(problem, scale: float = 1e6) -> float:
    """The same allocation solved by OR-Tools' SimpleMinCostFlow (a reference, not a dependency of eoca).

    ETV is scaled to integer costs; arcs exist only for pairs the risk rule allows. Exact demands only.
    """
    from ortools.graph.python import min_cost_flow

    c = problem.compile()
    if not c.exact_demands or c.holdout:
        raise ValueError("the OR-Tools reference handles exact demands without holdout")
    n, k = c.n_users, c.n_funds
    eligible = c.eligible()
    users, funds = np.nonzero(eligible)
    mcf = min_cost_flow.SimpleMinCostFlow()
    cost = -np.rint(c.etv[users, funds] * scale).astype(np.int64)
    mcf.add_arcs_with_capacity_and_unit_cost(users.astype(np.int64), n + funds.astype(np.int64),
                                             np.ones(len(users), np.int64), cost)
    mcf.set_nodes_supplies(np.arange(n + k), np.concatenate([np.ones(n, np.int64), -c.demand_min.astype(np.int64)]))
    status = mcf.solve()
    if status != mcf.OPTIMAL:
        raise RuntimeError(f"OR-Tools min-cost flow ended with status {status}")
    return -mcf.optimal_cost() / scale
