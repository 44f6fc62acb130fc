"""Past one machine: Dask-backed ETV grids, chunk-wise prediction and the exact allocation on Dask.

An :class:`~eoca.AllocationProblem` accepts an ETV grid whose data is a Dask array chunked along
``"user"`` (all funds in one chunk), for example one opened lazily from Zarr with :func:`open_grid`. The
grid is never loaded whole: validation, the shared checker, the dual bound and the exact solver run as
map-reduce passes over its chunks, on whatever scheduler is active (a ``dask.distributed`` client if one
exists, the local threaded scheduler otherwise). The per-user vectors (risk codes, the final assignment:
4 bytes per user) stay in the client process; the grid (8 bytes per user and fund) stays on the workers.

The exact solve on a Dask grid (:func:`solve_exact`)
----------------------------------------------------
1. **Warm prices from a sample**: a systematic 1-in-s sample of users (about ``sample_users`` of them) is
   gathered and solved exactly, in memory, with scaled demands (the in-memory kernel's own recursion).
2. **Pass A** (map-reduce): each chunk puts its users at their best fund under the warm prices (the
   kernel's ``assign_pass``), counts users per fund and returns a systematic sample of the users' gaps to
   their second-best fund. From the sample the client picks a gap threshold theta that selects about
   ``gather_users`` users (more when the warm prices leave a larger imbalance).
3. **Pass B**: each chunk returns only its users with gap <= theta (the *gathered* set G: their ETV rows,
   risk codes and warm fund). Every other user stays fixed at its warm fund.
4. **Settlement** in the client: the kernel's successive-shortest-path ``repair`` on G alone, with each
   fund's demand reduced by its fixed users.
5. **Pass C** (verification): each chunk rebuilds its final assignment (warm funds, G's settled funds) and
   counts the users that are *not* at a best fund under the new prices, counts per fund, and the maxima
   needed for the kernel's tight-risk-level price correction and the prices of empty funds. If every user
   sits at a best fund and complementary slackness holds, the assignment is optimal (the same certificate
   as in memory); otherwise theta grows (to at least twice the largest price move, which provably keeps
   every fixed user optimal for the same prices), the violators join G, and steps 3-5 repeat.

:func:`eoca.solve` then runs the shared checker and the dual bound, both as map-reduce passes, so the
result carries the same independent certificate as an in-memory solve.

Progress: a ``dask.distributed`` dashboard shows every pass (``client.dashboard_link``); set
``dask.config.set({"eoca.progress": True})`` (or pass ``progress=True``) for a progress bar per pass.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
import xarray as xr

from eoca.errors import EocaError, ETVError, ValidationError, show_values
from eoca.problem import FUND, USER, AllocationProblem, CompiledProblem

__all__ = [
    "GatherLimitError",
    "lazy_grid_values",
    "map_user_blocks",
    "open_grid",
    "open_problem",
    "predict_to_zarr",
    "solve_exact",
    "split_users",
    "write_assignment",
    "write_synthetic_problem",
]

_INSTALL = 'pip install "eoca[dask]"'
_INT32_MIN = np.iinfo(np.int32).min
_INT32_MAX = np.iinfo(np.int32).max


class GatherLimitError(EocaError, RuntimeError):
    """The distributed exact solve would need to gather more users than ``gather_limit`` into the client.

    Happens on extremely degenerate grids (millions of users exactly tied between funds). Raise the
    limit (client memory: about ``8 * (n_funds + 2)`` bytes per gathered user) or load the grid.
    """


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError:  # pragma: no cover - the extra is installed where this module is used
        raise ImportError(f"Dask-backed grids need dask; install it with: {_INSTALL}") from None
    return dask, da


def _client():
    """The active ``dask.distributed`` client, or None (then the local scheduler runs the passes)."""
    try:
        from distributed import get_client
    except ImportError:
        return None
    try:
        return get_client()
    except ValueError:
        return None


def _progress(progress: bool | None) -> bool:
    dask, _ = _dask()
    return bool(dask.config.get("eoca.progress", False) if progress is None else progress)


def _compute(tasks: list, progress: bool | None = None) -> list:
    dask, _ = _dask()
    client = _client()
    if client is not None:
        futures = client.compute(tasks)
        if _progress(progress):
            from distributed import progress as show

            show(futures)
        out = client.gather(futures)
        del futures
        return list(out)
    if _progress(progress):
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            return list(dask.compute(*tasks))
    return list(dask.compute(*tasks))


def _bounds(etv) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(etv.chunks[0])]).astype(np.int64)


def split_users(etv, vectors: Sequence[np.ndarray]) -> list:
    """Cut per-user vectors along the grid's user chunks, one list of slices per chunk.

    With a ``dask.distributed`` client the slices are scattered to the workers once (so a pass ships no
    data in its task graph); the returned handles can be reused by several :func:`map_user_blocks` calls.
    """
    bounds = _bounds(etv)
    parts = [[np.asarray(v)[bounds[i] : bounds[i + 1]] for v in vectors] for i in range(len(bounds) - 1)]
    client = _client()
    if client is not None and vectors:
        return client.scatter(parts, hash=False)
    return parts


def _mutable(arr: np.ndarray) -> np.ndarray:
    # numba compiles read-only arrays as another type; the kernels never write the grid
    from eoca.solvers._transport import _mutable_view

    return _mutable_view(arr)


def _call(func, block, parts, extra, args):
    block = np.ascontiguousarray(block, dtype=np.float64)
    return func(_mutable(block), *[_mutable(np.ascontiguousarray(p)) for p in parts], *extra, *args)


def map_user_blocks(
    func: Callable,
    etv,
    vectors: Sequence[np.ndarray] = (),
    *,
    args: tuple = (),
    parts: list | None = None,
    per_block: Sequence[tuple] | None = None,
    progress: bool | None = None,
) -> list:
    """Run ``func(block, *vector_slices, *per_block[i], *args)`` on every user chunk of a Dask grid.

    Parameters
    ----------
    func : callable
        A module-level function (shipped to the workers by reference). ``block`` is the chunk of the grid,
        float64 C-contiguous, shape (chunk_users, n_funds).
    etv : dask.array.Array, shape (n_users, n_funds)
        Chunked along users, all funds in one chunk.
    vectors : sequence of ndarray, shape (n_users,)
        Per-user arrays, cut along the same chunks (ignored when ``parts`` is given).
    args : tuple
        Small arguments passed to every call.
    parts : list, optional
        Output of :func:`split_users` (already scattered slices).
    per_block : sequence of tuple, optional
        Extra small arguments per chunk.
    progress : bool, optional
        Show a progress bar (default: the ``eoca.progress`` Dask config value).

    Returns
    -------
    list
        One result per chunk, in user order. Reduce them in the caller.
    """
    dask, _ = _dask()
    blocks = etv.to_delayed()
    if blocks.shape[1] != 1:
        raise ETVError("etv", f"a Dask grid must hold all funds in one chunk; got chunks {etv.chunks[1]} along 'fund'")
    blocks = blocks.ravel()
    if parts is None:
        parts = split_users(etv, vectors)
    call = dask.delayed(_call, pure=True)
    tasks = [
        call(func, blocks[i], parts[i], tuple(per_block[i]) if per_block is not None else (), args)
        for i in range(len(blocks))
    ]
    return _compute(tasks, progress)


# ---- validation -------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _scan(etv):  # pragma: no cover - compiled
    """Non-finite and negative entries of a chunk: counts and the first five positions of each."""
    n, k = etv.shape
    nbad = 0
    nneg = 0
    bad = np.full((5, 2), -1, np.int64)
    neg = np.full((5, 2), -1, np.int64)
    for i in range(n):
        for j in range(k):
            v = etv[i, j]
            if not np.isfinite(v):
                if nbad < 5:
                    bad[nbad, 0] = i
                    bad[nbad, 1] = j
                nbad += 1
            elif v < 0:
                if nneg < 5:
                    neg[nneg, 0] = i
                    neg[nneg, 1] = j
                nneg += 1
    return nbad, nneg, bad, neg


def _scan_block(block, offset):
    nbad, nneg, bad, neg = _scan(block)
    negv = [float(block[r, c]) for r, c in neg if r >= 0]
    return nbad, nneg, bad[bad[:, 0] >= 0] + [offset, 0], neg[neg[:, 0] >= 0] + [offset, 0], negv


def _item(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def lazy_grid_values(etv: xr.DataArray):
    """Validate a Dask-backed ETV grid in one map-reduce pass and return its lazy float64 data.

    Parameters
    ----------
    etv : xarray.DataArray over ("user", "fund") whose data is a dask array

    Returns
    -------
    dask.array.Array
        float64, chunked along users with every fund in one chunk (rechunked lazily if needed).

    Raises
    ------
    ETVError
        Non-numeric dtype, NaN/infinite or negative entries (naming the first (user, fund) pairs).
    """
    _, da = _dask()
    values = etv.data
    if values.dtype.kind not in "fiub":
        raise ETVError("etv", f"values must be numeric; got dtype {values.dtype}")
    if values.numblocks[1] != 1:
        values = values.rechunk({0: values.chunks[0], 1: -1})
    if values.dtype != np.float64:
        values = values.astype(np.float64)
    if values.shape[0] == 0:
        return values
    bounds = _bounds(values)
    found = map_user_blocks(_scan_block, values, per_block=[(int(b),) for b in bounds[:-1]])
    users, funds = etv[USER].values, etv[FUND].values
    nbad = sum(f[0] for f in found)
    if nbad:
        where = [(_item(users[r]), _item(funds[c])) for f in found for r, c in f[2]][:5]
        raise ETVError(
            "etv",
            f"values must be finite; {nbad} NaN or infinite entries at (user, fund) {show_values(where)}"
            + (" ..." if nbad > 5 else ""),
        )
    nneg = sum(f[1] for f in found)
    if nneg:
        where = [(_item(users[r]), _item(funds[c]), v) for f in found for (r, c), v in zip(f[3], f[4])][:5]
        raise ETVError(
            "etv",
            f"values must be non-negative (an expected transaction value); {nneg} negative entries "
            f"(user, fund, value): {show_values(where)}",
        )
    return values


# ---- the exact solve ----------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _violations(etv, ulev, lo, hi, lam, assign, rtol):  # pragma: no cover - compiled
    """Users not at a best node under node prices ``lam`` (beyond a relative ``rtol``): their indices."""
    n, k = etv.shape
    K = k + 1
    lamabs = 0.0
    for x in range(K):
        if lo[x] < hi[x]:
            lamabs = max(lamabs, abs(lam[x]))
    out = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        lv = ulev[i]
        a = assign[i]
        cur = (etv[i, a] if a < k else 0.0) - lam[a]
        best = cur
        for x in range(K):
            if lo[x] <= lv and lv < hi[x]:
                v = (etv[i, x] if x < k else 0.0) - lam[x]
                if v > best:
                    best = v
        if best - cur > rtol * (abs(best) + lamabs) + 1e-300:
            out[m] = i
            m += 1
    return out[:m]


@numba.njit(cache=True, nogil=True)
def _closed_best(etv, ulev, closed, closed_lv, node_block, nb, assign, p):  # pragma: no cover - compiled
    """For each empty fund q and block b: max over users allowed q, sitting at a node of block b, of
    ``etv[i, q] - (value at their node - price of that node)``."""
    n, k = etv.shape
    out = np.full((closed.shape[0], nb), -np.inf)
    for i in range(n):
        a = assign[i]
        cur = (etv[i, a] if a < k else 0.0) - p[a]
        b = node_block[a]
        for q in range(closed.shape[0]):
            if ulev[i] >= closed_lv[q]:
                d = etv[i, closed[q]] - cur
                if d > out[q, b]:
                    out[q, b] = d
    return out


def _pass_a(block, ul, lo, hi, lam0, target, stride):
    from eoca.solvers import _transport_kernels as K

    assign, gap, counts, nbad, _smax, _hist = K.assign_pass(block, ul, lo, hi, lam0, target)
    return counts, int(nbad), gap[::stride].copy(), assign[::stride].copy()


def _pass_b(block, ul, extra, lo, hi, lam0, target, theta):
    from eoca.solvers import _transport_kernels as K

    assign, gap, _counts, _nbad, _smax, _hist = K.assign_pass(block, ul, lo, hi, lam0, target)
    take = gap <= theta[assign]
    if len(extra):
        take[extra] = True
    idx = np.flatnonzero(take)
    return idx, np.ascontiguousarray(block[idx]), ul[idx], assign[idx]


def _pass_c(block, ul, g_idx, g_node, lo, hi, lam0, target, lam, rtol, tight_lv, node_block, node_lo, closed,
            closed_lv, nb):
    from eoca.solvers import _transport_kernels as K

    k = block.shape[1]
    assign = K.assign_pass(block, ul, lo, hi, lam0, target)[0]
    assign[g_idx] = g_node
    counts = np.bincount(assign, minlength=k + 1).astype(np.int64)
    viol = _violations(block, ul, lo, hi, lam, assign, rtol)
    p = lam - lam[k]
    M = K.block_violations(block, ul, tight_lv, node_block, node_lo, assign, p) if len(tight_lv) else None
    M2 = _closed_best(block, ul, closed, closed_lv, node_block, nb, assign, p) if len(closed) else None
    K.to_output(assign, k)
    return counts, viol, M, M2, assign


def _quantile_threshold(sample: np.ndarray, n: int, want: int) -> float:
    if want >= n or len(sample) == 0:
        return math.inf
    q = min(len(sample) - 1, int(math.ceil(want / n * len(sample))))
    return float(np.partition(sample, q)[q])


def solve_exact(
    compiled: CompiledProblem,
    *,
    time_limit: float | None = None,
    gather_users: int | None = None,
    gather_limit: int = 20_000_000,
    sample_users: int = 1_000_000,
    max_rounds: int = 8,
    progress: bool | None = None,
):
    """Exact allocation of a problem whose ETV grid is a Dask array, without loading the grid.

    Parameters
    ----------
    compiled : CompiledProblem
        ``compiled.etv`` a dask array chunked along users (all funds in one chunk).
    time_limit : float, optional
        Seconds for the settlement (the passes over the grid are not interrupted).
    gather_users : int, optional
        How many users near a price boundary to gather first (default: 32 times the imbalance under the
        warm prices, at least 200,000).
    gather_limit : int, default 20,000,000
        The most users ever gathered into the client; beyond it :class:`GatherLimitError`.
    sample_users : int, default 1,000,000
        Size of the systematic sample whose exact solution gives the warm prices.
    max_rounds : int, default 8
        Gather-settle-verify rounds before giving up with :class:`GatherLimitError`.
    progress : bool, optional
        Progress bar per pass (default: the ``eoca.progress`` Dask config value).

    Returns
    -------
    eoca.solvers._transport.TransportSolution
        Assignment (int32 per user, -1 held out), prices, status and stats (rounds, gathered users,
        seconds per pass), exactly as the in-memory kernel returns them.

    Raises
    ------
    ValueError
        If the instance is infeasible.
    GatherLimitError
        If the settlement would need more than ``gather_limit`` users in the client.
    """
    from eoca.solvers import _transport as T
    from eoca.solvers import _transport_kernels as K

    t_start = time.perf_counter()
    deadline = math.inf if time_limit is None else t_start + float(time_limit)
    etv = compiled.etv
    n, k = etv.shape
    ul = np.ascontiguousarray(compiled.user_level, dtype=np.int32)
    fl = np.ascontiguousarray(compiled.fund_level, dtype=np.int32).copy()
    dmin = np.ascontiguousarray(compiled.demand_min, dtype=np.int64).copy()
    dmax = np.ascontiguousarray(compiled.demand_max, dtype=np.int64).copy()
    holdout = bool(compiled.holdout)
    if n == 0:
        return T.TransportSolution(np.empty(0, np.int32), np.zeros(k), "optimal", {"total_s": 0.0})

    # the same set-up as the in-memory kernel: sink node, tight levels as eligibility
    levels, lo, hi, node_block, dmax_r = T.prepare_nodes(ul, fl, dmin, dmax, holdout)
    tight_lv32 = levels.levels[levels.tight - 1].astype(np.int32) if len(levels.tight) else np.zeros(0, np.int32)
    node_lo = lo.copy()  # the risk rule's lower bounds, before any tightening
    nb = len(levels.tight) + 1
    closed = np.flatnonzero(~levels.open).astype(np.int64)
    closed_lv = fl[closed].astype(np.int32)
    stats: dict[str, Any] = {"users": n, "funds": k, "chunks": len(etv.chunks[0]), "rounds": []}

    # 1. warm prices from a systematic sample, solved in memory by the kernel's own recursion
    t0 = time.perf_counter()
    lam0 = np.zeros(k + 1)
    if n > T._BASE_USERS:
        step = max(T._SAMPLE_STEP, -(-n // sample_users))
        sub = np.ascontiguousarray(_compute([etv[::step]], progress)[0], dtype=np.float64)
        sul = np.ascontiguousarray(ul[::step])
        sub_counts = levels.counts(sul)
        ratio = T._code_ratios(sub_counts, levels.user_counts, levels.fcode, dmin, len(sul) / n)
        dm = T._block_sample_demands(sub_counts, levels.fcode, dmin, dmax_r, holdout, ratio, levels.tight)
        if dm is not None:
            info = {"sample_levels": [], "level_seconds": []}
            lam_s, _a, st_s, _s = T._solve_level(sub, sul, lo, hi, dm[0], dm[1], holdout, levels, deadline, info,
                                                 code_counts=sub_counts)
            if st_s != K.STATUS_INFEASIBLE:
                lam0 = lam_s - lam_s[k]
        stats["sample_users"] = len(sul)
        del sub
    stats["sample_s"] = time.perf_counter() - t0
    target = np.empty(k + 1, np.int64)
    target[:k] = np.where(lam0[:k] < 0, dmin, dmax_r)
    target[k] = max(0, n - int(target[:k].sum())) if holdout else 0

    # 2. pass A: counts under the warm prices and a sample of the gaps
    t0 = time.perf_counter()
    parts = split_users(etv, [ul])
    stride = max(1, n // 2_000_000)
    found = map_user_blocks(_pass_a, etv, parts=parts, args=(lo, hi, lam0, target, stride), progress=progress)
    counts0 = np.sum([f[0] for f in found], axis=0)
    if sum(f[1] for f in found):
        raise ValueError(f"{sum(f[1] for f in found)} users may take no fund (their risk level is below every open fund's)")
    gaps = np.concatenate([f[2] for f in found]).astype(np.float64)
    gap_nodes = np.concatenate([f[3] for f in found])
    del found
    f0 = np.where(lam0[:k] > 0, dmax_r, np.where(lam0[:k] < 0, dmin, np.clip(counts0[:k], dmin, dmax_r)))
    excess = int(np.maximum(counts0[:k] - f0, 0).sum() + max(counts0[k] + f0.sum() - n, 0))
    want = int(gather_users if gather_users is not None else max(200_000, 32 * excess))
    stats.update(initial_excess=excess, pass_a_s=time.perf_counter() - t0)

    # per fund: enough of its users to take away its surplus over demand_max (else the reduced problem
    # cannot be feasible); overall: the ``want`` users closest to a price boundary
    surplus = np.maximum(counts0 - np.append(dmax_r, n), 0)

    def thresholds(scale: int) -> np.ndarray:
        base = _quantile_threshold(gaps, n, want * scale)
        th = np.full(k + 1, base)
        for a in np.flatnonzero(surplus):
            mine = gaps[gap_nodes == a]
            th[a] = max(base, _quantile_threshold(mine, int(counts0[a]), scale * (2 * int(surplus[a]) + 1000)))
        return th

    theta = thresholds(1)
    extra_global = np.zeros(0, np.int64)
    bounds = _bounds(etv)
    status = K.STATUS_OPTIMAL
    for rnd in range(max_rounds):
        est = int(np.count_nonzero(gaps <= theta[gap_nodes]) / max(len(gaps), 1) * n)
        if est > gather_limit:
            raise GatherLimitError(
                f"the exact settlement needs about {est:,} of {n:,} users in the client (gap threshold "
                f"{theta.min():.6g}), more than gather_limit={gather_limit:,}; raise gather_limit or load the grid"
            )
        rs: dict[str, Any] = {"theta": float(theta.min())}
        # 3. pass B: gather the users near a price boundary
        t0 = time.perf_counter()
        extra = [extra_global[(extra_global >= bounds[i]) & (extra_global < bounds[i + 1])] - bounds[i]
                 for i in range(len(bounds) - 1)]
        got = map_user_blocks(_pass_b, etv, parts=parts, per_block=[(e,) for e in extra],
                              args=(lo, hi, lam0, target, theta), progress=progress)
        g_local = [g[0] for g in got]
        g_idx = np.concatenate([g[0] + bounds[i] for i, g in enumerate(got)])
        g_etv = np.ascontiguousarray(np.concatenate([g[1] for g in got]).reshape(-1, k), dtype=np.float64)
        g_ul = np.ascontiguousarray(np.concatenate([g[2] for g in got]), dtype=np.int32)
        g_assign = np.ascontiguousarray(np.concatenate([g[3] for g in got]), dtype=np.int32)
        del got
        m = len(g_idx)
        rs.update(gathered=m, pass_b_s=time.perf_counter() - t0)

        # 4. settle G with demands reduced by the fixed users
        t0 = time.perf_counter()
        g_counts = np.bincount(g_assign, minlength=k + 1).astype(np.int64)
        fixed = counts0 - g_counts
        lam = lam0.copy()
        sdmin = np.maximum(dmin - fixed[:k], 0)
        sdmax = dmax_r - fixed[:k]
        if (sdmax < 0).any():
            status = K.STATUS_INFEASIBLE
        elif m:
            status, st = K.repair(g_etv, g_ul, lo, hi, sdmin, sdmax, lam, g_assign, g_counts,
                                  np.arange(m, dtype=np.int32), np.full((k + 1) ** 2, math.inf), 0.0, deadline)
            status = int(status)
            rs["moved"] = int(st[K.ST_MOVED])
        rs["repair_s"] = time.perf_counter() - t0
        del g_etv, g_ul
        ok = status == K.STATUS_OPTIMAL
        if status == K.STATUS_INFEASIBLE:
            rs["outcome"] = "reduced problem infeasible"
        if status != K.STATUS_INFEASIBLE:
            # 5. pass C: final assignment, optimality of the fixed users, the maxima of the corrections
            t0 = time.perf_counter()
            g_nodes = np.split(g_assign, np.cumsum([len(g) for g in g_local])[:-1])
            out = map_user_blocks(
                _pass_c, etv, parts=parts, per_block=list(zip(g_local, g_nodes)),
                args=(lo, hi, lam0, target, lam, 1e-10, tight_lv32, node_block, node_lo, closed, closed_lv, nb),
                progress=progress,
            )
            counts = np.sum([o[0] for o in out], axis=0)
            viol = np.concatenate([o[1] + bounds[i] for i, o in enumerate(out)])
            rs.update(violations=len(viol), pass_c_s=time.perf_counter() - t0)
            if status == K.STATUS_TIME_LIMIT:
                rs["outcome"] = "time limit"
                stats["rounds"].append(rs)
                break
            d = lam[:k] - lam[k]
            tol = 1e-9 * (1.0 + np.abs(lam).max())
            cs = not (((d > tol) & (counts[:k] != dmax_r)).any() or ((d < -tol) & (counts[:k] != dmin)).any())
            ok = ok and len(viol) == 0 and cs and (counts[:k] >= dmin).all() and (counts[:k] <= dmax).all()
            rs["outcome"] = "optimal" if ok else ("slackness" if len(viol) == 0 else "violations")
        stats["rounds"].append(rs)
        if ok:
            break
        # grow: every fixed user with gap > 2 * (largest price move) is provably still at a best node
        open_nodes = lo < hi
        move = (lam - lam0)[open_nodes]
        spread = float(move.max() - move.min()) if status != K.STATUS_INFEASIBLE else math.inf
        theta = np.maximum(thresholds(4 ** (rnd + 1)), 2.0 * spread if math.isfinite(spread) else 0.0)
        if status != K.STATUS_INFEASIBLE:
            extra_global = np.union1d(extra_global, viol)
        if rnd == max_rounds - 1:
            raise GatherLimitError(
                f"the exact settlement did not verify after {max_rounds} rounds (last: {rs['outcome']}); "
                "raise gather_users or load the grid"
            )
    else:  # pragma: no cover - the loop always breaks or raises
        pass

    # the kernel's finishing steps, with the maxima reduced over the chunks
    prices = lam[:k] - lam[k]
    if len(levels.tight):
        M = np.max([o[2] for o in out], axis=0)
        corrected = T._tight_shift(M, levels, node_block, dmin, dmax, prices)
    else:
        corrected = prices.copy()
    if len(closed):
        shift = np.zeros(nb)
        for b in range(1, nb):
            members = np.flatnonzero(node_block[:k] == b)
            if len(members):
                shift[b] = prices[members[0]] - corrected[members[0]]
        M2 = np.max([o[3] for o in out], axis=0)
        for q, j in enumerate(closed):
            corrected[j] = max(0.0, float((M2[q] - shift).max()))
    assignment = np.concatenate([o[4] for o in out]).astype(np.int32, copy=False)
    del out
    stats["total_s"] = time.perf_counter() - t_start
    stats["gathered"] = stats["rounds"][-1]["gathered"]
    label = "optimal" if status == K.STATUS_OPTIMAL else "time_limit"
    return T.TransportSolution(assignment, corrected, label, stats)


# ---- files -------------------------------------------------------------------------------------------------


def open_grid(path: str | os.PathLike, *, variable: str = "etv", chunk_users: int | None = None) -> xr.DataArray:
    """Open an ETV grid stored as Zarr lazily (Dask-backed; nothing is read until a pass runs).

    Parameters
    ----------
    path : str or path-like
        A Zarr store written by :func:`predict_to_zarr`, :func:`write_synthetic_problem` or
        ``xarray.Dataset.to_zarr`` with a variable over ("user", "fund").
    variable : str, default "etv"
    chunk_users : int, optional
        Users per chunk (default: the store's chunks).

    Returns
    -------
    xarray.DataArray over ("user", "fund"), dask-backed, all funds in one chunk.
    """
    ds = xr.open_zarr(path, chunks={} if chunk_users is None else {USER: chunk_users, FUND: -1})
    if variable not in ds:
        raise ValidationError("variable", f"no {variable!r} in the store at {str(path)!r}; it holds {sorted(ds.data_vars)}")
    grid = ds[variable]
    if set(grid.dims) != {USER, FUND}:
        raise ETVError("etv", f"{variable!r} in {str(path)!r} has dims {grid.dims}; expected ({USER!r}, {FUND!r})")
    return _guarded(path, variable, grid, grid.transpose(USER, FUND).chunk({FUND: -1}))


def _guarded(path, variable: str, stored: xr.DataArray, grid: xr.DataArray) -> xr.DataArray:
    """The same lazy grid, read through :func:`eoca.io.lazy_zarr_array`: a damaged chunk then raises
    :class:`~eoca.errors.FileFormatError` naming the store, the array and the chunk, not a codec's raw
    error from inside Dask. Arrays that xarray decodes (packed with a scale or offset, or stored with
    funds first) keep xarray's reader."""
    import zarr

    from eoca.io import lazy_zarr_array

    encoding = stored.encoding
    try:
        arr = zarr.open_group(str(path), mode="r")[variable]
    except Exception:  # a store xarray opened but zarr's group API cannot: keep xarray's reader
        return grid
    if (stored.dims != (USER, FUND) or "scale_factor" in encoding or "add_offset" in encoding
            or arr.dtype != grid.dtype or tuple(arr.shape) != grid.shape):
        return grid
    step = grid.data.chunks[0][0] if grid.shape[0] else 1
    return grid.copy(data=lazy_zarr_array(path, arr, variable, int(step)))


def _predict_chunk(predictor, data, start, path, variable, merchant_h=None):
    grid = predictor._predict(data, merchant_h)
    ds = grid.to_dataset(name=variable).drop_vars([USER, FUND])
    ds.to_zarr(path, region={USER: slice(start, start + grid.sizes[USER])})
    return grid.sizes[USER]


def _subset(data, user_ids):
    """The part of a platform's tables that concerns ``user_ids`` (every fund is kept)."""
    from eoca.data import PlatformData

    keep = set(user_ids.tolist())

    def rows(table):
        return None if table is None else table[table["user_id"].isin(keep)].reset_index(drop=True)

    return PlatformData(
        users=data.users[data.users["user_id"].isin(keep)].reset_index(drop=True),
        funds=data.funds,
        impressions=rows(data.impressions),
        behaviours=rows(data.behaviours),
        payments=rows(data.payments),
    )


def _merchant_partials(predictor, data):
    return predictor._merchant_partials(data)


def _merge_partials(*partials):
    from eoca.predict.inference import merge_merchant_partials

    return merge_merchant_partials(*partials)


def _merchant_embeddings(predictor, partials):
    return predictor._merchant_embeddings(partials)


def predict_to_zarr(
    predictor,
    data,
    path: str | os.PathLike,
    *,
    chunk_users: int = 100_000,
    variable: str = "etv",
    progress: bool | None = None,
) -> xr.DataArray:
    """Predict the ETV grid chunk by chunk on the Dask workers and write it to a Zarr store.

    The fitted predictor is shipped to each worker once (pickled; a ``dask.distributed`` client scatters
    it), each task predicts ``chunk_users`` users and writes its rows straight into the store, so no
    process ever holds more than one chunk of the grid.

    Models with the user-merchant graph (``"esdpm"``) run two stages, because each merchant's embedding
    attends over *all* users who paid it. Stage 1 maps over the chunks: each summarises its payments
    per merchant and attention head (largest logit, sum of exponentials, weighted sum of user vectors;
    ``n_merchants x heads x graph_dim`` numbers). The summaries are tree-reduced on the workers with
    log-sum-exp rescaling and turned into the merchant embeddings once; stage 2 sends them to every
    chunk task, which predicts its users. The grid equals a whole-platform ``predict`` up to float
    rounding. Models without the graph skip stage 1.

    Parameters
    ----------
    predictor : eoca.predict.ETVPredictor
        Fitted.
    data : eoca.data.PlatformData
        The users to score (their tables are cut per chunk of users; every fund is scored).
    path : str or path-like
        Zarr store to create (overwritten).
    chunk_users : int, default 100,000
        Users per chunk (and per Zarr chunk).
    variable : str, default "etv"
    progress : bool, optional

    Returns
    -------
    xarray.DataArray
        The grid, opened lazily from the store (see :func:`open_grid`).
    """
    dask, da = _dask()
    if isinstance(chunk_users, bool) or not isinstance(chunk_users, int | np.integer) or chunk_users < 1:
        raise ValidationError("chunk_users", f"must be a positive integer; got {chunk_users!r}")
    predictor._check_fitted()
    users = data.users["user_id"].to_numpy()
    funds = data.funds["fund_id"].to_numpy()
    n, k = len(users), len(funds)
    template = xr.Dataset(
        {variable: ((USER, FUND), da.zeros((n, k), chunks=(chunk_users, k), dtype=np.float64))},
        coords={USER: users, FUND: funds},
    )
    template.to_zarr(path, mode="w", compute=False)
    client = _client()
    shipped = client.scatter(predictor, broadcast=True, hash=False) if client is not None else predictor
    starts = range(0, n, chunk_users)
    parts = []
    for start in starts:  # one chunk's tables at a time in the client before it goes to a worker
        part = _subset(data, users[start : start + chunk_users])
        parts.append(client.scatter(part, hash=False) if client is not None else part)
    merchant_h = None
    if predictor.spec_.use_graph and parts:
        # stage 1, in the same graph as stage 2: summaries per chunk, merged pairwise (a tree, so no
        # task receives more than two), finished once; every chunk task then depends on that result.
        # pure=False: hashing the predictor and tables for task keys would cost more than it saves.
        summarise, merge = (dask.delayed(f, pure=False) for f in (_merchant_partials, _merge_partials))
        level = [summarise(shipped, part) for part in parts]
        while len(level) > 1:
            level = [merge(*level[i : i + 2]) for i in range(0, len(level), 2)]
        merchant_h = dask.delayed(_merchant_embeddings, pure=False)(shipped, level[0])
    call = dask.delayed(_predict_chunk, pure=False)
    tasks = [call(shipped, part, start, str(path), variable, merchant_h) for start, part in zip(starts, parts)]
    _compute(tasks, progress)
    return open_grid(path, variable=variable)


def write_assignment(
    result,
    path: str | os.PathLike,
    *,
    chunk_users: int = 1_000_000,
    format: str = "zarr",
) -> None:
    """Write a result's assignment chunk by chunk: fund code per user (and the fund ids to decode it).

    Parameters
    ----------
    result : eoca.Result
    path : str or path-like
        A Zarr store (``format="zarr"``: variable ``fund_code`` over "user", -1 for no fund, attribute
        ``funds`` listing the fund ids by code) or a directory of Parquet files (``format="parquet"``:
        columns ``user``, ``fund``).
    chunk_users : int, default 1,000,000
        Users per chunk / Parquet partition.
    format : {"zarr", "parquet"}
    """
    _, da = _dask()
    if format not in ("zarr", "parquet"):
        raise ValidationError("format", f"must be 'zarr' or 'parquet'; got {format!r}")
    if isinstance(chunk_users, bool) or not isinstance(chunk_users, int | np.integer) or chunk_users < 1:
        raise ValidationError("chunk_users", f"must be a positive integer; got {chunk_users!r}")
    funds = [f.item() if hasattr(f, "item") else f for f in result.problem.funds.to_numpy()]
    codes = da.from_array(np.asarray(result.codes, dtype=np.int32), chunks=chunk_users)
    if format == "zarr":
        users = da.from_array(result.problem.users.to_numpy(), chunks=chunk_users)
        ds = xr.Dataset({"fund_code": ((USER,), codes)}, coords={USER: (USER, users)})
        ds["fund_code"].attrs.update(funds=[str(f) for f in funds], missing=-1)
        ds.to_zarr(path, mode="w")
        return
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*.parquet"):
        old.unlink()
    names = np.asarray([str(f) for f in funds] + [None], dtype=object)  # code -1 picks the last: None
    users = result.problem.users.to_numpy()
    for part, start in enumerate(range(0, len(users), chunk_users)):
        codes = np.asarray(result.codes[start : start + chunk_users])
        frame = pd.DataFrame({USER: users[start : start + chunk_users], FUND: names[codes]})
        frame.to_parquet(out / f"part-{part:05d}.parquet", index=False)


# ---- synthetic data at scale ---------------------------------------------------------------------------------


def _synthetic_chunk(rows: int, n_funds: int, family: str, seed: int):
    from eoca.instances import synthetic_problem

    p = synthetic_problem(rows, n_funds, family=family, seed=seed)
    etv = np.asarray(p.compile().etv, dtype=np.float64).copy()
    tol = np.asarray(p.risk_tolerance.values).astype(np.int8)
    return etv, tol, np.asarray(p.compile().demand_min, dtype=np.int64)


def write_synthetic_problem(
    path: str | os.PathLike,
    n_users: int,
    n_funds: int = 8,
    *,
    chunk_users: int = 1_000_000,
    family: str = "matching",
    seed: int = 0,
    progress: bool | None = None,
) -> AllocationProblem:
    """Generate a feasible synthetic problem chunk by chunk on the Dask workers, stored as Zarr.

    Each chunk is an independent :func:`eoca.instances.synthetic_problem` (seed ``seed + chunk``); the
    store holds ``etv`` over ("user", "fund") and ``risk_tolerance`` over "user", and the demands are the
    sums of the chunks' demands (so the whole problem is feasible).

    Returns
    -------
    AllocationProblem
        With the grid opened lazily from ``path``; demands and risk levels in memory.
    """
    dask, da = _dask()
    from eoca.instances import _fund_table

    names, levels = _fund_table(n_funds)
    sizes = [min(chunk_users, n_users - s) for s in range(0, n_users, chunk_users)]
    gen = [dask.delayed(_synthetic_chunk, pure=True, nout=3)(r, n_funds, family, seed + i) for i, r in enumerate(sizes)]
    etv = da.concatenate([da.from_delayed(g[0], (r, n_funds), np.float64) for g, r in zip(gen, sizes)])
    tol = da.concatenate([da.from_delayed(g[1], (r,), np.int8) for g, r in zip(gen, sizes)])
    ds = xr.Dataset(
        {"etv": ((USER, FUND), etv), "risk_tolerance": ((USER,), tol)},
        coords={USER: (USER, da.arange(n_users, chunks=chunk_users, dtype=np.int64)), FUND: names},
    )
    store = ds.to_zarr(path, mode="w", compute=False)
    demands = _compute([store, *[g[2] for g in gen]], progress)[1:]
    import zarr

    attrs = zarr.open_group(str(path), mode="a").attrs
    attrs["demand"] = dict(zip(names, np.sum(demands, axis=0).tolist()))
    attrs["risk_level"] = dict(zip(names, levels.tolist()))
    attrs["name"] = f"{family}-{n_users}x{n_funds}"
    return open_problem(path)


def open_problem(path: str | os.PathLike, *, chunk_users: int | None = None) -> AllocationProblem:
    """An allocation problem stored as Zarr, with its grid opened lazily.

    The store holds ``etv`` over ("user", "fund"), ``risk_tolerance`` over "user" (loaded: 1 to 8 bytes
    per user) and the attributes ``demand`` (fund -> count or [min, max]) and ``risk_level``
    (fund -> level); :func:`write_synthetic_problem` writes such a store.
    """
    import zarr

    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    missing = {"demand", "risk_level"} - set(attrs)
    if missing:
        raise ValidationError("path", f"the store at {str(path)!r} lacks the attributes {sorted(missing)}")
    demand = {f: tuple(v) if isinstance(v, list) else v for f, v in attrs["demand"].items()}
    return AllocationProblem(
        etv=open_grid(path, chunk_users=chunk_users),
        demand=demand,
        risk_level=attrs["risk_level"],
        risk_tolerance=xr.open_zarr(path)["risk_tolerance"].load(),
        holdout=bool(attrs.get("holdout", False)),
        name=attrs.get("name"),
    )
