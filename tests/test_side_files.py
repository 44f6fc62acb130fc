"""Problems with an eligibility mask and side constraints survive their files exactly, and damage to the
arrays the side rules add is named like damage to any other array."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import eoca
from eoca.io import load_problem, save_problem


def ruled(user_kind="string", n=200, k=4, seed=3):
    """A small problem with every kind of side rule: a mask, a quota by id list and by boolean Series (one
    over every fund), a per-user budget on some funds and a per-pair budget."""
    rng = np.random.default_rng(seed)
    ids = (pd.Index([f"u{i:04d}" for i in range(n)], dtype=object) if user_kind == "string"
           else pd.Index(rng.permutation(10 * n)[:n].astype(np.int64)))
    funds = [f"fund {j}" for j in range(k)]
    grid = xr.DataArray(rng.random((n, k)), dims=("user", "fund"), coords={"user": ids, "fund": funds})
    mask = rng.random((n, k)) < 0.85
    mask[:, 0] = True
    per_pair = pd.DataFrame(rng.random((n, k)), index=ids, columns=funds)
    constraints = [
        eoca.Quota(users=list(ids[: n // 3]), funds=[funds[1]], at_least=5, name="listed users in fund 1"),
        eoca.Quota(users=pd.Series(rng.random(n) < 0.5, index=ids), at_most=n, name="a group placed"),
        eoca.Linear(weights=pd.Series(rng.gamma(2.0, 1.0, n), index=ids), funds=funds[2:], at_most=n,
                    name="commission"),
        eoca.Linear(weights=per_pair, at_least=0.0, at_most=float(n), name="cost"),
    ]
    demand = {funds[0]: (0, n), funds[1]: (10, n), funds[2]: (0, n), funds[3]: (0, n)}
    return eoca.AllocationProblem(
        grid, demand, dict(zip(funds, [1, 1, 2, 2][:k])), pd.Series(rng.choice([1, 2], size=n), index=ids),
        eligible=xr.DataArray(mask, dims=("user", "fund"), coords={"user": ids, "fund": funds}),
        constraints=constraints, name="with rules",
    )


def _same_rules(again, problem):
    a, b = again.compile(), problem.compile()
    np.testing.assert_array_equal(a.mask, b.mask)
    assert [c.name for c in again.constraints] == [c.name for c in problem.constraints]
    assert [type(c) for c in again.constraints] == [type(c) for c in problem.constraints]
    for x, y in zip(a.constraints, b.constraints):
        assert (x.kind, x.lo, x.hi) == (y.kind, y.lo, y.hi)
        np.testing.assert_array_equal(x.coefficients(), y.coefficients())
    assert again.fingerprint() == problem.fingerprint()


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
@pytest.mark.parametrize("user_kind", ["string", "integer"])
def test_mask_and_constraints_round_trip(tmp_path, suffix, user_kind):
    problem = ruled(user_kind)
    again = load_problem(save_problem(problem, tmp_path / f"p{suffix}"))
    _same_rules(again, problem)
    assert again.users.tolist() == problem.users.tolist()
    first, second = eoca.solve(problem, solver="exact"), eoca.solve(again, solver="exact")
    assert first.checks.ok and second.checks.ok
    assert second.objective == first.objective
    np.testing.assert_array_equal(second.codes, first.codes)


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_a_problem_without_side_rules_still_loads_without_them(tmp_path, suffix):
    problem = ruled()
    plain = eoca.AllocationProblem(problem.etv, {f: (0, problem.n_users) for f in problem.funds},
                                   problem.risk_level.to_series().to_dict(), problem.risk_tolerance)
    again = load_problem(save_problem(plain, tmp_path / f"p{suffix}"))
    assert again.eligible is None and again.constraints == ()
    assert again.fingerprint() == plain.fingerprint()


@pytest.mark.parametrize("array", ["eligible", "constraint_0", "constraint_3"])
@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_a_truncated_chunk_of_a_side_rule_array_is_named(tmp_path, array, keep):
    path = save_problem(ruled(), tmp_path / "p.zarr")
    chunk = sorted(p for p in (path / array / "c").rglob("*") if p.is_file())[0]
    chunk.write_bytes(chunk.read_bytes()[: int(len(chunk.read_bytes()) * keep)])
    with pytest.raises(eoca.FileFormatError, match=rf"{re.escape(str(path))}: array '{array}', chunk 0"):
        load_problem(path)


def test_a_missing_side_rule_array_is_named(tmp_path):
    import shutil

    path = save_problem(ruled(), tmp_path / "p.zarr")
    shutil.rmtree(path / "constraint_2")
    with pytest.raises(eoca.FileFormatError, match="lacks the array 'constraint_2'"):
        load_problem(path)


@pytest.mark.parametrize("damage", ["bound", "record", "kind"])
def test_tampered_constraint_records_are_refused(tmp_path, damage):
    import zarr

    path = save_problem(ruled(), tmp_path / "p.zarr")
    group = zarr.open_group(str(path), mode="a")
    records = json.loads(json.dumps(group.attrs["constraints"]))
    if damage == "bound":
        records[1]["at_most"] = 1.0  # still a valid constraint, but not the one saved
        match = "does not match the fingerprint"
    elif damage == "record":
        del records[0]["per"]
        match = "side constraint 0 is described incompletely"
    else:
        records[0]["kind"] = "budget"
        match = "unknown kind 'budget'"
    group.attrs["constraints"] = records
    with pytest.raises(eoca.FileFormatError, match=match):
        load_problem(path)


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.95])
def test_a_truncated_netcdf_with_side_rules_is_named(tmp_path, keep):
    path = save_problem(ruled(), tmp_path / "p.nc")
    path.write_bytes(path.read_bytes()[: int(len(path.read_bytes()) * keep)])
    with pytest.raises(eoca.FileFormatError, match=re.escape(str(path))):
        load_problem(path)


def test_a_netcdf_lacking_a_side_rule_variable_is_named(tmp_path):
    path = save_problem(ruled(), tmp_path / "p.nc")
    ds = xr.load_dataset(path, engine="h5netcdf").drop_vars("eligible")
    ds.to_netcdf(tmp_path / "q.nc", engine="h5netcdf")
    with pytest.raises(eoca.FileFormatError, match="q.nc lacks the variable 'eligible'"):
        load_problem(tmp_path / "q.nc")


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_result_with_side_constraints_reads_back_with_its_certificate(tmp_path, fmt):
    from eoca.io import load_result, load_summary, save_result

    problem = ruled()
    result = eoca.solve(problem, solver="exact")
    assert result.checks.ok and result.multipliers is not None
    path = save_result(result, tmp_path / "r", format=fmt)
    summary = load_summary(path)
    assert summary["multipliers"] == pytest.approx(list(result.multipliers))
    assert set(summary["constraints"]) == {c.name for c in problem.constraints}
    assert summary["constraints"]["commission"]["activity"] == pytest.approx(result.constraints.loc["commission", "activity"])
    again = load_result(path, problem)
    # the bound is recomputed on the problem from the saved prices and multipliers: the same certificate
    assert again.status is result.status and again.bound == pytest.approx(result.bound, rel=1e-12)
    np.testing.assert_allclose(again.multipliers, result.multipliers)
    assert again.constraints["ok"].all()


def test_a_loaded_result_breaking_a_constraint_of_the_problem_it_is_given_is_an_error(tmp_path):
    from eoca.io import load_result, save_result

    problem = ruled()
    path = save_result(eoca.solve(problem, solver="exact"), tmp_path / "r")
    stricter = eoca.AllocationProblem(
        problem.etv, {f: (int(a), int(b)) for f, a, b in zip(problem.funds, problem.demand_min.values,
                                                               problem.demand_max.values)},
        problem.risk_level.to_series().to_dict(), problem.risk_tolerance, eligible=problem.eligible,
        constraints=[eoca.Quota(users=list(problem.users), funds=["fund 1"], at_most=0, name="nobody in fund 1")],
        name="stricter")
    again = load_result(path, stricter)
    assert again.status is eoca.Status.ERROR and "nobody in fund 1" in again.message


def test_the_command_line_prints_the_side_constraints(tmp_path, capsys):
    from eoca.cli import main

    path = save_problem(ruled(), tmp_path / "p.zarr")
    assert main(["solve", str(path)]) == 0
    out = capsys.readouterr().out
    assert "every side constraint met (4)" in out
    for name in ("listed users in fund 1", "a group placed", "commission", "cost"):
        assert re.search(rf"(?m)^{re.escape(name)}\s+[\d,.]+", out), name
