"""``eoca bench``: run the benchmark suites and write the report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from eoca.bench.allocation import run_allocation_benchmarks
from eoca.bench.report import allocation_figures, allocation_tables, write_report
from eoca.bench.specs import get_spec, registered_specs

__all__ = ["run_bench", "DEFAULT_OUT"]

DEFAULT_OUT = Path("docs") / "benchmarks"

ALLOCATION_INTRO = (
    "Every solver on generated deliveries (see `eoca.instances.FAMILIES`), k = 8 funds unless the axis is "
    "`n_funds`. *objective / optimum* divides by the exact solver's proven optimum; *gap to bound* is each "
    "result's own gap to the Lagrangian bound the checker computes. An allocation that breaks a rule "
    "(status `error`) is not compared with the optimum: its violations are listed instead. "
    "`heuristic` is the risk-safe Algorithm 1 (the default), `heuristic-paper` the algorithm as printed. "
    "Seconds are solve time only, warm (the one-off JIT compile is paid before timing)."
)


def run_bench(out: str | Path = DEFAULT_OUT, *, quick: bool = False, specs: Sequence[str] | None = None,
              echo=print) -> Path:
    """Run the allocation suite (all registered specs, or ``specs``) and write ``out/README.md`` + PNGs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [get_spec(s) for s in specs] if specs else list(registered_specs().values())
    started = time.perf_counter()
    rows = run_allocation_benchmarks(chosen, quick=quick, progress=lambda msg: echo(f"  {msg}"))
    rows.to_csv(out / "allocation.csv", index=False)
    figures = allocation_figures(rows, out)
    body = ALLOCATION_INTRO + "\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in figures) + "\n\n"
    body += allocation_tables(rows)
    sections = [("Allocation: solvers across scales", body)]
    path = write_report(
        out, sections,
        intro=f"{'Quick' if quick else 'Full'} run, {time.perf_counter() - started:.0f} s. "
        "Regenerate with `eoca bench" + (" --quick" if quick else "") + "`.",
    )
    echo(f"wrote {path}")
    return path
