"""The benchmark registry and report, run at toy sizes (the real runs live in benchmarks/)."""

from pathlib import Path

import pandas as pd
import pytest

import eoca
from eoca.bench import BenchSpec, register_spec, registered_specs, spec_from_scenario
from eoca.bench.allocation import run_allocation_benchmarks
from eoca.bench.report import allocation_figures, allocation_tables, write_report
from eoca.instances import synthetic_problem
from eoca.testing import milp_optimum

ROOT = Path(__file__).resolve().parents[1]


def test_registry_has_every_family_and_the_funds_sweep():
    names = set(registered_specs())
    assert {"scale-matching", "scale-fighting", "scale-tight", "scale-ties", "scale-zeros", "funds-sweep"} <= names
    assert registered_specs()["scale-tight"].sizes[-1] == 10_000_000
    assert registered_specs()["funds-sweep"].sizes[-1] == 50


def test_run_records_every_solver_and_says_why_one_is_skipped(tmp_path):
    spec = register_spec(BenchSpec("toy-tight", lambda n: synthetic_problem(n, 8, family="tight"), (300, 60_000), (300,)))
    rows = run_allocation_benchmarks([spec], sizes={"toy-tight": [300, 60_000]},
                                     solvers=["exact", "heuristic", "heuristic-paper", "ip"])
    small = rows[rows["size"] == 300].set_index("solver")
    optimum, _ = milp_optimum(spec.build(300))  # the reference is independent of the exact solver
    assert small.loc["exact", "status"] == "optimal"
    assert small.loc["exact", "objective"] == pytest.approx(optimum, rel=1e-9)
    heuristic = small.loc["heuristic"]
    assert heuristic["risk_violations"] == 0 and heuristic["demand_misses"] == 0
    assert heuristic["fraction"] == pytest.approx(heuristic["objective"] / optimum, rel=1e-9)
    assert 0.99 <= heuristic["fraction"] <= 1.0 + 1e-9
    # the faithful heuristic breaks the risk rule here and is therefore not compared with the optimum
    assert small.loc["heuristic-paper", "risk_violations"] > 0 and small.loc["heuristic-paper", "status"] == "error"
    big_ip = rows[(rows["size"] == 60_000) & (rows["solver"] == "ip")].iloc[0]
    assert big_ip["skipped"].startswith(("beyond 50,000 users", "ip is not installed"))

    text = allocation_tables(rows)
    assert "### toy-tight" in text and "skipped" in text
    figures = allocation_figures(rows, tmp_path)
    assert [p.name for p in figures] == ["allocation_runtime.png", "allocation_objective.png"]
    assert all(p.stat().st_size > 1000 for p in figures)
    report = write_report(tmp_path, [("Allocation", text)])
    body = report.read_text()
    assert "numba" in body and "| cpus |" in body and "### toy-tight" in body


def test_a_user_scenario_becomes_a_spec():
    spec = spec_from_scenario(ROOT / "problems" / "tight_risk.py", sizes=(500,))
    problem = spec.build(500)
    assert isinstance(problem, eoca.AllocationProblem) and problem.n_users == 500
    assert spec.name in registered_specs()


def test_unknown_spec_is_named():
    from eoca.bench.specs import get_spec

    with pytest.raises(eoca.ValidationError, match="unknown benchmark 'nope'"):
        get_spec("nope")


def test_run_bench_assembles_sections_from_separate_runs(tmp_path):
    from eoca.bench.run import run_bench

    register_spec(BenchSpec("toy-matching", lambda n: synthetic_problem(n, 4, family="matching"), (200,), (200,)))
    run_bench(tmp_path, quick=True, suites=["allocation"], specs=["toy-matching"], echo=lambda m: None)
    (tmp_path / "sections" / "ab.md").write_text("*an earlier A/B run*\n\nlifts table")
    page = run_bench(tmp_path, quick=True, suites=["allocation"], specs=["toy-matching"], echo=lambda m: None)
    text = page.read_text()
    assert "## Allocation: solvers across scales" in text and "### toy-matching" in text
    assert "## Simulated A/B test (Table 3)" in text and "an earlier A/B run" in text
    assert (tmp_path / "allocation.csv").is_file() and (tmp_path / "allocation_runtime.png").is_file()
    with pytest.raises(eoca.ValidationError, match="unknown \\['speed'\\]"):
        run_bench(tmp_path, suites=["speed"])


def test_the_report_keeps_the_sections_measured_by_the_benchmarks(tmp_path):
    from eoca.bench.run import assemble_report

    (tmp_path / "sections").mkdir()
    (tmp_path / "sections" / "allocation.md").write_text("the allocation table")
    (tmp_path / "sections" / "pipeline.md").write_text("## Pipeline: from grid to delivered assignment\n\nstages")
    page = assemble_report(tmp_path).read_text()
    allocation = page.index("## Allocation: solvers across scales\n\nthe allocation table")
    assert page.index("## Pipeline: from grid to delivered assignment\n\nstages") > allocation
    assert "## None" not in page and "ESDPM at platform scale" not in page  # only the sections that exist


def test_a_spec_with_side_constraints_skips_the_solvers_that_cannot_honour_them():
    from eoca.instances import constrained_problem

    spec = register_spec(BenchSpec("toy-rules", lambda n: constrained_problem(n, 4, seed=2), (400,), (400,)))
    rows = run_allocation_benchmarks([spec], solvers=["exact", "heuristic", "manual", "ip"]).set_index("solver")
    assert rows.loc["exact", "skipped"] == "" and rows.loc["ip", "skipped"] == ""
    assert rows.loc["ip", "objective"] == pytest.approx(rows.loc["exact", "objective"], rel=1e-9)
    for name in ("heuristic", "manual"):
        assert rows.loc[name, "skipped"].startswith("unsupported:") and "'exact'" in rows.loc[name, "skipped"]


def test_the_side_rules_suite_measures_rules_against_the_plain_delivery(tmp_path, monkeypatch):
    from eoca.bench import run as bench_run

    monkeypatch.setitem(bench_run.SIDE_SIZES, "quick", (3_000,))
    page = bench_run.run_bench(tmp_path, quick=True, suites=["side"], echo=lambda m: None).read_text()
    assert "## Business rules: a mask and six side constraints against the plain delivery" in page
    assert "![side](side.png)" in page and (tmp_path / "side.png").is_file()
    rows = pd.read_csv(tmp_path / "side.csv")
    assert list(rows["n_users"]) == [3_000]
    row = rows.iloc[0]
    # the rules hold, cost ETV, and the gap is certified from the result's own prices and multipliers
    assert bool(row["rules_met"]) and 0 < row["etv_lost"] < 0.2
    assert -1e-9 <= row["certified_gap"] <= 1e-5
    assert row["status"] in ("optimal", "feasible") and row["method"] == "restricted LP"  # 3,000 users: LPs
