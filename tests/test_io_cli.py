"""Saving and loading problems and results, and the command line."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

import eoca
from eoca.cli import main
from eoca.instances import synthetic_problem
from eoca.io import load_assignment, load_problem, load_result, load_summary, save_problem, save_result

ROOT = Path(__file__).resolve().parents[1]


def test_problem_round_trip(tmp_path, toy):
    path = save_problem(toy, tmp_path / "toy.nc")
    again = load_problem(path)
    assert list(again.users) == ["u1", "u2", "u3"]
    np.testing.assert_array_equal(again.etv.values, toy.etv.values)
    assert again.risk_tolerance.values.tolist() == ["R2", "R3", "R4"]
    assert eoca.solve(again).objective == pytest.approx(2.4)


def test_problem_round_trip_with_ranges_holdout_and_int_ids(tmp_path):
    problem = synthetic_problem(200, 4, family="zeros", seed=1, holdout=True)
    again = load_problem(save_problem(problem, tmp_path / "p.nc"))
    assert again.holdout and again.name == problem.name
    assert again.users.dtype.kind == "i"
    np.testing.assert_array_equal(again.demand_min.values, problem.demand_min.values)


def test_corrupt_and_foreign_files_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.nc"
    bad.write_bytes(b"not a netcdf file at all")
    with pytest.raises(eoca.FileFormatError, match="not a readable eoca problem file"):
        load_problem(bad)
    import xarray as xr

    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"x": ("a", [1, 2])}).to_netcdf(foreign, engine="h5netcdf")
    with pytest.raises(eoca.FileFormatError, match="not written by eoca.save_problem"):
        load_problem(foreign)
    (tmp_path / "summary.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(eoca.FileFormatError, match="not written by eoca.save_result"):
        load_summary(tmp_path)


def test_failed_write_leaves_no_file(tmp_path, toy, monkeypatch):
    import xarray as xr

    def boom(self, path, **kw):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", boom)
    with pytest.raises(OSError, match="disk full"):
        save_problem(toy, tmp_path / "toy.nc")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_result_round_trip(tmp_path, fmt):
    problem = synthetic_problem(300, 4, seed=2, holdout=True)
    result = eoca.solve(problem)
    save_result(result, tmp_path, format=fmt)
    summary = load_summary(tmp_path)
    assert summary["status"] == "optimal" and summary["checks"]["ok"]
    assert summary["objective"] == pytest.approx(result.objective)
    assignment = load_assignment(tmp_path)
    assert int(assignment.isnull().sum()) == int((result.codes < 0).sum()) > 0
    again = load_result(tmp_path, problem)
    np.testing.assert_array_equal(again.codes, result.codes)
    assert again.checks.ok and again.status is eoca.Status.OPTIMAL


def test_cli_solve_prints_summary_and_writes(tmp_path, capsys):
    code = main(["solve", str(ROOT / "problems" / "paper_toy.py"), "--solver", "heuristic", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "objective  2.40" in out and "gap 0.0000%" in out and "all checks pass" in out
    assert (tmp_path / "assignment.parquet").is_file() and (tmp_path / "summary.json").is_file()


def test_cli_scenario_parameters_and_failure_exit_code(capsys):
    code = main(["solve", str(ROOT / "problems" / "tight_risk.py"), "--param", "n_users=3000",
                 "--solver", "heuristic", "--option", "risk_safe=False"])
    out = capsys.readouterr().out
    assert code == 1  # the faithful heuristic breaks the risk rule here
    assert "status     error" in out and "above their risk tolerance" in out
    breaches = re.search(r"([\d,]+) users above their risk tolerance", out).group(1)
    # the default safety net repairs the same allocation and says what it did
    code = main(["solve", str(ROOT / "problems" / "tight_risk.py"), "--param", "n_users=3000",
                 "--solver", "heuristic"])
    out = capsys.readouterr().out
    assert code == 0 and "all checks pass" in out
    assert re.search(rf"repair     Algorithm 1 placed {breaches} users above their risk tolerance and stranded 0; "
                     r"the safety net re-allocated [\d,]+ users and moved [\d,]+", out), out


def test_cli_errors_are_one_line(capsys):
    code = main(["solve", str(ROOT / "problems" / "paper_toy.py"), "--solver", "nope"])
    assert code == 2
    assert "unknown solver 'nope'" in capsys.readouterr().err


def test_cli_lists_solvers(capsys):
    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    for name in ("exact", "ip", "heuristic", "manual"):
        assert name in out


@pytest.mark.parametrize("scenario", sorted((ROOT / "problems").glob("*.py")), ids=lambda p: p.stem)
def test_every_scenario_solves(scenario):
    from eoca.cli import load_scenario

    params = {"n_users": 2000} if scenario.stem != "paper_toy" else {}
    result = eoca.solve(load_scenario(scenario, **params))
    assert result.status is eoca.Status.OPTIMAL and result.checks.ok


def test_assignment_and_summary_from_different_saves_are_caught(tmp_path):
    problem = synthetic_problem(300, 4, seed=2)
    save_result(eoca.solve(problem), tmp_path / "a")
    save_result(eoca.solve(problem, solver="manual"), tmp_path / "b")
    (tmp_path / "b" / "assignment.parquet").replace(tmp_path / "a" / "assignment.parquet")
    with pytest.raises(eoca.FileFormatError, match="not the assignment .* describes"):
        load_assignment(tmp_path / "a")
