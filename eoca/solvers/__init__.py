"""Allocation solvers, registered by name: ``exact``, ``ip``, ``heuristic``, ``manual``."""

from eoca.solvers import exact, heuristic, ip, manual  # noqa: F401  (registration)
from eoca.solvers.base import Solver, SolverOutput, available_solvers, get_solver, register_solver

__all__ = ["Solver", "SolverOutput", "available_solvers", "get_solver", "register_solver"]
