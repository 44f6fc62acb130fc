"""The paper's heuristic allocator (HA, Algorithm 1), faithful or risk-safe."""

from __future__ import annotations

import time

from eoca.errors import ValidationError
from eoca.problem import AllocationProblem
from eoca.solvers._greedy import algorithm1
from eoca.solvers.base import Solver, SolverOutput, register_solver

__all__ = ["HeuristicSolver"]


@register_solver
class HeuristicSolver(Solver):
    """Algorithm 1 of the paper, vectorised: users ranked by their heuristic score, re-ranked when a fund fills.

    Options
    -------
    risk_safe : bool, default True
        True (the default) considers only funds within each user's risk tolerance and, before each
        placement, checks that the remaining users can still meet the remaining demands (ordered risk
        levels make that an O(levels) test); a user whose top fund would break that goes to their best
        fund that does not (counted in ``stats["rerouted"]``). It never breaks the risk rule and meets
        every demand whenever the problem is feasible. It is the default because an allocation that
        breaks a contract or the risk rule cannot be delivered.
        False runs the algorithm as printed: ineligible ETV is set to 0 but stays selectable, so on tight
        instances users are placed above their tolerance; the checker counts them and the result's status
        is "error".

    Range demands are filled in two phases (each fund's minimum first, then the room up to its maximum);
    with holdout, users left when every fund is full receive no fund.
    """

    name = "heuristic"
    description = "the paper's Algorithm 1 (HA); risk_safe=True keeps every rule"
    options = {"risk_safe": True}

    def validate_settings(self) -> None:
        if not isinstance(self.settings["risk_safe"], bool):
            raise ValidationError("risk_safe", f"must be True or False; got {self.settings['risk_safe']!r}")

    def run(self, problem: AllocationProblem) -> SolverOutput:
        c = problem.compile()
        start = time.perf_counter()
        codes, stats = algorithm1(c, safe=self.settings["risk_safe"])
        return SolverOutput(codes=codes, status="feasible", stats=stats,
                            timings={"solve": time.perf_counter() - start})
