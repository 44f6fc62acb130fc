"""The exact solver: the allocation is a transportation problem with k funds, solved through its k prices."""

from __future__ import annotations

import time

import numpy as np

from eoca.errors import ValidationError
from eoca.problem import AllocationProblem, CompiledProblem
from eoca.solvers._side import penalised
from eoca.solvers.base import FEATURES, Solver, SolverOutput, register_solver

__all__ = ["ExactSolver", "optimal_prices", "solver_output"]


def _kernel(c: CompiledProblem, time_limit: float | None = None):
    from eoca.solvers._transport import solve_transport

    if c.mask is not None:  # the level-ordered kernels see the mask as forbidden values (see _side.penalised)
        c = penalised(c)
    return solve_transport(
        c.etv, c.user_level, c.fund_level, c.demand_min, c.demand_max, c.holdout, time_limit=time_limit
    )


def optimal_prices(c: CompiledProblem) -> np.ndarray:
    """Optimal fund prices of a feasible in-memory compiled problem (used to bound results of any solver)."""
    return np.asarray(_kernel(c).prices, dtype=np.float64)


def solver_output(sol, seconds: float) -> SolverOutput:
    """The exact solve's answer (in memory or from the engine's chunk-wise solve) as a solver's output."""
    return SolverOutput(
        codes=sol.assignment,
        status=sol.status,
        prices=np.asarray(sol.prices, dtype=np.float64),
        stats=dict(sol.stats),
        timings={"solve": seconds},
    )


@register_solver
class ExactSolver(Solver):
    """Provably optimal allocation at platform scale (millions of users) for any number of funds.

    A user's best fund under prices lambda is argmax_j (ETV[i, j] - lambda_j) over eligible funds; the
    solver finds prices at which those choices meet every demand, settling the users near a price
    boundary by shortest paths on the small graph of funds. The prices it returns certify optimality:
    the allocation's ETV equals the Lagrangian dual value, which the shared checker recomputes.

    Options
    -------
    time_limit : float, optional
        Seconds after which the best allocation so far is returned with status "time_limit".

    A Dask-backed grid (opened lazily, e.g. from Zarr) is sent by :func:`eoca.solve` to the engine's
    :func:`eoca.distributed.solve.solve_exact`, which runs this solver's phases chunk by chunk on the Dask
    workers and gathers only the users near a price boundary for the settlement; the result has the same
    optimal objective and certificate.
    """

    name = "exact"
    supports = FEATURES
    description = "specialised optimal solver for the transportation structure (default)"
    options = {"time_limit": None}
    supports_lazy = True

    def validate_settings(self) -> None:
        t = self.settings["time_limit"]
        if t is not None and (isinstance(t, bool) or not isinstance(t, int | float) or not t > 0):
            raise ValidationError("time_limit", f"must be a positive number of seconds or None; got {t!r}")

    def run(self, problem: AllocationProblem) -> SolverOutput:
        c = problem.compile()
        start = time.perf_counter()
        if c.constraints:
            from eoca.solvers._side_exact import solve_with_constraints

            out = solve_with_constraints(c, _kernel, self.settings["time_limit"])
            return SolverOutput(codes=out["codes"], status=out["status"], prices=out["prices"],
                                multipliers=out["multipliers"], message=out["message"], stats=out["stats"],
                                timings={"solve": time.perf_counter() - start})
        sol = _kernel(c, self.settings["time_limit"])
        return solver_output(sol, time.perf_counter() - start)
