"""Saving and loading problems (Zarr or NetCDF) and results (Parquet or CSV plus a JSON summary).

Every write goes to a temporary name beside the target and is moved into place only when complete, so a
crash never leaves a half-written file under the target name. Files carry a versioned format marker; a
file that lacks it, is truncated, corrupt or cannot be parsed raises :class:`eoca.errors.FileFormatError`
naming the file (and, inside a Zarr store, the array and chunk).

Problem files
-------------
``.zarr`` (a directory, Zarr v3): arrays ``etv`` (users x funds, in the grid's dtype, chunks of
``CHUNK_USERS`` users, each chunk with a CRC-32C checksum), ``risk_code`` (each user's position on the risk
scale) and the user ids (``user`` for integers; for strings ``user_offsets`` and ``user_bytes``: the UTF-8
bytes of every id one after another, and where each starts, as in Arrow's string layout); the fund table,
risk scale, holdout, name, id kinds, dtypes and the problem's fingerprint in the group's attributes. A
problem with side rules adds the mask ``eligible`` and one array ``constraint_<q>`` per side constraint,
described in the attribute ``constraints`` (:mod:`eoca.rules_io`). A Zarr
problem can be opened lazily (``load_problem(path, chunks=...)``) for the distributed solve.
``.nc`` (NetCDF through h5netcdf): the same content as one Dataset, read whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from eoca.checks import check_allocation, check_and_bound
from eoca.errors import FileFormatError, ValidationError, show_values
from eoca.io_encoding import (
    levels_attrs,
    levels_from,
    netcdf_labels,
    string_layout,
    strings_from_layout,
    tolerance_series,
)
from eoca.problem import FUND, USER, AllocationProblem, fund_vector, id_kind
from eoca.result import Result, Status, assigned_values
from eoca.rules_io import dataset_array, side_arrays, side_records, side_rules
from eoca.zarr_chunks import _read_chunked, lazy_zarr_array, read_zarr_chunk  # noqa: F401 - public here too

__all__ = [
    "save_problem", "load_problem", "save_result", "load_result", "load_summary", "load_assignment",
    "CHUNK_USERS",
]

PROBLEM_FORMAT = "eoca.problem/2"  # Zarr store
PROBLEM_FORMAT_NC = "eoca.problem/1"  # NetCDF file
RESULT_FORMAT = "eoca.result/2"
_RESULT_FORMATS = ("eoca.result/1", RESULT_FORMAT)  # /1: written before the fingerprint and id kinds
SUMMARY_NAME = "summary.json"
#: Users per chunk of a Zarr problem's arrays (also the unit a lazy open reads).
CHUNK_USERS = 1_000_000


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_of(target: Path, default: int) -> int:
    """The permissions ``target`` gets: those of the file it replaces, else what ``open`` would give (the
    temporary names are created private, 0600 / 0700, and must not stay so)."""
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        return default & ~_umask()


def _atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _mode_of(target, 0o666))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Write a directory (a Zarr store) under a temporary name, then swap it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        write(tmp)
        os.chmod(tmp, _mode_of(target, 0o777) if target.is_dir() else 0o777 & ~_umask())
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            kept = old / ("store" if target.is_dir() else "file")
            os.replace(target, kept)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(kept, target)  # the new store could not be swapped in: the old one stays
                shutil.rmtree(old, ignore_errors=True)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _header(problem: AllocationProblem) -> dict[str, Any]:
    """What a problem file says about itself beside the arrays (JSON-ready)."""
    c = problem.compile()
    funds = [f.item() if isinstance(f, np.generic) else f for f in problem.funds.tolist()]
    tol = problem.risk_tolerance
    return {
        "name": problem.name,
        "holdout": problem.holdout,
        "n_users": problem.n_users,
        "funds": funds,
        "fund_id_kind": id_kind(problem.funds),
        "user_id_kind": id_kind(problem.users),
        "user_id_dtype": str(problem.users.dtype),
        "demand_min": c.demand_min.tolist(),
        "demand_max": c.demand_max.tolist(),
        "fund_risk_code": c.fund_level.tolist(),
        "risk_tolerance_dtype": str(tol.dtype) if tol.dtype.kind != "O" else "object",
        "etv_dtype": str(c.etv.dtype),
        "fingerprint": problem.fingerprint(),
        "has_mask": c.mask is not None,
        "constraints": side_records(problem),
        **levels_attrs(problem.risk_levels),
    }


def save_problem(problem: AllocationProblem, path: str | os.PathLike) -> Path:
    """Write a problem to a file that :func:`load_problem` reads back exactly.

    Parameters
    ----------
    problem : AllocationProblem
    path : str or path-like
        ``.zarr``: a Zarr v3 store (a directory; fastest, and it can be opened lazily); any other name
        (``.nc``): NetCDF. See the module notes for what each holds.

    Returns
    -------
    pathlib.Path
        ``path``. The write is atomic: a crash leaves no partial file under ``path``.
    """
    path = Path(path)
    if path.suffix == ".zarr":
        _atomic_write_dir(path, lambda tmp: _write_zarr(problem, tmp))
        return path
    return _save_netcdf(problem, path)


def _write_zarr(problem: AllocationProblem, tmp: Path) -> None:
    import zarr
    from zarr.codecs import Crc32cCodec

    c = problem.compile()
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    n = c.n_users

    def put(name: str, values: Any, chunks: tuple[int, ...]) -> None:
        # chunk by chunk: zarr encodes what it is handed all at once, so a whole grid would be copied
        # every chunk is written, zeros too, so that a chunk missing on reading is damage, not zeros
        arr = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks,
                                 compressors=[Crc32cCodec()], fill_value=0, config={"write_empty_chunks": True})
        step = chunks[0]
        for s in range(0, values.shape[0], step):
            arr[s : s + step] = np.asarray(values[s : s + step])

    rows = max(1, min(CHUNK_USERS, n))
    put("etv", c.etv, (rows, max(1, c.n_funds)))  # a lazy grid is read one chunk at a time
    code_dtype = np.int8 if c.n_levels <= 127 else np.int32
    put("risk_code", np.asarray(c.user_level, dtype=code_dtype), (rows,))
    if id_kind(problem.users) == "integer":
        put("user", np.asarray(problem.users, dtype=np.int64), (rows,))
    else:
        offsets, data = string_layout(problem.users)
        put("user_offsets", offsets, (rows + 1,))
        put("user_bytes", data, (max(1, min(len(data), 64 * CHUNK_USERS)),))
    for name, values in side_arrays(problem).items():  # the mask and constraint weights, chunked like the grid
        put(name, values, (rows, max(1, c.n_funds))[: values.ndim])
    group.attrs.update({"eoca_format": PROBLEM_FORMAT, **_header(problem)})


def _save_netcdf(problem: AllocationProblem, path: Path) -> Path:
    header = _header(problem)
    ds = xr.Dataset(
        {
            "etv": ((USER, FUND), np.asarray(problem.etv.values)),
            "demand_min": ((FUND,), np.asarray(problem.demand_min.values)),
            "demand_max": ((FUND,), np.asarray(problem.demand_max.values)),
            "risk_level": ((FUND,), netcdf_labels(problem.risk_level.values)),
            "risk_tolerance": ((USER,), netcdf_labels(problem.risk_tolerance.values)),
        },
        coords={USER: netcdf_labels(problem.users.to_numpy()), FUND: netcdf_labels(problem.funds.to_numpy())},
        attrs={
            "eoca_format": PROBLEM_FORMAT_NC,
            "holdout": int(problem.holdout),
            "name": problem.name or "",
            "user_id_kind": header["user_id_kind"],
            "fund_id_kind": header["fund_id_kind"],
            "user_id_dtype": header["user_id_dtype"],
            "risk_tolerance_dtype": header["risk_tolerance_dtype"],
            "risk_scale": json.dumps(header["levels"]),  # the scale's order (an ordered categorical keeps it)
            "fingerprint": header["fingerprint"],
            "has_mask": int(header["has_mask"]),
            "constraints": json.dumps(header["constraints"]),
        },
    )
    for name, values in side_arrays(problem).items():
        ds[name] = ((USER, FUND)[: values.ndim], np.asarray(values))
    _atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))
    return path


def load_problem(path: str | os.PathLike, *, chunks: int | None = None) -> AllocationProblem:
    """Read a problem written by :func:`save_problem`; it is validated again on the way in.

    Parameters
    ----------
    path : str or path-like
        A ``.zarr`` store or a NetCDF file.
    chunks : int, optional
        Zarr stores only: open the grid lazily as a Dask array of this many users per chunk (for the
        distributed solve, see :mod:`eoca.distributed`); the ids and risk codes are loaded.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    FileFormatError
        Not an eoca problem file, or truncated / corrupt (naming the file, array and chunk).
    """
    path = Path(path)
    if path.is_dir():
        return _load_zarr(path, chunks)
    if not path.is_file():
        raise FileNotFoundError(f"no problem file at {path}")
    if chunks is not None:
        raise ValidationError("chunks", f"a lazy open needs a Zarr store; {path} is a NetCDF file")
    return _load_netcdf(path)


def _open_zarr_group(path: Path) -> Any:
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:  # missing or unparseable zarr.json
        raise FileFormatError(f"{path} is not a readable eoca problem store (Zarr): {type(exc).__name__}: {exc}") from None
    if attrs.get("eoca_format") != PROBLEM_FORMAT:
        raise FileFormatError(
            f"{path} was not written by eoca.save_problem (format {attrs.get('eoca_format')!r}, "
            f"expected {PROBLEM_FORMAT!r})"
        )
    return group, attrs


def _array(group: Any, path: Path, name: str, shape: tuple[int, ...]) -> Any:
    try:
        arr = group[name]
    except Exception:
        raise FileFormatError(f"{path} lacks the array {name!r} (truncated or not a problem store)") from None
    if tuple(arr.shape) != shape:
        raise FileFormatError(f"{path}: array {name!r} has shape {tuple(arr.shape)}, expected {shape}")
    _all_chunks_stored(path, arr, name)
    return arr


def _all_chunks_stored(path: Path, arr: Any, name: str) -> None:
    """A chunk missing from the store would read as zeros: name it as damage instead."""
    stored, expected = arr.nchunks_initialized, arr.nchunks
    if stored != expected:
        raise FileFormatError(
            f"{path}: array {name!r} has {expected - stored} of its {expected} chunks missing (truncated store)"
        )


def _load_zarr(path: Path, chunks: int | None) -> AllocationProblem:
    group, attrs = _open_zarr_group(path)
    try:
        n, funds = int(attrs["n_users"]), list(attrs["funds"])
        k = len(funds)
        levels = levels_from(attrs)
        lo, hi = attrs["demand_min"], attrs["demand_max"]
        fund_code = np.asarray(attrs["fund_risk_code"], dtype=np.int64)
        kind = attrs["user_id_kind"]
    except (KeyError, TypeError, ValueError) as exc:
        raise FileFormatError(f"{path}: the store's attributes are incomplete ({exc})") from None
    codes = _read_chunked(path, _array(group, path, "risk_code", (n,)), "risk_code")
    if n and (codes.min() < 0 or codes.max() >= len(levels)):
        raise FileFormatError(f"{path}: array 'risk_code' holds codes outside the risk scale (corrupt file)")
    if kind == "integer":
        users = pd.Index(_read_chunked(path, _array(group, path, "user", (n,)), "user"))
    else:
        offsets = _read_chunked(path, _array(group, path, "user_offsets", (n + 1,)), "user_offsets")
        data_arr = group.get("user_bytes")
        if data_arr is None:
            raise FileFormatError(f"{path} lacks the array 'user_bytes' (truncated or not a problem store)")
        _all_chunks_stored(path, data_arr, "user_bytes")
        ids = strings_from_layout(offsets, _read_chunked(path, data_arr, "user_bytes"), str(path))
        dtype = attrs.get("user_id_dtype", "object")
        users = pd.Index(ids, dtype=object) if dtype == "object" else pd.Index(ids, dtype=dtype)
    etv_arr = _array(group, path, "etv", (n, k))
    if chunks is None:
        values = _read_chunked(path, etv_arr, "etv")
    else:
        values = lazy_zarr_array(path, etv_arr, "etv", chunks)
    tol = levels[codes.astype(np.intp)]
    grid = xr.DataArray(values, dims=(USER, FUND), coords={USER: users, FUND: pd.Index(funds, dtype=object)
                                                         if attrs.get("fund_id_kind") == "string" else funds})
    demand = {f: (int(a) if a == b else (int(a), int(b))) for f, a, b in zip(funds, lo, hi)}
    fund_risk = dict(zip(funds, levels[fund_code].tolist()))
    eligible, constraints = side_rules(
        attrs.get("constraints", []), bool(attrs.get("has_mask", False)),
        lambda name, shape: _read_chunked(path, _array(group, path, name, shape), name),
        grid.get_index(USER), grid.get_index(FUND), str(path))
    problem = AllocationProblem(
        etv=grid, demand=demand, risk_level=fund_risk,
        risk_tolerance=tolerance_series(tol, levels, grid.get_index(USER), attrs.get("risk_tolerance_dtype", "object")),
        holdout=bool(attrs.get("holdout", False)), name=attrs.get("name"), eligible=eligible, constraints=constraints,
    )
    if problem.fingerprint() != attrs.get("fingerprint"):
        raise FileFormatError(f"{path}: its content does not match the fingerprint it was saved with (corrupt store)")
    return problem


def _load_netcdf(path: Path) -> AllocationProblem:
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            ds = ds.load()
    except Exception as exc:  # h5py/h5netcdf raise many kinds on a corrupt file
        raise FileFormatError(f"{path} is not a readable eoca problem file (NetCDF): {exc}") from None
    if ds.attrs.get("eoca_format") != PROBLEM_FORMAT_NC:
        raise FileFormatError(
            f"{path} was not written by eoca.save_problem (format {ds.attrs.get('eoca_format')!r}, "
            f"expected {PROBLEM_FORMAT_NC!r})"
        )
    missing = {"etv", "demand_min", "demand_max", "risk_level", "risk_tolerance"} - set(ds.data_vars)
    if missing:
        raise FileFormatError(f"{path} lacks {sorted(missing)}")
    funds = ds[FUND].values
    users = pd.Index(ds[USER].values)
    if ds.attrs.get("user_id_kind") == "string":
        dtype = ds.attrs.get("user_id_dtype", "object")
        users = pd.Index(ds[USER].values.astype(object), dtype=object if dtype == "object" else dtype)
    if ds.attrs.get("fund_id_kind") == "string":
        funds = funds.astype(object)
    tol = ds["risk_tolerance"].values
    lo, hi = ds["demand_min"].values, ds["demand_max"].values
    demand = {f: (int(a) if a == b else (int(a), int(b))) for f, a, b in zip(funds.tolist(), lo, hi)}
    grid = xr.DataArray(ds["etv"].values, dims=(USER, FUND),
                        coords={USER: users, FUND: pd.Index(funds, dtype=funds.dtype)})
    try:
        records = json.loads(ds.attrs.get("constraints", "[]"))
    except ValueError:
        raise FileFormatError(f"{path}: the attribute 'constraints' is not valid JSON (corrupt file)") from None
    eligible, constraints = side_rules(records, bool(ds.attrs.get("has_mask", 0)), lambda name, shape: dataset_array(
        ds, path, name, shape), grid.get_index(USER), grid.get_index(FUND), str(path))
    problem = AllocationProblem(
        etv=grid,
        demand=demand,
        risk_level=dict(zip(funds.tolist(), ds["risk_level"].values.tolist())),
        risk_tolerance=tolerance_series(tol, np.asarray(json.loads(ds.attrs["risk_scale"]), dtype=object) if "risk_scale" in ds.attrs else np.unique(tol),
                                         grid.get_index(USER), ds.attrs.get("risk_tolerance_dtype")),
        holdout=bool(ds.attrs.get("holdout", 0)),
        name=ds.attrs.get("name") or None,
        eligible=eligible,
        constraints=constraints,
    )
    saved = ds.attrs.get("fingerprint")
    if saved is not None and problem.fingerprint() != saved:
        raise FileFormatError(f"{path}: its content does not match the fingerprint it was saved with (corrupt file)")
    return problem


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
            "problem_fingerprint": result.problem.fingerprint(),
            "user_id_kind": id_kind(result.problem.users),
            "fund_id_kind": id_kind(result.problem.funds),
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
                "ineligible": checks.ineligible,
            },
            # side constraints: the recount and the solver's multipliers (restored by load_result to certify
            # the bound again)
            "constraints": None if result.constraints is None else {
                str(name): {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
                for name, row in result.constraints.to_dict(orient="index").items()
            },
            "multipliers": None if result.multipliers is None else [float(v) for v in result.multipliers],
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


#: Users per row group of a saved assignment (and per batch converted to Arrow while the last is written).
_RESULT_ROWS = 1 << 20


def _assignment_batches(result: Result, rows: int | None = None) -> tuple[Any, Iterator[Any]]:
    """The assignment as Arrow record batches of ``rows`` users: ``user``, ``fund`` (dictionary-encoded:
    one small dictionary of fund ids and an int32 code per user, null for no fund) and ``etv`` of the
    user's fund. Returns the schema (with eoca's metadata) and a generator of the batches."""
    import pyarrow as pa

    rows = rows or _RESULT_ROWS
    problem = result.problem
    codes = np.asarray(result.codes, dtype=np.int32)
    users = problem.users
    integer_users = id_kind(users) == "integer"
    user_values = np.asarray(users, dtype=np.int64 if integer_users else object)
    funds = problem.funds
    dictionary = (pa.array(np.asarray(funds, dtype=np.int64)) if id_kind(funds) == "integer"
                  else pa.array([str(f) for f in funds], type=pa.string()))
    etv = problem.compile().etv  # in memory or Dask-backed: read one batch of users at a time
    meta = {"eoca_format": RESULT_FORMAT, "user_id_kind": id_kind(users), "fund_id_kind": id_kind(funds)}
    schema = pa.schema([(USER, pa.int64() if integer_users else pa.string()),
                        (FUND, pa.dictionary(pa.int32(), dictionary.type)),
                        ("etv", pa.from_numpy_dtype(np.dtype(etv.dtype)))], metadata=meta)

    def batches() -> Iterator[Any]:
        for s in range(0, len(codes), rows) if len(codes) else [0]:
            part = codes[s:s + rows]
            placed = (part >= 0) & (part < len(funds))  # an invalid code names no fund
            value = assigned_values(etv[s:s + rows], part)
            user = pa.array(user_values[s:s + rows], type=schema.field(USER).type)
            fund = pa.DictionaryArray.from_arrays(pa.array(part, mask=~placed), dictionary)
            yield pa.record_batch([user, fund, pa.array(value)], schema=schema)

    return schema, batches()


def _assignment_table(result: Result) -> Any:
    """The whole assignment as one Arrow table (see :func:`_assignment_batches`)."""
    import pyarrow as pa

    schema, batches = _assignment_batches(result)
    return pa.Table.from_batches(list(batches), schema=schema)


def _write_parquet(result: Result, path: Path) -> None:
    """Write the assignment to Parquet one row group per batch, converting the next batch (ids to Arrow
    strings, which holds the GIL) while the writer encodes and compresses the last (which releases it)."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    schema, batches = _assignment_batches(result)
    # page checksums: a damaged page is caught on reading even without the summary's file hash; the user
    # ids and values are (nearly) all distinct, so only the fund column is dictionary-encoded
    with pq.ParquetWriter(path, schema, compression="zstd", compression_level=1, write_page_checksum=True,
                          use_dictionary=[FUND]) as writer, ThreadPoolExecutor(1) as pool:
        pending = None
        for batch in batches:
            if pending is not None:
                pending.result()
            pending = pool.submit(writer.write_batch, batch, row_group_size=len(batch) or None)
        if pending is not None:
            pending.result()


