"""Saving and loading problems and results, and the command line."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

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


def declared(user_kind="string", dtype=np.float64, n=240, k=4, seed=1, zeros=False):
    """A problem with demand ranges, holdout, a name, labelled risk levels and ids of the given kind
    (``zeros``: an ETV of zeros and every user at the lowest risk level)."""
    rng = np.random.default_rng(seed)
    ids = {"string": pd.Index([f"{i:03d}" for i in range(n)], dtype=object),
           "pandas-string": pd.Index([f"c-{i}" for i in range(n)], dtype="str"),
           "integer": pd.Index(rng.permutation(10 * n)[:n].astype(np.int64))}[user_kind]
    funds = [f"fund {j}" for j in range(k)]
    values = rng.random((n, k)).astype(dtype) * (rng.random((n, k)) < 0.7)
    tolerance = pd.Series(rng.choice(["R1", "R2", "R3"], size=n), index=ids, dtype=object)
    if zeros:
        values, tolerance[:] = values * 0, "R1"
    grid = xr.DataArray(values, dims=("user", "fund"), coords={"user": ids, "fund": funds})
    risk = dict(zip(funds, ["R1", "R1", "R2", "R3"][:k]))
    demand = {funds[0]: (10, n // 2), funds[1]: 20, funds[2]: (0, n // 4), funds[3]: (5, 30)}
    return eoca.AllocationProblem(grid, demand, risk, tolerance, holdout=True, name="ranges and holdout")


def assert_same_problem(again, problem):
    assert again.users.tolist() == problem.users.tolist()
    assert again.users.dtype == problem.users.dtype and again.funds.tolist() == problem.funds.tolist()
    assert again.etv.dtype == problem.etv.dtype
    np.testing.assert_array_equal(again.etv.values, problem.etv.values)
    np.testing.assert_array_equal(again.demand_min.values, problem.demand_min.values)
    np.testing.assert_array_equal(again.demand_max.values, problem.demand_max.values)
    assert again.has_ranges and again.holdout and again.name == problem.name
    assert again.risk_tolerance.values.tolist() == problem.risk_tolerance.values.tolist()
    assert again.risk_level.values.tolist() == problem.risk_level.values.tolist()
    assert again.fingerprint() == problem.fingerprint()


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
@pytest.mark.parametrize("user_kind", ["string", "pandas-string", "integer"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_problem_round_trip_keeps_ids_dtypes_ranges_holdout_and_name(tmp_path, suffix, user_kind, dtype):
    problem = declared(user_kind, dtype)
    again = load_problem(save_problem(problem, tmp_path / f"p{suffix}"))
    assert_same_problem(again, problem)
    assert eoca.solve(again).objective == eoca.solve(problem).objective


def test_saving_again_replaces_the_store_whole(tmp_path):
    path = tmp_path / "p.zarr"
    save_problem(declared(n=300), path)
    smaller = declared(n=120, seed=5)
    save_problem(smaller, path)
    assert_same_problem(load_problem(path), smaller)
    assert [p.name for p in tmp_path.iterdir()] == ["p.zarr"]


def test_zarr_problem_opens_lazily_and_solves_the_same(tmp_path):
    problem = declared("string", n=3000)
    path = save_problem(problem, tmp_path / "p.zarr")
    lazy = load_problem(path, chunks=1000)
    assert lazy.compile().is_lazy and lazy.etv.data.chunks[0] == (1000, 1000, 1000)
    assert eoca.solve(lazy).objective == pytest.approx(eoca.solve(problem).objective, rel=1e-12)


def _chunk_files(store, array):
    return sorted(p for p in (store / array / "c").rglob("*") if p.is_file())


@pytest.mark.parametrize("array", ["etv", "risk_code", "user_offsets", "user_bytes"])
@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_truncated_zarr_chunk_names_store_array_and_chunk(tmp_path, array, keep):
    path = save_problem(declared(n=300), tmp_path / "p.zarr")
    chunk = _chunk_files(path, array)[0]
    data = chunk.read_bytes()
    chunk.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(eoca.FileFormatError, match=rf"{re.escape(str(path))}: array '{array}', chunk 0"):
        load_problem(path)


def test_flipped_byte_in_a_grid_chunk_fails_its_checksum(tmp_path):
    path = save_problem(declared(n=300), tmp_path / "p.zarr")
    chunk = _chunk_files(path, "etv")[0]
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0x40
    chunk.write_bytes(bytes(data))
    with pytest.raises(eoca.FileFormatError, match=r"array 'etv', chunk 0 .*damaged"):
        load_problem(path)


def test_damaged_chunk_of_a_lazily_opened_grid_is_named_when_read(tmp_path):
    path = save_problem(declared(n=3000), tmp_path / "p.zarr", )
    import zarr

    zarr.open_group(str(path), mode="r")  # the store opens fine
    lazy = load_problem(path, chunks=1000)
    chunk = _chunk_files(path, "etv")[0]
    chunk.write_bytes(chunk.read_bytes()[:50])
    with pytest.raises(eoca.FileFormatError, match=r"array 'etv', chunk 0"):
        eoca.solve(lazy)


@pytest.mark.parametrize("damage", ["metadata", "missing-array", "foreign"])
def test_damaged_zarr_store_metadata(tmp_path, damage):
    path = save_problem(declared(n=100), tmp_path / "p.zarr")
    if damage == "metadata":
        (path / "zarr.json").write_text((path / "zarr.json").read_text()[:40])
        match = "not a readable eoca problem store"
    elif damage == "missing-array":
        import shutil

        shutil.rmtree(path / "risk_code")
        match = "lacks the array 'risk_code'"
    else:
        import zarr

        zarr.open_group(str(path), mode="a").attrs["eoca_format"] = "other"
        match = "not written by eoca.save_problem"
    with pytest.raises(eoca.FileFormatError, match=match):
        load_problem(path)


@pytest.mark.parametrize("keep", [0.02, 0.3, 0.7, 0.98])
def test_truncated_netcdf_file(tmp_path, keep):
    path = save_problem(declared(n=300), tmp_path / "p.nc")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(eoca.FileFormatError, match=re.escape(str(path))):
        load_problem(path)


def test_netcdf_lacking_a_variable(tmp_path):
    path = save_problem(declared(n=50), tmp_path / "p.nc")
    ds = xr.load_dataset(path, engine="h5netcdf").drop_vars("demand_max")
    ds.to_netcdf(tmp_path / "q.nc", engine="h5netcdf")
    with pytest.raises(eoca.FileFormatError, match=r"q.nc lacks \['demand_max'\]"):
        load_problem(tmp_path / "q.nc")


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
    problem = load_scenario(scenario, **params)
    result = eoca.solve(problem)
    assert result.checks.ok
    if problem.constraints:  # the bound is the LP relaxation's: a small delivery may keep an integrality gap
        assert result.status is eoca.Status.OPTIMAL or (result.status is eoca.Status.FEASIBLE and result.gap < 1e-3)
    else:
        assert result.status is eoca.Status.OPTIMAL


def test_assignment_and_summary_from_different_saves_are_caught(tmp_path):
    problem = synthetic_problem(300, 4, seed=2)
    save_result(eoca.solve(problem), tmp_path / "a")
    save_result(eoca.solve(problem, solver="manual"), tmp_path / "b")
    (tmp_path / "b" / "assignment.parquet").replace(tmp_path / "a" / "assignment.parquet")
    with pytest.raises(eoca.FileFormatError, match="not the assignment .* describes"):
        load_assignment(tmp_path / "a")


def assert_same_result(again, result):
    np.testing.assert_array_equal(again.codes, result.codes)
    assert again.status is result.status and again.objective == result.objective
    assert again.bound == pytest.approx(result.bound, rel=1e-12)
    assert again.checks.describe() == result.checks.describe() and again.counts.equals(result.counts)
    np.testing.assert_array_equal(again.prices.values, result.prices.values)
    assert again.assignment.equals(result.assignment) and again.solver == result.solver


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
@pytest.mark.parametrize("user_kind", ["string", "integer"])
def test_result_written_and_read_back_equals_the_one_in_memory(tmp_path, fmt, user_kind):
    problem = declared(user_kind)  # string ids "000", "001", ... look like numbers in a CSV
    result = eoca.solve(problem)
    assert (result.codes < 0).any()  # holdout: some users get no fund
    save_result(result, tmp_path, format=fmt)
    again = load_result(tmp_path, problem)
    assert_same_result(again, result)
    assert load_assignment(tmp_path).equals(result.assignment)
    assert load_summary(tmp_path)["problem_fingerprint"] == problem.fingerprint()


def test_parquet_fund_column_is_dictionary_encoded(tmp_path):
    import pyarrow.parquet as pq

    result = eoca.solve(declared())
    save_result(result, tmp_path)
    table = pq.read_table(tmp_path / "assignment.parquet")
    assert str(table.schema.field("fund").type) == "dictionary<values=string, indices=int32, ordered=0>"
    assert table.column("user").to_pylist() == result.problem.users.tolist()
    frame = result.to_frame()
    np.testing.assert_array_equal(table.column("etv").to_numpy(), frame["etv"].to_numpy())


@pytest.mark.parametrize("user_kind", ["string", "integer"])
def test_parquet_assignment_written_in_several_row_groups_reads_back_whole(tmp_path, monkeypatch, user_kind):
    import pyarrow.parquet as pq

    import eoca.io

    monkeypatch.setattr(eoca.io, "_RESULT_ROWS", 7)  # batches of 7 users: the last one is partial
    problem = declared(user_kind)
    result = eoca.solve(problem)
    assert problem.n_users % 7 and (result.codes < 0).any()
    save_result(result, tmp_path)
    file = pq.ParquetFile(tmp_path / "assignment.parquet")
    assert file.metadata.num_row_groups == -(-problem.n_users // 7)
    assert_same_result(load_result(tmp_path, problem), result)
    frame = result.to_frame()
    table = file.read()
    assert table.column("user").to_pylist() == problem.users.tolist()
    np.testing.assert_array_equal(table.column("etv").to_numpy(), frame["etv"].to_numpy())


def test_loaded_result_is_checked_against_the_problem_it_is_given(tmp_path):
    problem = declared(seed=1)
    save_result(eoca.solve(problem), tmp_path)
    other = declared(seed=2)  # same ids and funds, other ETV and tolerances
    again = load_result(tmp_path, other)
    assert not again.checks.ok and again.status is eoca.Status.ERROR
    assert "breaks rules of this problem" in again.message
    # a problem with the same rules but other ETV: feasible there, optimal only if the prices certify it
    values = problem.etv.values * 2 + 1
    scaled = eoca.AllocationProblem(problem.etv.copy(data=values), problem.demand, problem.risk_level,
                                    problem.risk_tolerance, holdout=True)
    again = load_result(tmp_path, scaled)
    assert again.checks.ok and again.status in (eoca.Status.FEASIBLE, eoca.Status.OPTIMAL)
    assert again.objective == pytest.approx(2 * eoca.solve(problem).objective + int((again.codes >= 0).sum()))
    assert "fingerprint differs" in again.message
    assert again.gap >= 0 and again.bound == pytest.approx(eoca.dual_bound(scaled.compile(), again.prices.values))


def test_a_saved_allocation_with_users_the_problem_lacks_or_repeats_is_not_taken_for_its_allocation(tmp_path):
    import pyarrow.parquet as pq

    problem = declared(seed=1)
    save_result(eoca.solve(problem), tmp_path)
    fewer = eoca.AllocationProblem(problem.etv.isel(user=slice(0, 200)), {f: (0, 200) for f in problem.funds},
                                   problem.risk_level, problem.risk_tolerance.isel(user=slice(0, 200)), holdout=True)
    again = load_result(tmp_path, fewer)
    assert again.status is eoca.Status.ERROR
    assert "40 of its users are not users of this problem: ['200', '201', '202', '203', '204', ... (35 more)]" in again.message
    # a file that lists a user twice contradicts itself, whatever problem it is read against
    table = tmp_path / "assignment.parquet"
    rows = pq.read_table(table)
    pq.write_table(rows.take(list(range(1, len(rows))) + [5]), table)  # user 0 gone, user 5 twice
    summary = json.loads((tmp_path / "summary.json").read_text())
    del summary["assignment_sha256"]
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(eoca.FileFormatError, match=re.escape(f"{table} lists users more than once: ['005']")):
        load_result(tmp_path, problem)


def test_saved_files_get_the_permissions_a_plain_write_gives_or_keep_those_they_replace(tmp_path):
    import os
    import stat

    problem = declared()
    old = os.umask(0o027)
    try:
        save_result(eoca.solve(problem), tmp_path / "r")
        paths = [tmp_path / "r" / "summary.json", tmp_path / "r" / "assignment.parquet",
                 save_problem(problem, tmp_path / "p.nc"), save_problem(problem, tmp_path / "p.zarr")]
        assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [0o640, 0o640, 0o640, 0o750]
        for p in paths:
            p.chmod(0o604 if p.is_file() else 0o705)
        save_result(eoca.solve(problem), tmp_path / "r")
        save_problem(problem, tmp_path / "p.nc")
        save_problem(problem, tmp_path / "p.zarr")
        assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [0o604, 0o604, 0o604, 0o705]
    finally:
        os.umask(old)


@pytest.mark.parametrize("damage", ["invalid-json", "no-status", "missing-assignment", "corrupt-no-checksum",
                                    "truncated-no-checksum", "no-summary"])
def test_damaged_result_files_name_the_file(tmp_path, damage):
    problem = declared()
    save_result(eoca.solve(problem), tmp_path)
    summary_path, table = tmp_path / "summary.json", tmp_path / "assignment.parquet"
    summary = json.loads(summary_path.read_text())
    error, named = eoca.FileFormatError, summary_path
    if damage == "invalid-json":
        summary_path.write_text(summary_path.read_text()[:-10])
    elif damage == "no-status":
        del summary["status"]
        summary_path.write_text(json.dumps(summary))
    elif damage == "missing-assignment":
        table.unlink()
        named = table
    elif damage == "no-summary":
        summary_path.unlink()
        error = FileNotFoundError
    else:
        del summary["assignment_sha256"]
        summary_path.write_text(json.dumps(summary))
        data = bytearray(table.read_bytes())
        if damage == "corrupt-no-checksum":
            data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
        else:
            data = data[: len(data) // 2]
        table.write_bytes(bytes(data))
        named = table
    with pytest.raises(error, match=re.escape(str(named if error is eoca.FileFormatError else tmp_path))):
        load_result(tmp_path, problem)


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_cli_solves_a_saved_problem_and_prints_each_stage(tmp_path, capsys, suffix):
    problem = declared()
    path = save_problem(problem, tmp_path / f"p{suffix}")
    code = main(["solve", str(path), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0 and "all checks pass" in out
    assert re.search(r"stages     load [\d.]+ s, solve [\d.]+ s, check [\d.]+ s, .*write [\d.]+ s", out), out
    assert_same_result(load_result(tmp_path / "out", problem), eoca.solve(problem))


#: A solver with a numba kernel of its own, compiled on its first call as the solvers' are in a fresh
#: install (``{cache}``: whether numba keeps it in its disk cache).
_FIRST_ELIGIBLE = """
import numba
import numpy as np

