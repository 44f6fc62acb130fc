"""``eoca.solve``: run one solver, then the shared checker and the Lagrangian bound, and build a Result."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from eoca.checks import check_allocation, check_and_bound
from eoca.problem import AllocationProblem, fund_vector
from eoca.result import Result, Status
from eoca.solvers.base import Solver, SolverOutput, get_solver
from eoca.solvers.exact import optimal_prices

__all__ = ["solve", "compile_clock", "compile_note", "CompileTime", "DEFAULT_SOLVER"]

DEFAULT_SOLVER = "exact"
# Relative tolerance when comparing a claimed optimum with its dual bound.
CERTIFICATE_RTOL = 1e-9


@dataclass
class CompileTime:
    """Seconds a block spent in numba's compiler (see :func:`compile_clock`)."""

    #: Inside numba's compiler lock: compiling kernels on their first call, or loading them from the on-disk
    #: cache (which each new process pays once).
    locked: float = 0.0
    #: The part of ``locked`` spent compiling, which ``eoca warmup`` pays ahead, once per machine.
    compiling: float = 0.0
    #: A process's first use of numba loads numba's extensions (a scan of the installed packages, about
    #: 0.1 s, outside the lock): :func:`compile_clock` does it on entry, before the block runs.
    extensions: float = 0.0

    @property
    def seconds(self) -> float:
        """All of it: ``locked`` and ``extensions``."""
        return self.locked + self.extensions


@contextmanager
def compile_clock() -> Iterator[CompileTime]:
    """Measure the seconds a block spends in numba's compiler; the yielded :class:`CompileTime` holds them
    when the block ends."""
    spent = CompileTime()
    try:
        import numba.core.event as ev
        from numba.core.entrypoints import init_all
    except ImportError:  # pragma: no cover - numba is a dependency
        yield spent
        return
    start = time.perf_counter()
    init_all()  # returns at once after the first call
    spent.extensions = time.perf_counter() - start
    with ev.install_timer("numba:compiler_lock", lambda d: setattr(spent, "locked", d)), \
            ev.install_timer("numba:compile", lambda d: setattr(spent, "compiling", d)):
        yield spent


#: Seconds of numba's compiler below which eoca's messages say nothing about it.
COMPILE_NOTE_S = 0.05


def compile_note(timings: dict[str, float]) -> str:
    """What a result's compile seconds were, for a message: "" when under :data:`COMPILE_NOTE_S`."""
    if timings.get("compile", 0.0) < COMPILE_NOTE_S:
        return ""
    if timings.get("jit", 0.0) >= COMPILE_NOTE_S:
        return "numba compiling kernels on their first use; `eoca warmup` pays it once, ahead"
    return "numba starting up and loading its compiled kernels from the disk cache, once per process"


def _reference_prices(problem: AllocationProblem) -> np.ndarray:
    """Prices for the bound of a solver that has none: the exact solver's optimal prices."""
    c = problem.compile()
    if c.is_lazy:
        from eoca.distributed.solve import lazy_optimal_prices

        return lazy_optimal_prices(c)
    return optimal_prices(c)


def _run(instance: Solver, problem: AllocationProblem) -> SolverOutput:
    """The one place that picks the engine: a problem whose grid is lazy (Dask-backed) is solved chunk by
    chunk by :mod:`eoca.distributed`, any other by the solver itself."""
    if problem.compile().is_lazy:
        from eoca.distributed.solve import run_lazy

        return run_lazy(instance, problem)
    return instance.run(problem)


