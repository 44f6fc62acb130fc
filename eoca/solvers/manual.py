"""The manual baseline of the paper (§5.1.2): funds in priority order each take their top users."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from eoca.errors import ValidationError
from eoca.problem import AllocationProblem
from eoca.solvers.base import FEATURES, Solver, SolverOutput, register_solver

__all__ = ["ManualSolver"]


def _top_users(values: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` candidates with the highest values; ties go to the lower user index."""
    if count >= len(candidates):
        return candidates
    scores = values[candidates]
    cut = np.partition(scores, len(scores) - count)[len(scores) - count]
    above = candidates[scores > cut]
    tied = candidates[scores == cut]  # candidates are in user order, so the first ties are the lowest ids
    return np.concatenate([above, tied[: count - len(above)]])


@register_solver
class ManualSolver(Solver):
    """Funds in a priority order each take the remaining eligible users with the highest ETV for them.

    Options
    -------
    priority : sequence of fund ids, optional
        The order funds pick in. Default: by mean ETV over each fund's eligible users, highest first.

    Each fund first takes its minimum demand, then (for ranges) funds top up to their maximum in the same
    order. A user no fund picked is left unplaced; the checker reports it, and the status is "error"
    unless the problem allows holdout.
    """

    name = "manual"
    supports = FEATURES - {"constraints"}
    description = "priority baseline: each fund in turn takes its top users (paper §5.1.2)"
    options = {"priority": None}

    def validate_settings(self) -> None:
        p = self.settings["priority"]
        if p is not None and (isinstance(p, str) or not isinstance(p, Sequence)):
            raise ValidationError("priority", f"must be a sequence of fund ids; got {p!r}")

    def _order(self, problem: AllocationProblem) -> np.ndarray:
        c = problem.compile()
        priority = self.settings["priority"]
        if priority is None:
            allowed = c.eligible()
            means = np.array(
                [c.etv[allowed[:, j], j].mean() if allowed[:, j].any() else 0.0 for j in range(c.n_funds)]
            )
            return np.argsort(-means, kind="stable")
        order = problem.funds.get_indexer(list(priority))
        unknown = [f for f, o in zip(priority, order) if o < 0]
        if unknown or sorted(order) != list(range(c.n_funds)):
            raise ValidationError(
                "priority",
                f"must list every fund exactly once; funds are {list(problem.funds)}, got {list(priority)}",
            )
        return order

    def run(self, problem: AllocationProblem) -> SolverOutput:
        c = problem.compile()
        start = time.perf_counter()
        order = self._order(problem)
        codes = np.full(c.n_users, -1, dtype=np.int32)
        allowed = c.eligible()  # the risk rule and the eligibility mask
        for quota in (c.demand_min, c.demand_max - c.demand_min):
            for j in order:
                if quota[j] == 0:
                    continue
                free = np.flatnonzero((codes < 0) & allowed[:, j])
                chosen = _top_users(c.etv[:, j], free, int(quota[j]))
                codes[chosen] = j
        return SolverOutput(
            codes=codes,
            status="feasible",
            stats={"priority": [problem.funds[j] for j in order]},
            timings={"solve": time.perf_counter() - start},
        )
