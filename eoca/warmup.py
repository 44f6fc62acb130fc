"""Compile every numba kernel once, ahead of use (``eoca warmup``).

The exact, heuristic and manual solvers and the checker are numba kernels. Each is compiled on its first
call for each argument type (float64 and float32 grids are two types) and cached on disk, so the first
solve in a fresh install pays that compile (about a minute on two cores) and every later process only
loads the cached machine code (a second or two). The cache sits in the ``__pycache__`` folder beside each
eoca module that has kernels, or under ``NUMBA_CACHE_DIR`` if that is set (for a read-only install); numba recompiles a kernel whenever
its source file changes, and after a numba upgrade.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from eoca.solvers import _tuning

__all__ = ["warmup", "cache_location", "WARMUP_CASES", "WARMUP_RULES"]

#: (family, users, holdout): instances whose solves reach every kernel. The exact solver's Newton step
#: runs from 50,000 users on the grid itself and from 500,000 on its warm-start sample (every tenth user,
#: a strided view numba compiles apart); ties, zeros and tight risk levels take their own repair paths.
WARMUP_CASES = (
    ("matching", _tuning.SAMPLE_STEP * _tuning.NEWTON_USERS, False),
    ("ties", 60_000, False),
    ("zeros", 60_000, True),
    ("tight", 60_000, False),
)
#: Solvers compiled by :func:`warmup` (``ip`` has no kernels).
WARMUP_SOLVERS = ("exact", "heuristic", "manual")
#: Users of the deliveries with an eligibility mask and side rules (``eoca.instances.constrained_problem``)
#: that :func:`warmup` solves: under ``_tuning.DUAL_USERS`` the exact solver settles them with restricted
#: LPs, from there on with Newton's method on the smoothed dual (its own kernels); the heuristic and the
#: manual baseline take the mask alone.
WARMUP_RULES = (2_000, _tuning.DUAL_USERS)


def cache_location() -> Path:
    """Where numba keeps eoca's compiled kernels: ``NUMBA_CACHE_DIR`` if set, else the eoca package
    folder (the ``__pycache__`` folder beside each module that has kernels)."""
    configured = os.environ.get("NUMBA_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent


def _declared(problem, dtype: str, rules: bool = True):
    """``problem`` with a grid of ``dtype`` (itself where it has it), without its side constraints unless
    ``rules``."""
    from eoca.problem import AllocationProblem

    if rules and np.dtype(dtype) == problem.compile().etv.dtype:
        return problem
    p = problem
    return AllocationProblem(p.etv.astype(dtype, copy=False), p.demand, p.risk_level, p.risk_tolerance,
                             holdout=p.holdout, eligible=p.eligible, constraints=p.constraints if rules else ())


def warmup(dtypes: tuple[str, ...] = ("float64", "float32"), *, echo: Callable[[str], None] | None = print,
           n_funds: int = 8) -> dict[str, float]:
    """Compile (or load from the cache) every kernel the solvers and the checker use.

    Parameters
    ----------
    dtypes : tuple of str, default ("float64", "float32")
        Grid dtypes to compile for.
    echo : callable or None
        Called with one line per dtype; None for silence.
    n_funds : int, default 8

    Returns
    -------
    dict
        Seconds per dtype spent in numba's compiler (``"float64"``, ...) and ``"total"`` wall seconds.
    """
    from eoca.instances import constrained_problem, synthetic_problem
    from eoca.solve import compile_clock, solve

    started = time.perf_counter()
    out: dict[str, float] = {}
    for dtype in dtypes:
        with compile_clock() as spent:
            for family, n, holdout in WARMUP_CASES:
                p = _declared(synthetic_problem(n, n_funds, family=family, seed=1, holdout=holdout), dtype)
                for name in WARMUP_SOLVERS:
                    solve(p, solver=name)
            for n in WARMUP_RULES:
                p = constrained_problem(n, n_funds, seed=1)
                solve(_declared(p, dtype), solver="exact")
                masked = _declared(p, dtype, rules=False)
                for name in WARMUP_SOLVERS[1:]:
                    solve(masked, solver=name)
        out[dtype] = spent.seconds
        if echo is not None:
            echo(f"{dtype} grids: kernels ready in {spent.seconds:.1f} s of compiling or loading from the cache")
    out["total"] = time.perf_counter() - started
    if echo is not None:
        where = cache_location()
        place = where if os.environ.get("NUMBA_CACHE_DIR") else f"the __pycache__ folders under {where}"
        echo(f"warmup done in {out['total']:.1f} s; compiled kernels are cached in {place}")
    return out