from eoca.solvers import Solver, SolverOutput


@numba.njit(cache={cache})
def first_eligible(user_level, fund_level):
    out = np.full(len(user_level), -1, np.int32)
    for i in range(len(user_level)):
        for j in range(len(fund_level)):
            if user_level[i] >= fund_level[j]:
                out[i] = j
                break
    return out


class FirstEligible(Solver):
    name = "first-eligible"

    def run(self, problem):
        c = problem.compile()
        return SolverOutput(codes=first_eligible(c.user_level, c.fund_level), status="feasible")
"""


def test_solve_reports_compile_time_apart_from_solving():
    solver: dict = {}
    exec(_FIRST_ELIGIBLE.format(cache=False), solver)
    problem = synthetic_problem(500, 4, seed=3)
    first = eoca.solve(problem, solver=solver["FirstEligible"]())
    assert first.timings["compile"] > 0.01 > first.timings["solve"]
    assert first.timings["jit"] > 0.01
    again = eoca.solve(problem, solver=solver["FirstEligible"]())
    assert "compile" not in again.timings and "jit" not in again.timings


_CACHED_KERNEL = _FIRST_ELIGIBLE.format(cache=True) + """
import json

import eoca
from eoca.instances import synthetic_problem

problem = synthetic_problem(500, 4, seed=3)
eoca.solve(problem, solver="manual")  # eoca's own kernels: loaded (or compiled) before the one measured
print(json.dumps(eoca.solve(problem, solver=FirstEligible()).timings))
"""


def test_compile_time_says_whether_kernels_were_compiled_or_loaded_from_the_cache(tmp_path):
    """A new process that finds a kernel in numba's disk cache loads it: compile time, but no JIT, and
    the message does not send a user who already ran `eoca warmup` to run it again."""
    import os
    import subprocess
    import sys

    from eoca.solve import COMPILE_NOTE_S, compile_note

    (tmp_path / "cached_kernel.py").write_text(_CACHED_KERNEL)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}

    def run():
        out = subprocess.run([sys.executable, str(tmp_path / "cached_kernel.py")], env=env, capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    compiled, loaded = run(), run()
    assert compiled["jit"] > 0.01 and compiled["compile"] >= compiled["jit"], compiled
    assert loaded["compile"] > 0 and "jit" not in loaded, loaded
    assert "eoca warmup" in compile_note({"compile": 2.0, "jit": 1.9})
    assert "cache" in compile_note({"compile": 0.5}) and "warmup" not in compile_note({"compile": 0.5})
    assert compile_note({"compile": COMPILE_NOTE_S / 2}) == compile_note({"solve": 1.0}) == ""


def test_warmup_compiles_for_each_dtype_and_says_where_the_cache_is(monkeypatch, capsys):
    from eoca import warmup as w

    monkeypatch.setattr(w, "WARMUP_CASES", (("matching", 3000, False), ("zeros", 2000, True)))
    monkeypatch.setattr(w, "WARMUP_RULES", (2_000,))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert main(["warmup", "--dtype", "float64,float32"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"float64 grids: kernels ready in [\d.]+ s", out) and "float32 grids" in out
    assert f"the __pycache__ folders under {w.cache_location()}" in out


def test_result_without_prices_keeps_its_status_only_for_the_allocation_it_saved(tmp_path):
    problem = synthetic_problem(5_000, 3, seed=1)
    save_result(eoca.solve(problem), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    for fund in summary["funds"].values():
        fund["price"] = None  # as a solver without prices (ip at a time limit) saves it
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert load_result(tmp_path, problem).status is eoca.Status.OPTIMAL
    # one user the fingerprint does not sample gets a huge ETV: same fingerprint, another problem
    values = problem.etv.values.copy()
    sampled = np.unique(np.linspace(0, 4_999, 4_096).astype(np.int64))
    values[np.setdiff1d(np.arange(5_000), sampled)[0]] = 1e9
    changed = eoca.AllocationProblem(problem.etv.copy(data=values), problem.demand, problem.risk_level,
                                     problem.risk_tolerance)
    assert changed.fingerprint() == problem.fingerprint()
    again = load_result(tmp_path, changed)
    assert again.checks.ok and again.status is eoca.Status.FEASIBLE
    assert np.isnan(again.bound) and "differs from the one saved" in again.message


def test_invalid_codes_name_no_fund(tmp_path):
    users = ["u1", "u2", "u3", "u4"]
    grid = xr.DataArray(np.arange(8.0).reshape(4, 2), dims=("user", "fund"),
                        coords={"user": users, "fund": ["x", "b"]})
    tol = pd.Series(1, index=users)
    save_result(eoca.solve(eoca.AllocationProblem(grid, {"x": 2, "b": 2}, {"x": 1, "b": 1}, tol)), tmp_path)
    other = eoca.AllocationProblem(grid.assign_coords(fund=["b", "c"]), {"b": 2, "c": 2}, {"b": 1, "c": 1}, tol)
    again = load_result(tmp_path, other)  # fund "x" is not in this problem
    assert again.status is eoca.Status.ERROR
    x_users = again.codes < 0
    assert x_users.sum() == 2
    assert all(v is None for v in again.assignment.values[x_users])
    assert again.to_frame()["fund"][x_users].isna().all()
    assert (again.to_frame()["etv"][x_users] == 0).all()


def test_failed_swap_of_a_store_keeps_the_old_one(tmp_path, monkeypatch):
    import os

    import eoca.io as io

    target = tmp_path / "p.zarr"
    target.mkdir()
    (target / "good").write_text("old")
    real, calls = os.replace, []

    def replace(a, b):
        calls.append((a, b))
        if len(calls) == 2:  # the move of the new store into place
            raise OSError("disk went away")
        return real(a, b)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(OSError, match="disk went away"):
        io._atomic_write_dir(target, lambda tmp: (tmp / "new").write_text("new"))
    monkeypatch.undo()
    assert (target / "good").read_text() == "old" and not (target / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["p.zarr"]  # no temporary left beside it


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_ids_that_read_like_missing_values_round_trip(tmp_path, fmt):
    users = ["NA", "null", "", "001"]
    grid = xr.DataArray(np.arange(8.0).reshape(4, 2), dims=("user", "fund"),
                        coords={"user": users, "fund": ["NA", "None"]})
    problem = eoca.AllocationProblem(grid, {"NA": 2, "None": 1}, {"NA": 1, "None": 1}, pd.Series(1, index=users),
                                     holdout=True)
    result = eoca.solve(problem)
    save_result(result, tmp_path, format=fmt)
    again = load_result(tmp_path, problem)
    assert again.status is eoca.Status.OPTIMAL
    np.testing.assert_array_equal(again.codes, result.codes)
    assert list(again.assignment.values) == list(result.assignment.values)


@pytest.mark.parametrize("user_kind", ["string", "integer"])
def test_missing_chunk_of_any_array_is_damage(tmp_path, monkeypatch, user_kind):
    import eoca.io as io

    monkeypatch.setattr(io, "CHUNK_USERS", 100)  # several chunks per array
    problem = declared(user_kind=user_kind, n=300)
    path = save_problem(problem, tmp_path / "p.zarr")
    arrays = sorted(p.name for p in path.iterdir() if p.is_dir())
    for array in arrays:
        chunks = _chunk_files(path, array)
        assert chunks, f"array {array} stored no chunk"
        kept = chunks[-1].read_bytes()
        chunks[-1].unlink()
        with pytest.raises(eoca.FileFormatError, match=rf"array '{array}' has 1 of its \d+ chunks missing"):
            load_problem(path)
        chunks[-1].write_bytes(kept)
    assert_same_problem(load_problem(path), problem)


def test_chunks_of_zeros_are_stored(tmp_path, monkeypatch):
    import eoca.io as io

    monkeypatch.setattr(io, "CHUNK_USERS", 100)
    problem = declared(n=300, zeros=True)  # a grid of zeros and every user at the lowest risk code
    path = save_problem(problem, tmp_path / "p.zarr")
    assert not problem.etv.values.any() and not problem.compile().user_level.any()
    assert len(_chunk_files(path, "etv")) == 3 and len(_chunk_files(path, "risk_code")) == 3
    assert_same_problem(load_problem(path), problem)


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_an_ordered_risk_scale_survives_the_file(tmp_path, suffix):
    scale = pd.CategoricalDtype(["low", "mid", "high"], ordered=True)
    users = [f"u{i}" for i in range(6)]
    g = xr.DataArray(np.arange(12.0).reshape(6, 2), dims=("user", "fund"),
                     coords={"user": users, "fund": ["safe", "bold"]})
    tol = pd.Series(["high", "low", "mid", "high", "low", "mid"], index=users, dtype=scale)
    problem = eoca.AllocationProblem(g, {"safe": 4, "bold": 2}, {"safe": "low", "bold": "high"}, tol)
    again = load_problem(save_problem(problem, tmp_path / f"p{suffix}"))
    assert list(again.risk_levels) == ["low", "mid", "high"] and again.fingerprint() == problem.fingerprint()
    assert eoca.solve(again).objective == eoca.solve(problem).objective


def test_warmup_reaches_the_newton_step_on_the_strided_warm_start_sample(monkeypatch):
    """A kernel the warm-up never called is compiled (or loaded) in a user's first large solve and shows
    as compile time there: the exact solver's Newton step runs on the every-tenth-user sample from 500k
    users, a strided view that numba compiles apart from a contiguous grid."""
    from eoca import warmup as w
    from eoca.solvers import _transport

    layouts = []
    density = _transport.K.arc_density

    def spy(etv, *args):
        layouts.append(etv.flags.c_contiguous)
        return density(etv, *args)

    monkeypatch.setattr(_transport.K, "arc_density", spy)
    monkeypatch.setattr(w, "WARMUP_CASES", w.WARMUP_CASES[:1])
    monkeypatch.setattr(w, "WARMUP_SOLVERS", ("exact",))
    monkeypatch.setattr(w, "WARMUP_RULES", ())
    w.warmup(("float64",), echo=None)
    assert False in layouts and True in layouts
