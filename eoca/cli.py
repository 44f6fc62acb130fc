"""The ``eoca`` command line: solve a scenario or a saved problem, warm the kernels up, list solvers."""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eoca.errors import EocaError, ValidationError
from eoca.result import Result
from eoca.scenarios import load_input, load_scenario

__all__ = ["main", "load_scenario", "load_input", "format_result"]


def _parse_pairs(pairs: list[str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValidationError(what, f"expected NAME=VALUE; got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def format_result(result: Result) -> str:
    """The summary the command line prints: headline figures, then one row per fund."""
    gap = result.gap
    lines = [
        f"problem    {result.problem.name or '(unnamed)'}: {result.problem.n_users:,} users x {result.problem.n_funds} funds",
        f"solver     {result.solver}",
        f"status     {result.status.value}",
        f"objective  {result.objective:,.2f}",
        f"bound      {result.bound:,.2f}" + (f"   gap {gap:.4%}" if np.isfinite(gap) else ""),
        f"checks     {result.checks.describe()}",
        "seconds    " + ", ".join(f"{k} {v:.3f}" for k, v in result.timings.items()),
    ]
    if result.message:
        lines.append(f"message    {result.message}")
    if "repair_moved" in result.stats:
        st = result.stats
        lines.append(f"repair     Algorithm 1 placed {st['risk_breaches']:,} users above their risk tolerance and "
                     f"stranded {st['stranded']:,}; the safety net re-allocated {st['repair_freed']:,} users "
                     f"and moved {st['repair_moved']:,}")
    table = result.summary()
    cols = {"users": "users", "demand_min": "min", "demand_max": "max", "miss": "miss", "etv": "ETV", "risk": "risk"}
    shown = table.rename(columns=cols)
    formatters = {"ETV": "{:,.2f}".format, "price": "{:,.4f}".format}
    lines += ["", shown.to_string(formatters=formatters)]
    rules = result.constraints
    if rules is not None:
        lines += ["", rules.to_string(formatters={c: "{:,.6g}".format for c in ("activity", "at_least", "at_most",
                                                                                "slack", "price")})]
    if result.prices is not None:
        lines += [
            "",
            "price: the marginal ETV of each fund's contract: one more contracted user for fund j raises the best "
            "total ETV by about price[j]\n(one fewer lowers it); moving one contracted user from fund a to fund b "
            "changes it by about price[b] - price[a].",
        ]
    return "\n".join(lines)


def _cmd_solve(args: argparse.Namespace) -> int:
    import time

    from eoca.io import save_problem, save_result
    from eoca.solve import compile_note, solve

    start = time.perf_counter()
    problem = load_input(args.scenario, **_parse_pairs(args.param, "--param"))
    stages = {"load": time.perf_counter() - start}
    result = solve(problem, solver=args.solver, **_parse_pairs(args.option, "--option"))
    stages["solve"] = result.timings.get("solve", 0.0)
    stages["check"] = result.timings.get("check", 0.0) + result.timings.get("bound", 0.0)
    if "compile" in result.timings:
        stages["compile"] = result.timings["compile"]
    print(format_result(result))
    if args.out:
        out = Path(args.out)
        start = time.perf_counter()
        save_result(result, out, format=args.format)
        if args.save_problem:
            save_problem(problem, out / "problem.zarr")
        stages["write"] = time.perf_counter() - start
        print(f"\nwrote {out}")
    note = compile_note(result.timings)
    print("\nstages     " + ", ".join(f"{k} {v:.3f} s" for k, v in stages.items())
          + (f"   (compile: {note})" if note else ""))
    return 0 if result.ok else 1


def _cmd_warmup(args: argparse.Namespace) -> int:
    from eoca.warmup import warmup

    warmup(tuple(args.dtype.split(",")))
    return 0


def _cmd_solvers(args: argparse.Namespace) -> int:
    from eoca.solvers.base import registered_solvers

    rows = []
    for name, cls in registered_solvers().items():
        rows.append({
            "solver": name,
            "available": "yes" if cls.available() else f"no ({cls.install_hint})",
            "supports": ", ".join(sorted(cls.supports)) or "-",
            "options": ", ".join(f"{k}={v!r}" for k, v in cls.options.items()) or "-",
            "description": cls.description,
        })
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from eoca.demo import run_demo

    run_demo(n_users=args.users, epochs=args.epochs, seed=args.seed)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from eoca.bench.run import DEFAULT_OUT, SUITES, run_bench

    suites = args.suite.split(",") if args.suite else SUITES
    run_bench(args.out or DEFAULT_OUT, quick=args.quick, specs=args.spec or None, suites=suites)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eoca", description="ETV-optimised customer allocation")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("solve", help="solve a scenario file from problems/ or a saved problem")
    p.add_argument("scenario", help="Python file defining build(**params) or `problem`, or a saved problem "
                                    "(.zarr store or .nc file written by eoca.io.save_problem)")
    p.add_argument("--solver", default="exact", help="solver name (see `eoca solvers`); default exact")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="scenario parameter")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE", help="solver option")
    p.add_argument("--out", help="directory for assignment and summary.json")
    p.add_argument("--format", default="parquet", choices=["parquet", "csv"], help="assignment file format")
    p.add_argument("--save-problem", action="store_true", help="also write problem.zarr into --out")
    p.set_defaults(func=_cmd_solve)

    p = sub.add_parser("warmup", help="compile and cache every numba kernel (pay the first-call JIT once)")
    p.add_argument("--dtype", default="float64,float32", help="grid dtypes to compile for (default both)")
    p.set_defaults(func=_cmd_warmup)

    p = sub.add_parser("demo", help="end-to-end run on built-in synthetic data: predict, allocate, simulate")
    p.add_argument("--users", type=int, default=10_000, help="users on the synthetic platform (default 10,000)")
    p.add_argument("--epochs", type=int, default=4, help="ESDPM training epochs at most (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bench", help="run the benchmark suites and write a report")
    p.add_argument("--quick", action="store_true", help="small sizes only: a first look in a few minutes")
    p.add_argument("--out", help="report directory (default docs/benchmarks)")
    p.add_argument("--spec", action="append", help="run only this allocation spec (repeatable)")
    p.add_argument("--suite", help="comma-separated subset of allocation,models,ab,side (default: all)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("solvers", help="list the registered solvers")
    p.set_defaults(func=_cmd_solvers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (EocaError, FileNotFoundError) as exc:
        print(f"eoca: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