def save_result(result: Result, directory: str | os.PathLike, *, format: str = "parquet") -> Path:
    """Write the assignment and ``summary.json`` into ``directory``.

    Parameters
    ----------
    result : Result
    directory : str or path-like
        Created if missing. Holds ``assignment.parquet`` (or ``.csv``) with the columns ``user``,
        ``fund`` (dictionary-encoded in Parquet; empty for no fund) and ``etv``, and ``summary.json``
        (status, objective, bound, checks, per-fund counts and prices, the id kinds, the problem's
        fingerprint and the assignment file's SHA-256).
    format : {"parquet", "csv"}

    Returns
    -------
    pathlib.Path
        ``directory``. Each file is written under a temporary name and renamed when complete.
    """
    if format not in ("parquet", "csv"):
        raise ValidationError("format", f"must be 'parquet' or 'csv'; got {format!r}")
    directory = Path(directory)
    target = directory / f"assignment.{format}"
    if format == "parquet":
        _atomic_write(target, lambda tmp: _write_parquet(result, tmp))
    else:
        import pyarrow.csv as pcsv

        table = _assignment_table(result)
        _atomic_write(target, lambda tmp: pcsv.write_csv(table, tmp))
    summary = result_summary(result)
    summary["assignment_file"] = target.name
    # the summary names the exact assignment it describes, so a pair from two different saves is caught
    summary["assignment_sha256"] = _sha256(target)
    _atomic_write(directory / SUMMARY_NAME, lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    return directory


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_summary(directory: str | os.PathLike) -> dict[str, Any]:
    """Read ``summary.json`` of a saved result.

    Raises
    ------
    FileNotFoundError
        No ``summary.json`` in ``directory``.
    FileFormatError
        Not valid JSON, or not written by :func:`save_result`.
    """
    path = Path(directory) / SUMMARY_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {SUMMARY_NAME} in {directory}")
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(summary, dict) or summary.get("eoca_format") not in _RESULT_FORMATS:
        raise FileFormatError(f"{path} was not written by eoca.save_result (no {RESULT_FORMAT!r} marker)")
    for key, kind in (("status", str), ("funds", dict)):
        if not isinstance(summary.get(key), kind):
            raise FileFormatError(f"{path} lacks a valid {key!r} entry")
    if summary["status"] not in {s.value for s in Status}:
        raise FileFormatError(f"{path}: unknown status {summary['status']!r}")
    return summary


def _read_assignment(directory: Path, summary: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user ids, fund code per row into the dictionary, -1 for none; the dictionary of fund ids)."""
    import pyarrow as pa

    path = directory / summary.get("assignment_file", "assignment.parquet")
    if not path.is_file():
        raise FileFormatError(f"{path} is missing: {directory / SUMMARY_NAME} names it as its assignment")
    stored = summary.get("assignment_sha256")
    if stored is not None and stored != _sha256(path):
        raise FileFormatError(
            f"{path} is not the assignment {directory / SUMMARY_NAME} describes (it was replaced, damaged or "
            "the save was interrupted); save the result again"
        )
    user_kind = summary.get("user_id_kind")
    fund_kind = summary.get("fund_id_kind")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path, page_checksum_verification=True)  # every column: damage anywhere counts
        else:
            import pyarrow.csv as pcsv

            types = {"string": pa.string(), "integer": pa.int64()}
            column_types = {c: types[k] for c, k in ((USER, user_kind), (FUND, fund_kind)) if k in types}
            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                # the writer quotes every string and leaves a missing fund unquoted and empty: only that is
                # missing, so ids such as "NA" or "null" stay ids
                column_types=column_types, null_values=[""], strings_can_be_null=True,
                quoted_strings_can_be_null=False, include_columns=[USER, FUND]))
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError ... on a damaged file
        raise FileFormatError(f"{path} is not a readable assignment table: {type(exc).__name__}: {exc}") from None
    if not {USER, FUND} <= set(table.column_names):
        raise FileFormatError(f"{path} lacks the 'user' and 'fund' columns")
    users = table.column(USER).to_numpy()
    if users.dtype.kind == "O" or user_kind == "string":
        users = users.astype(object)
    fund = table.column(FUND).combine_chunks()
    if not pa.types.is_dictionary(fund.type):
        fund = fund.dictionary_encode()
    codes = fund.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
    dictionary = fund.dictionary.to_numpy(zero_copy_only=False)
    return users, codes, dictionary


def load_assignment(directory: str | os.PathLike) -> xr.DataArray:
    """The saved assignment as a DataArray over "user" of fund ids (missing for no fund).

    Raises
    ------
    FileNotFoundError, FileFormatError
        As :func:`load_summary`; and a missing, replaced or damaged assignment file.
    """
    directory = Path(directory)
    users, codes, dictionary = _read_assignment(directory, load_summary(directory))
    labels = np.empty(len(dictionary) + 1, dtype=object)
    labels[:-1] = dictionary
    user_index = pd.Index(users, dtype=object) if users.dtype.kind == "O" else pd.Index(users)
    data = xr.Variable((USER,), labels.take(codes), fastpath=True)
    return xr.DataArray(data, coords={USER: user_index}, name="fund")


def load_result(directory: str | os.PathLike, problem: AllocationProblem) -> Result:
    """Rebuild a saved result against ``problem``, checking the allocation again.

    The checks decide: an allocation that breaks a rule of ``problem`` has status "error". When the
    saved prices exist, the dual bound is recomputed on ``problem`` and "optimal" is kept only if it
    certifies the allocation; without prices the saved status is kept only if the file was saved for
    this very problem (same fingerprint), else the status is "feasible".

    Raises
    ------
    FileNotFoundError, FileFormatError
        As :func:`load_assignment`.
    """
    directory = Path(directory)
    summary = load_summary(directory)
    users, file_codes, dictionary = _read_assignment(directory, summary)
    assignment_path = directory / summary.get("assignment_file", "assignment.parquet")
    # fund ids of the file -> the problem's fund codes (-2: a fund the problem lacks)
    to_problem = problem.funds.get_indexer(pd.Index(dictionary, dtype=object) if dictionary.dtype.kind == "O"
                                           else pd.Index(dictionary))
    lookup = np.append(np.where(to_problem < 0, -2, to_problem), -1).astype(np.int32)
    mapped = lookup.take(file_codes)
    file_users = pd.Index(users, dtype=object) if users.dtype.kind == "O" else pd.Index(users)
    foreign: pd.Index = file_users[:0]
    if len(file_users) == problem.n_users and file_users.equals(problem.users):
        codes = mapped
    else:  # another order, or other users: place each row by id (users not in the file get no fund)
        pos = problem.users.get_indexer(file_users)
        known = pos >= 0
        repeated = np.bincount(pos[known], minlength=problem.n_users) > 1
        if repeated.any():
            raise FileFormatError(f"{assignment_path} lists users more than once: {show_values(problem.users[repeated])}")
        foreign = file_users[~known]
        codes = np.full(problem.n_users, -1, dtype=np.int32)
        codes[pos[known]] = mapped[known]
    codes.flags.writeable = False
    prices = [summary["funds"].get(str(f), {}).get("price") for f in problem.funds]
    has_prices = all(p is not None for p in prices)
    price_da = fund_vector(problem, np.array(prices, dtype=float), "price") if has_prices else None
    # with prices, the checks and the bound on this problem in one read of the grid; a result with side
    # constraints also saved the multipliers that price them (ignored unless one per constraint)
    multipliers = summary.get("multipliers")
    if not (isinstance(multipliers, list) and len(multipliers) == len(problem.constraints) and multipliers):
        multipliers = None
    checks, price_bound = (check_and_bound(problem, codes, price_da.values, multipliers) if has_prices
                           else (check_allocation(problem, codes), float("nan")))
    same = summary.get("problem_fingerprint") == problem.fingerprint()
    saved = Status(summary["status"])
    message = summary.get("message", "")
    bound = float("nan") if summary.get("bound") is None else float(summary["bound"])
    saved_objective = summary.get("objective")
    # without prices the saved bound and status are only as good as the file's claim that it belongs to
    # this problem: the fingerprint must match and the recounted ETV must be the one saved
    same_objective = saved_objective is not None and np.isclose(
        checks.objective, float(saved_objective), rtol=1e-9, atol=1e-9
    )
    if has_prices:
        bound = price_bound
    elif not (same and same_objective):
        bound = float("nan")
    if saved is Status.INFEASIBLE and same:
        status = saved
    elif len(foreign):
        status = Status.ERROR
        message = (f"the saved allocation is not one of this problem: {len(foreign)} of its users are not users "
                   f"of this problem: {show_values(foreign)}")
    elif not checks.ok:
        status = Status.ERROR
        message = f"the saved allocation breaks rules of this problem: {checks.describe()}"
    elif has_prices:
        from eoca.solve import CERTIFICATE_RTOL

        tol = max(CERTIFICATE_RTOL * max(1.0, abs(bound)), 1e-7 * max(1.0, abs(checks.objective)))
        status = Status.OPTIMAL if bound - checks.objective <= tol else Status.FEASIBLE
    else:
        status = saved if same and same_objective else Status.FEASIBLE
    if same and not has_prices and not same_objective and status is not Status.ERROR:
        message = "the ETV of the saved allocation differs from the one saved; checked again" + (
            f"; {message}" if message else "")
    if not same and status is not Status.ERROR:
        why = ("the file records no problem fingerprint" if "problem_fingerprint" not in summary
               else "saved for another problem (its fingerprint differs)")
        message = f"{why}; checked again against this one" + (f"; {message}" if message else "")
    return Result(
        problem=problem,
        codes=codes,
        objective=checks.objective,
        status=status,
        checks=checks,
        bound=bound,
        prices=price_da,
        timings=dict(summary.get("timings", {})),
        solver=summary.get("solver", ""),
        message=message,
        stats=dict(summary.get("stats", {})),
        multipliers=None if multipliers is None else np.asarray(multipliers, dtype=np.float64),
    )
