"""The solver protocol and the registry behind ``solve(problem, solver=...)``."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from eoca.errors import SolverNotAvailableError, UnknownSolverError, UnsupportedFeatureError, ValidationError
from eoca.problem import AllocationProblem

__all__ = [
    "Solver",
    "SolverOutput",
    "register_solver",
    "get_solver",
    "available_solvers",
    "registered_solvers",
    "FEATURES",
]

#: What a problem may ask of a solver beyond the paper's exact demands.
FEATURES = frozenset({"ranges", "holdout", "eligible", "constraints"})
#: What a solver supports unless it says more: a new solver claims no side rules it may not know.
BASE_FEATURES = frozenset({"ranges", "holdout"})


@dataclass
class SolverOutput:
    """What a solver hands back to :func:`eoca.solve`; the checker and the bound are applied after.

    ``codes``: int32 fund index per user (-1 for none). ``status``: the solver's own claim, one of
    "optimal", "feasible", "time_limit", "error", or "infeasible" when the solver proves that no
    allocation meets the side rules (its message names them; the demands alone are diagnosed before). ``prices``: dual price per fund, if any;
    ``multipliers``: one per side constraint, if any (see :func:`eoca.dual_bound`).
    """

    codes: np.ndarray
    status: str
    prices: np.ndarray | None = None
    message: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    multipliers: np.ndarray | None = None


class Solver(ABC):
    """Base class of allocation solvers.

    Subclasses set ``name``, ``supports`` (a subset of :data:`FEATURES`), ``options`` (name -> default),
    ``supports_lazy`` (True if ``run`` works on a Dask-backed grid without loading it) and, for optional back-ends, ``requires`` (importable module names) and ``install_hint``. Options are
    set only in ``__init__``; unknown options are an error, never ignored.
    """

    name: ClassVar[str]
    supports: ClassVar[frozenset[str]] = BASE_FEATURES
    options: ClassVar[dict[str, Any]] = {}
    requires: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: Whether ``run`` accepts a Dask-backed (lazy, out-of-core) ETV grid; see :mod:`eoca.distributed`.
    supports_lazy: ClassVar[bool] = False

    def __init__(self, **options: Any):
        unknown = set(options) - set(self.options)
        if unknown:
            raise ValidationError(
                "options",
                f"{self.name!r} solver does not take {sorted(unknown)}; it takes {sorted(self.options) or 'no options'}",
            )
        self.settings = {**self.options, **options}
        self.validate_settings()

    def validate_settings(self) -> None:  # noqa: B027 - optional hook, nothing to check by default
        """Check ``self.settings``; subclasses raise :class:`ValidationError` naming the option."""

    @classmethod
    def available(cls) -> bool:
        return all(importlib.util.find_spec(mod) is not None for mod in cls.requires)

    def check_supports(self, problem: AllocationProblem) -> None:
        if problem.compile().is_lazy and not self.supports_lazy:
            lazy_ok = [n for n, c in _REGISTRY.items() if c.supports_lazy]
            raise UnsupportedFeatureError(
                f"the {self.name!r} solver needs the whole ETV grid in memory, but this problem's grid is "
                f"Dask-backed ({problem.n_users:,} users, chunks along 'user'); solvers that work chunk by "
                f"chunk: {lazy_ok} (use solver='exact'), or load the grid with problem.etv.load() first"
            )
        c = problem.compile()
        asked = set()
        if problem.has_ranges:
            asked.add("ranges")
        if problem.holdout:
            asked.add("holdout")
        if c.mask is not None:
            asked.add("eligible")
        if c.constraints:
            asked.add("constraints")
        missing = asked - set(self.supports)
        if missing:
            raise UnsupportedFeatureError(
                f"the {self.name!r} solver does not support {sorted(missing)}; solvers that do: "
                f"{[n for n, c in _REGISTRY.items() if missing <= set(c.supports)]}"
            )

    @abstractmethod
    def run(self, problem: AllocationProblem) -> SolverOutput:
        """Solve a feasible, validated problem and return the raw allocation."""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"{type(self).__name__}({opts})"


_REGISTRY: dict[str, type[Solver]] = {}


def register_solver(cls: type[Solver]) -> type[Solver]:
    """Class decorator adding a solver to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def registered_solvers() -> dict[str, type[Solver]]:
    return dict(_REGISTRY)


def available_solvers() -> list[str]:
    """Names of the registered solvers whose dependencies are installed here."""
    return [name for name, cls in _REGISTRY.items() if cls.available()]


def get_solver(solver: str | Solver, **options: Any) -> Solver:
    """Resolve a solver name (with options) or pass a :class:`Solver` instance through."""
    if isinstance(solver, Solver):
        if options:
            raise ValidationError("options", "pass options to the Solver instance, not alongside it")
        instance = solver
    elif isinstance(solver, str):
        if solver not in _REGISTRY:
            raise UnknownSolverError(f"unknown solver {solver!r}; registered solvers: {sorted(_REGISTRY)}")
        cls = _REGISTRY[solver]
        if not cls.available():
            raise SolverNotAvailableError(
                f"the {solver!r} solver needs {', '.join(cls.requires)}, which is not installed; "
                f"install it with: {cls.install_hint}"
            )
        instance = cls(**options)
    else:
        raise UnknownSolverError(f"solver must be a name or a Solver instance; got {type(solver).__name__}")
    return instance
