"""eoca: ETV-optimised customer allocation.

Decide which promoted fund type each user is shown so that the total expected transaction value is as
high as possible while every fund type reaches its contracted number of users and nobody is shown a fund
above their risk tolerance.
"""

from eoca.checks import check_allocation, dual_bound
from eoca.constraints import Linear, Quota
from eoca.data import synthetic as _synthetic
from eoca.errors import (
    ConstraintError,
    DemandError,
    EocaError,
    ETVError,
    FileFormatError,
    IdError,
    RiskError,
    SolverNotAvailableError,
    UnknownSolverError,
    UnsupportedFeatureError,
    ValidationError,
)
from eoca.problem import AllocationProblem, Diagnosis, Shortfall
from eoca.result import Checks, Result, Status
from eoca.solve import solve
from eoca.solvers import Solver, available_solvers, get_solver, register_solver

__version__ = "0.1.0"


def _decision_value(platform, grid) -> float:
    """The true value of the exact allocation from ``grid`` over the true optimum (installed for
    :func:`eoca.predict.evaluate`, which knows nothing of allocation)."""
    from eoca.simulate import allocation_value_ratio

    return allocation_value_ratio(platform, grid)


_synthetic.set_decision_value(_decision_value)

__all__ = [
    "AllocationProblem",
    "Checks",
    "ConstraintError",
    "DemandError",
    "Diagnosis",
    "ETVError",
    "EocaError",
    "FileFormatError",
    "IdError",
    "Linear",
    "Quota",
    "Result",
    "RiskError",
    "Shortfall",
    "Solver",
    "SolverNotAvailableError",
    "Status",
    "UnknownSolverError",
    "UnsupportedFeatureError",
    "ValidationError",
    "available_solvers",
    "check_allocation",
    "dual_bound",
    "get_solver",
    "register_solver",
    "solve",
]