def solve(problem: AllocationProblem, solver: str | Solver = DEFAULT_SOLVER, **options: Any) -> Result:
    """Allocate users to funds.

    Parameters
    ----------
    problem : AllocationProblem
    solver : str or Solver, default "exact"
        A registered name (see :func:`eoca.available_solvers`) or a Solver instance.
    **options
        Solver options, e.g. ``time_limit=60`` for "ip" or ``risk_safe=False`` for "heuristic".

    Returns
    -------
    Result
        Always checked by :func:`eoca.checks.check_allocation`. An infeasible problem gives status
        "infeasible" with the diagnosis as message (no exception).
    """
    if not isinstance(problem, AllocationProblem):
        raise TypeError(f"solve() needs an eoca.AllocationProblem; got {type(problem).__name__}")
    instance = get_solver(solver, **options)
    instance.check_supports(problem)
    c = problem.compile()
    timings: dict[str, float] = {}

    diagnosis = problem.diagnose()
    if not diagnosis.feasible:
        codes = np.full(c.n_users, -1, dtype=np.int32)
        checks = check_allocation(problem, codes)
        return Result(
            problem=problem, codes=codes, objective=float("nan"), status=Status.INFEASIBLE, checks=checks,
            bound=float("nan"), prices=None, timings=timings, solver=instance.name, message=diagnosis.message,
        )

    with compile_clock() as run_compile:
        start = time.perf_counter()
        out = _run(instance, problem)
        elapsed = time.perf_counter() - start
    timings.update(out.timings or {"solve": elapsed})
    timings.setdefault("solve", elapsed - sum(v for k, v in timings.items() if k != "solve"))

    codes = np.ascontiguousarray(out.codes, dtype=np.int32)
    codes.flags.writeable = False
    solver_prices = out.prices is not None and np.isfinite(out.prices).all()
    with compile_clock() as check_compile:
        if solver_prices:
            prices = np.asarray(out.prices, dtype=np.float64)
        else:
            start = time.perf_counter()
            prices = _reference_prices(problem)
            timings["bound"] = time.perf_counter() - start
        # the checker's recount and the dual bound in one read of the grid
        start = time.perf_counter()
        multipliers = out.multipliers if solver_prices and c.constraints else None
        checks, bound = (check_and_bound(problem, codes, prices) if multipliers is None
                         else check_and_bound(problem, codes, prices, multipliers))
        timings["check"] = time.perf_counter() - start
    # numba's compiler (a first call's JIT, or loading from the cache) is reported on its own, not as solving
    # or checking time; the extensions were loaded before either phase's clock started
    compiled = run_compile.seconds + check_compile.seconds
    if compiled >= 1e-3:
        timings["solve"] = max(timings["solve"] - run_compile.locked, 0.0)
        phase = "bound" if "bound" in timings else "check"
        timings[phase] = max(timings[phase] - check_compile.locked, 0.0)
        timings["compile"] = compiled
        jit = run_compile.compiling + check_compile.compiling
        if jit >= 1e-3:
            timings["jit"] = jit

    status = Status(out.status)
    message = out.message
    if status is Status.INFEASIBLE:  # a solver's proof that no allocation meets the side rules (its message)
        return Result(problem=problem, codes=codes, objective=float("nan"), status=status, checks=checks,
                      bound=float("nan"), prices=None, timings=timings, solver=instance.name, message=message,
                      stats=dict(out.stats))
    if not checks.ok and status is Status.TIME_LIMIT:
        message = ("stopped by the time limit before the allocation met every rule: "
                   f"{checks.describe()}" + (f"; {message}" if message else ""))
    elif not checks.ok and status is not Status.ERROR:
        message = f"the allocation breaks rules: {checks.describe()}" + (f"; {message}" if message else "")
        status = Status.ERROR
    elif status is Status.OPTIMAL:
        tol = CERTIFICATE_RTOL * max(1.0, abs(bound))
        if bound - checks.objective > max(tol, 1e-7 * max(1.0, abs(checks.objective))):
            status = Status.FEASIBLE
            message = (
                f"optimality not certified: objective {checks.objective:.6g} below the dual bound {bound:.6g}"
                + (f"; {message}" if message else "")
            )

    price_da = fund_vector(problem, prices, "price") if solver_prices else None
    return Result(
        problem=problem,
        codes=codes,
        objective=checks.objective,
        status=status,
        checks=checks,
        bound=bound,
        prices=price_da,
        timings=timings,
        solver=instance.name,
        message=message,
        stats=dict(out.stats),
        multipliers=None if multipliers is None else np.asarray(multipliers, dtype=np.float64),
    )
