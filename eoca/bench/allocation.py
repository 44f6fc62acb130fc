"""Run solvers side by side on benchmark specs and collect one row per (spec, size, solver)."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from eoca.bench.specs import SOLVER_REACH, BenchSpec
from eoca.errors import UnsupportedFeatureError
from eoca.result import Status
from eoca.solve import solve
from eoca.solvers.base import available_solvers, get_solver

__all__ = ["run_allocation_benchmarks", "ALLOCATION_SOLVERS"]

ALLOCATION_SOLVERS = ("exact", "heuristic", "heuristic-reroute", "heuristic-paper", "manual", "ip")
_OPTIONS = {
    "heuristic-paper": ("heuristic", {"risk_safe": False}),
    "heuristic-reroute": ("heuristic", {"safety_net": "reroute"}),
}


def _solver_call(label: str) -> tuple[str, dict]:
    return _OPTIONS.get(label, (label, {}))


def run_allocation_benchmarks(
    specs: Iterable[BenchSpec],
    *,
    quick: bool = False,
    solvers: Sequence[str] = ALLOCATION_SOLVERS,
    sizes: dict[str, Sequence[int]] | None = None,
    progress=None,
) -> pd.DataFrame:
    """Solve every spec at every size with every solver; ``exact`` gives the reference optimum.

    Returns a DataFrame with columns spec, axis, size, n_users, n_funds, solver, status, seconds,
    objective, fraction (of the proven optimum), gap (to the solver's own bound), risk_violations,
    demand_misses, unplaced, skipped (the reason a solver was not run at that size, else "").
    """
    here = set(available_solvers())
    # pay the one-off JIT compile / cache load before anything is timed
    from eoca.instances import synthetic_problem

    warm = synthetic_problem(200, 4, seed=0)
    for label in solvers:
        name, options = _solver_call(label)
        if name in here:
            solve(warm, solver=name, **options)
    if "exact" in here:  # a size the exact solver samples and takes a Newton step at: those kernels load too
        solve(synthetic_problem(60_000, 4, seed=0), solver="exact")
    rows = []
    for spec in specs:
        for size in (sizes or {}).get(spec.name, spec.quick_sizes if quick else spec.sizes):
            start = time.perf_counter()
            problem = spec.build(size)
            build_s = time.perf_counter() - start
            optimum = np.nan
            for label in solvers:
                name, options = _solver_call(label)
                row = {"spec": spec.name, "axis": spec.axis, "size": size, "n_users": problem.n_users,
                       "n_funds": problem.n_funds, "solver": label, "build_seconds": build_s, "skipped": ""}
                reach, why = SOLVER_REACH.get(name, (np.inf, ""))
                if name not in here:
                    row["skipped"] = f"{name} is not installed"
                elif problem.n_users > reach:
                    row["skipped"] = f"beyond {reach:,} users: {why}"
                else:
                    try:  # a spec with side rules: the solvers that cannot honour them say so, by name
                        get_solver(name, **options).check_supports(problem)
                    except UnsupportedFeatureError as exc:
                        row["skipped"] = f"unsupported: {exc}"
                if row["skipped"]:
                    rows.append(row)
                    continue
                if progress is not None:
                    progress(f"{spec.name} {spec.axis}={size:,} {label}")
                result = solve(problem, solver=name, **options)
                if name == "exact" and result.status is Status.OPTIMAL:
                    optimum = result.objective
                row.update(
                    status=result.status.value,
                    # everything the solver did (ip: build, load, solve, read), not the shared checker and bound
                    seconds=sum(v for k, v in result.timings.items() if k not in ("check", "bound")),
                    objective=result.objective,
                    # an allocation that breaks a rule is not compared with the optimum
                    fraction=result.objective / optimum if optimum and result.checks.ok else np.nan,
                    gap=result.gap,
                    risk_violations=result.checks.risk_violations,
                    demand_misses=result.checks.demand_misses,
                    unplaced=result.checks.unplaced,
                )
                rows.append(row)
                del result
            del problem
            gc.collect()
    return pd.DataFrame(rows)
