"""Saving and loading problems (NetCDF) and results (Parquet or CSV plus a JSON summary).

Every write goes to a temporary file beside the target and is moved into place only when complete, so a
crash never leaves a half-written file under the target name. Files carry a format marker; a file that
lacks it, or cannot be parsed, raises :class:`eoca.errors.FileFormatError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from eoca.checks import check_allocation, codes_from_assignment
from eoca.errors import FileFormatError, ValidationError
from eoca.problem import FUND, USER, AllocationProblem
from eoca.result import Result, Status

__all__ = ["save_problem", "load_problem", "save_result", "load_result", "load_summary", "load_assignment"]

PROBLEM_FORMAT = "eoca.problem/1"
RESULT_FORMAT = "eoca.result/1"
SUMMARY_NAME = "summary.json"


def _atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain(values: np.ndarray) -> np.ndarray:
    """Arrays NetCDF can store: labels as unicode, numbers as int64 or float64."""
    values = np.asarray(values)
    kind = pd.api.types.infer_dtype(values, skipna=False)
    if kind == "integer":
        return values.astype(np.int64)
    if kind in ("floating", "mixed-integer-float"):
        return values.astype(np.float64)
    if kind == "boolean":
        return values.astype(bool)
    return np.asarray([str(v) for v in values.tolist()], dtype=str)


def save_problem(problem: AllocationProblem, path: str | os.PathLike) -> Path:
    """Write a problem to NetCDF (``.nc``): the ETV grid with demands, risk and holdout as metadata."""
    path = Path(path)
    kinds = {"user": pd.Index(problem.users).inferred_type, "fund": pd.Index(problem.funds).inferred_type}
    ds = xr.Dataset(
        {
            "etv": ((USER, FUND), np.asarray(problem.etv.values)),
            "demand_min": ((FUND,), np.asarray(problem.demand_min.values)),
            "demand_max": ((FUND,), np.asarray(problem.demand_max.values)),
            "risk_level": ((FUND,), _plain(problem.risk_level.values)),
            "risk_tolerance": ((USER,), _plain(problem.risk_tolerance.values)),
        },
        coords={USER: _plain(problem.users.to_numpy()), FUND: _plain(problem.funds.to_numpy())},
        attrs={
            "eoca_format": PROBLEM_FORMAT,
            "holdout": int(problem.holdout),
            "name": problem.name or "",
            "user_id_kind": kinds["user"],
            "fund_id_kind": kinds["fund"],
        },
    )
    _atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))
    return path


def load_problem(path: str | os.PathLike) -> AllocationProblem:
    """Read a problem written by :func:`save_problem`; it is validated again on the way in."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no problem file at {path}")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            ds = ds.load()
    except Exception as exc:  # h5py/h5netcdf raise many kinds on a corrupt file
        raise FileFormatError(f"{path} is not a readable eoca problem file (NetCDF): {exc}") from None
    if ds.attrs.get("eoca_format") != PROBLEM_FORMAT:
        raise FileFormatError(
            f"{path} was not written by eoca.save_problem (format {ds.attrs.get('eoca_format')!r}, "
            f"expected {PROBLEM_FORMAT!r})"
        )
    missing = {"etv", "demand_min", "demand_max", "risk_level", "risk_tolerance"} - set(ds.data_vars)
    if missing:
        raise FileFormatError(f"{path} lacks {sorted(missing)}")
    funds = ds[FUND].values
    lo, hi = ds["demand_min"].values, ds["demand_max"].values
    demand = {f: (int(a) if a == b else (int(a), int(b))) for f, a, b in zip(funds.tolist(), lo, hi)}
    return AllocationProblem(
        etv=ds["etv"],
        demand=demand,
        risk_level=dict(zip(funds.tolist(), ds["risk_level"].values.tolist())),
        risk_tolerance=pd.Series(ds["risk_tolerance"].values, index=ds[USER].values),
        holdout=bool(ds.attrs.get("holdout", 0)),
        name=ds.attrs.get("name") or None,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def result_summary(result: Result) -> dict[str, Any]:
    """The JSON-ready summary of a result (what ``summary.json`` holds)."""
    checks = result.checks
    funds = [f.item() if isinstance(f, np.generic) else f for f in result.problem.funds]
    return _jsonable(
        {
            "eoca_format": RESULT_FORMAT,
            "problem": result.problem.name,
            "n_users": result.problem.n_users,
            "solver": result.solver,
            "status": result.status.value,
            "objective": result.objective,
            "bound": result.bound,
            "gap": result.gap,
            "message": result.message,
            "timings": result.timings,
            "stats": {k: v for k, v in result.stats.items() if isinstance(v, int | float | str | list)},
            "checks": {
                "ok": checks.ok,
                "unplaced": checks.unplaced,
                "demand_misses": checks.demand_misses,
                "risk_violations": checks.risk_violations,
                "invalid": checks.invalid,
            },
            "funds": {
                str(f): {
                    "users": int(n),
                    "demand_min": int(lo),
                    "demand_max": int(hi),
                    "price": (float(p) if p is not None else None),
                }
                for f, n, lo, hi, p in zip(
                    funds,
                    checks.counts.values,
                    result.problem.demand_min.values,
                    result.problem.demand_max.values,
                    (result.prices.values if result.prices is not None else [None] * len(funds)),
                )
            },
        }
    )


def save_result(result: Result, directory: str | os.PathLike, *, format: str = "parquet") -> Path:
    """Write ``assignment.parquet`` (or ``.csv``: user, fund, etv) and ``summary.json`` into ``directory``."""
    if format not in ("parquet", "csv"):
        raise ValidationError("format", f"must be 'parquet' or 'csv'; got {format!r}")
    directory = Path(directory)
    frame = result.to_frame()
    target = directory / f"assignment.{format}"
    if format == "parquet":
        _atomic_write(target, lambda tmp: frame.to_parquet(tmp, index=False))
    else:
        _atomic_write(target, lambda tmp: frame.to_csv(tmp, index=False))
    summary = result_summary(result)
    summary["assignment_file"] = target.name
    # the summary names the exact assignment it describes, so a pair from two different saves is caught
    summary["assignment_sha256"] = _sha256(target)
    _atomic_write(directory / SUMMARY_NAME, lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    return directory


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_summary(directory: str | os.PathLike) -> dict[str, Any]:
    """Read ``summary.json`` of a saved result."""
    path = Path(directory) / SUMMARY_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {SUMMARY_NAME} in {directory}")
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(summary, dict) or summary.get("eoca_format") != RESULT_FORMAT:
        raise FileFormatError(f"{path} was not written by eoca.save_result (no {RESULT_FORMAT!r} marker)")
    return summary


def load_assignment(directory: str | os.PathLike) -> xr.DataArray:
    """The saved assignment as a DataArray over "user" of fund ids (missing for no fund)."""
    summary = load_summary(directory)
    path = Path(directory) / summary.get("assignment_file", "assignment.parquet")
    if path.is_file() and summary.get("assignment_sha256") not in (None, _sha256(path)):
        raise FileFormatError(
            f"{path} is not the assignment {Path(directory) / SUMMARY_NAME} describes (it was replaced or the "
            "save was interrupted); save the result again"
        )
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise FileFormatError(f"{path} is not a readable assignment table: {exc}") from None
    if not {USER, FUND} <= set(frame.columns):
        raise FileFormatError(f"{path} lacks the 'user' and 'fund' columns")
    fund = frame[FUND].astype(object).where(frame[FUND].notna(), None)
    return xr.DataArray(fund.to_numpy(), dims=(USER,), coords={USER: frame[USER].to_numpy()}, name="fund")


def load_result(directory: str | os.PathLike, problem: AllocationProblem) -> Result:
    """Rebuild a saved result against its problem; the allocation is checked again on the way in."""
    summary = load_summary(directory)
    assignment = load_assignment(directory)
    checks = check_allocation(problem, assignment)
    codes = codes_from_assignment(problem, assignment)
    prices = [summary["funds"].get(str(f), {}).get("price") for f in problem.funds]
    price_da = (
        xr.DataArray(np.array(prices, dtype=float), dims=(FUND,), coords={FUND: problem.funds}, name="price")
        if all(p is not None for p in prices)
        else None
    )
    bound = summary.get("bound")
    return Result(
        problem=problem,
        codes=codes,
        objective=checks.objective,
        status=Status(summary["status"]),
        checks=checks,
        bound=float("nan") if bound is None else float(bound),
        prices=price_da,
        timings=dict(summary.get("timings", {})),
        solver=summary.get("solver", ""),
        message=summary.get("message", ""),
        stats=dict(summary.get("stats", {})),
    )
