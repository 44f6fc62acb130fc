"""``eoca bench``: run the benchmark suites and write the report."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from eoca.bench.allocation import run_allocation_benchmarks
from eoca.bench.report import allocation_figures, allocation_tables, machine_info, write_report
from eoca.bench.specs import get_spec, registered_specs

__all__ = ["run_bench", "DEFAULT_OUT"]

DEFAULT_OUT = Path("docs") / "benchmarks"

ALLOCATION_INTRO = (
    "Every solver on generated deliveries (see `eoca.instances.FAMILIES`), k = 8 funds unless the axis is "
    "`n_funds`. *objective / optimum* divides by the exact solver's proven optimum; *gap to bound* is each "
    "result's own gap to the Lagrangian bound the checker computes. An allocation that breaks a rule "
    "(status `error`) is not compared with the optimum: its violations are listed instead. "
    "`heuristic` is the risk-safe Algorithm 1 (the default: the algorithm, then the exact repair of what it "
    "breaks), `heuristic-reroute` the variant that checks feasibility before each placement, `heuristic-paper` "
    "the algorithm as printed. "
    "Seconds are the solver's own time (for ip: building the Pyomo model, handing it to HiGHS, solving and "
    "reading back), not the shared checker and bound; warm (the one-off JIT compile is paid before timing)."
)


SUITES = ("allocation", "models", "ab", "side")

#: Sizes of the model and A/B suites: (seeds, users, epochs).
MODEL_SIZES = {"quick": ([0, 1], 1_500, 3), "full": ([0, 1, 2], 3_000, 40)}
CDNOW_SIZES = {"quick": ([0], 4_000, 3), "full": ([0, 1, 2], None, 40)}
AB_SIZES = {"quick": ([0, 1], 2_000, 3), "full": ([0, 1, 2, 3, 4], 4_000, 12)}


#: Sections of the report kept from the benchmarks under ``benchmarks/`` (not rerun by ``eoca bench``).
MEASURED_SECTIONS = ("predict_scale", "pipeline", "trust")

_HEADINGS = {
    "allocation": "Allocation: solvers across scales",
    "models": "ETV models: the paper's Tables 1-2 and Figure 5",
    "ab": "Simulated A/B test (Table 3)",
    "side": "Business rules: a mask and six side constraints against the plain delivery",
}

#: Users of the side-rules suite.
SIDE_SIZES = {"quick": (20_000, 200_000), "full": (200_000, 1_000_000, 10_000_000)}


def _allocation_section(out: Path, quick: bool, specs: Sequence[str] | None, echo) -> str:
    chosen = [get_spec(s) for s in specs] if specs else list(registered_specs().values())
    rows = run_allocation_benchmarks(chosen, quick=quick, progress=lambda msg: echo(f"  {msg}"))
    rows.to_csv(out / "allocation.csv", index=False)
    figures = allocation_figures(rows, out)
    body = ALLOCATION_INTRO + "\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in figures) + "\n\n"
    return body + allocation_tables(rows)


def _models_section(out: Path, size: str, echo) -> str:
    from eoca.bench.models import model_figure, model_sections, run_cdnow, run_synthetic

    seeds, users, epochs = MODEL_SIZES[size]
    synth = run_synthetic(seeds, users, epochs, progress=lambda msg: echo(f"  {msg}"))
    synth.to_csv(out / "models_synthetic.csv", index=False)
    cd_seeds, cd_users, cd_epochs = CDNOW_SIZES[size]
    cdnow = run_cdnow(cd_seeds, cd_epochs, n_users=cd_users, progress=lambda msg: echo(f"  {msg}"))
    cdnow.to_csv(out / "models_cdnow.csv", index=False)
    fig = model_figure(synth, out)
    return model_sections(synth, cdnow, n_users=users, seeds=seeds, epochs=epochs, figure=fig.name)


def _ab_section(out: Path, size: str, echo) -> str:
    from eoca.bench.abtest import ab_figure, ab_section, run_ab_test

    seeds, users, epochs = AB_SIZES[size]
    ab = run_ab_test(seeds, users, epochs, progress=lambda msg: echo(f"  {msg}"))
    ab.to_csv(out / "ab_test.csv", index=False)
    return ab_section(ab, n_users=users, epochs=epochs, figure=ab_figure(ab, out).name)


def _side_section(out: Path, size: str, echo) -> str:
    from eoca.bench.side import run_side, side_figure, side_section

    rows = run_side(SIDE_SIZES[size], progress=lambda msg: echo(f"  {msg}"))
    rows.to_csv(out / "side.csv", index=False)
    return side_section(rows, side_figure(rows, out).name)


def run_bench(out: str | Path = DEFAULT_OUT, *, quick: bool = False, specs: Sequence[str] | None = None,
              suites: Sequence[str] = SUITES, echo=print) -> Path:
    """Run suites and (re)write ``out/README.md`` with PNG figures and the CSVs behind every table.

    ``suites``: any of "allocation" (solvers across scales; ``specs`` narrows it), "models" (the nine ETV
    models, the three losses, CDNOW), "ab" (the simulated A/B test) and "side" (a mask and six business
    rules against the plain delivery, 200k to 10M users). Each suite leaves its section in
    ``out/sections/``; the page is assembled from every section there, so suites can be rerun one at a time
    and each section says when and how it ran.
    """
    unknown = set(suites) - set(SUITES)
    if unknown:
        from eoca.errors import ValidationError

        raise ValidationError("suites", f"unknown {sorted(unknown)}; choose from {list(SUITES)}")
    out = Path(out)
    (out / "sections").mkdir(parents=True, exist_ok=True)
    size = "quick" if quick else "full"
    if "models" in suites or "ab" in suites:
        import torch

        torch.set_num_threads(1)  # measured faster than 2 threads for these small networks on 2 cores
    for suite in SUITES:
        if suite not in suites:
            continue
        started = time.perf_counter()
        if suite == "allocation":
            body = _allocation_section(out, quick, specs, echo)
        elif suite == "models":
            body = _models_section(out, size, echo)
        elif suite == "side":
            body = _side_section(out, size, echo)
        else:
            body = _ab_section(out, size, echo)
        stamp = machine_info()["date"]
        note = (f"*{size.capitalize()} run of `eoca bench --suite {suite}{' --quick' if quick else ''}`, "
                f"{stamp}, {time.perf_counter() - started:.0f} s.*")
        fragment = out / "sections" / f"{suite}.md"
        tmp = fragment.with_suffix(".md.tmp")
        tmp.write_text(note + "\n\n" + body)
        os.replace(tmp, fragment)
    path = assemble_report(out)
    echo(f"wrote {path}")
    return path


def assemble_report(out: str | Path = DEFAULT_OUT) -> Path:
    """(Re)write ``out/README.md`` from the sections in ``out/sections/``: the suites' in their order, then
    those written from the pytest-benchmark runs under ``benchmarks/`` (each opens with its own heading)."""
    out = Path(out)
    sections = [(_HEADINGS.get(s), path.read_text()) for s in (*SUITES, *MEASURED_SECTIONS)
                if (path := out / "sections" / f"{s}.md").is_file()]
    return write_report(out, sections, intro="Regenerate with `eoca bench` (add `--quick` for a first look, "
                        "`--suite` to rerun one part); the CSVs beside this page hold every number.")
