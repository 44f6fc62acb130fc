"""The exact allocation of a Dask-backed grid: the exact solver's phases, run chunk by chunk.

The exact solve on a Dask grid (:func:`solve_exact`)
----------------------------------------------------
1. **Warm prices from a sample**: a systematic 1-in-s sample of users (about ``sample_users`` of them) is
   gathered and solved exactly, in memory, with scaled demands (the in-memory kernel's own recursion).
2. **Pass A** (map-reduce): each chunk puts its users at their best fund under the warm prices (the
   kernel's ``assign_pass``), counts users per fund and returns a systematic sample of the users' gaps to
   their second-best fund, and its users whose gap is below a threshold read off the warm-start sample's
   own gaps (``PRE_GATHER``: the 8% of users nearest a price boundary, at least 400,000, with their
   ETV rows; none where that would take more than twice as many or more than ``gather_limit``). From the
   gap sample the client picks a gap threshold theta per fund that selects about ``gather_users`` users
   (more when the warm prices leave a larger imbalance).
3. **Pass B**: each chunk returns only its users with gap <= theta (the *gathered* set G: their ETV rows,
   risk codes and warm fund). Every other user stays fixed at its warm fund. In the first round, when
   theta lies below pass A's threshold everywhere, G is taken from what pass A returned (the same users:
   the same kernel on the same prices) and the pass is not run: one read of the grid fewer.
4. **Settlement** in the client: the in-memory level's phases on G alone from the warm prices
   (:func:`eoca.solvers._transport.settle`: pass, Newton step, successive-shortest-path ``repair``), with
   each fund's demand reduced by its fixed users.
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
import time
from dataclasses import replace
from typing import Any

import numpy as np

from eoca.distributed.blocks import _bounds, _compute, map_user_blocks, split_users
from eoca.errors import EocaError, ValidationError
from eoca.problem import AllocationProblem, CompiledProblem
from eoca.solvers import _transport as T
from eoca.solvers import _transport_kernels as K
from eoca.solvers import _tuning
from eoca.solvers.base import Solver, SolverOutput
from eoca.solvers.exact import solver_output

__all__ = ["GatherLimitError", "lazy_optimal_prices", "run_lazy", "solve_exact"]


class GatherLimitError(EocaError, RuntimeError):
    """The distributed exact solve would need to gather more users than ``gather_limit`` into the client.

    Happens on extremely degenerate grids (millions of users exactly tied between funds). Raise the
    limit (client memory: about ``8 * (n_funds + 2)`` bytes per gathered user) or load the grid.
    """



def _pass_a(block, ul, lo, hi, lam0, target, stride, theta_pre):
    assign, gap, counts, nbad, _smax, _hist = K.assign_pass(block, ul, lo, hi, lam0, target)
    take = np.flatnonzero(gap <= theta_pre)  # the users pass B would gather, if theta ends up below theta_pre
    return (counts, int(nbad), gap[::stride].copy(), assign[::stride].copy(),
            (take, np.ascontiguousarray(block[take]), ul[take], assign[take], gap[take]))


def _pass_b(block, ul, extra, lo, hi, lam0, target, theta):
    assign, gap, _counts, _nbad, _smax, _hist = K.assign_pass(block, ul, lo, hi, lam0, target)
    take = gap <= theta[assign]
    if len(extra):
        take[extra] = True
    idx = np.flatnonzero(take)
    return idx, np.ascontiguousarray(block[idx]), ul[idx], assign[idx]


def _pass_c(block, ul, g_idx, g_node, lo, hi, lam0, target, lam, rtol, tight_lv, node_block, node_lo, closed,
            closed_lv, nb):
    k = block.shape[1]
    assign = K.assign_pass(block, ul, lo, hi, lam0, target)[0]
    assign[g_idx] = g_node
    counts = np.bincount(assign, minlength=k + 1).astype(np.int64)
    viol = K.violations(block, ul, lo, hi, lam, assign, rtol)
    p = lam - lam[k]
    M = K.block_violations(block, ul, tight_lv, node_block, node_lo, assign, p) if len(tight_lv) else None
    M2 = K.closed_best(block, ul, closed, closed_lv, node_block, nb, assign, p) if len(closed) else None
    K.to_output(assign, k)
    return counts, viol, M, M2, assign


def _select(pre, theta):
    """Pass B's output for one chunk from what pass A returned: its users with gap <= theta at their fund."""
    idx, rows, ul, assign, gap = pre
    take = gap <= theta[assign]
    return idx[take], rows[take], ul[take], assign[take]


def _pre_gather_threshold(sub, sul, lo, hi, lam0, target, n, gather_limit) -> float:
    """The gap below which pass A returns its users: the ``PRE_GATHER`` share of the users (at least
    twice ``GATHER_MIN``) of smallest gap under the warm prices, read off the warm-start sample's own gaps;
    -inf (nothing) where that would gather more than twice as many, or more than ``gather_limit`` (a grid
    of many exact ties has a mass of zero gaps; one where most users may take a single fund has a mass of
    infinite gaps). On a grid of at most twice ``GATHER_MIN`` users it is +inf: every user's row, as a
    first gather there takes most of them anyway."""
    share = len(sul) / n
    sample_target = np.floor(target * share).astype(np.int64)
    gap = K.assign_pass(sub, sul, lo, hi, lam0, sample_target)[1].astype(np.float64)
    # twice the first gather's floor: the threshold chosen after pass A, from pass A's own gap sample,
    # lands a little above or below the one the warm-start sample gives for the same share
    want = max(2 * _tuning.GATHER_MIN, int(_tuning.PRE_GATHER * n))
    theta = _quantile_threshold(gap, n, want)  # +inf where want covers every user or most have one fund
    est = np.count_nonzero(gap <= theta) / max(len(gap), 1) * n
    return theta if est <= min(gather_limit, 2 * want) else -math.inf


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
    theta_pre = -math.inf  # gap below which pass A already returns its users (none without a sample)
    if n > _tuning.BASE_USERS:
        step = max(_tuning.SAMPLE_STEP, -(-n // sample_users))
        sub = np.ascontiguousarray(_compute([etv[::step]], progress)[0], dtype=np.float64)
        sul = np.ascontiguousarray(ul[::step])
        lam0 = T.warm_prices(sub, sul, n, levels.user_counts, lo, hi, dmin, dmax_r, holdout, levels, deadline,
                             {"sample_levels": [], "level_seconds": []}, settle=True)
        stats["sample_users"] = len(sul)
    target = T.pass_targets(lam0, dmin, dmax_r, n, holdout)
    if n > _tuning.BASE_USERS:
        theta_pre = _pre_gather_threshold(sub, sul, lo, hi, lam0, target, n, gather_limit)
        del sub
    stats["sample_s"] = time.perf_counter() - t0

    # 2. pass A: counts under the warm prices and a sample of the gaps
    t0 = time.perf_counter()
    parts = split_users(etv, [ul])
    stride = max(1, n // _tuning.GAP_SAMPLE)
    found = map_user_blocks(_pass_a, etv, parts=parts, args=(lo, hi, lam0, target, stride, theta_pre),
                            progress=progress)
    counts0 = np.sum([f[0] for f in found], axis=0)
    if sum(f[1] for f in found):
        raise ValueError(f"{sum(f[1] for f in found)} users may take no fund (their risk level is below every open fund's)")
    gaps = np.concatenate([f[2] for f in found]).astype(np.float64)
    gap_nodes = np.concatenate([f[3] for f in found])
    pre = [f[4] for f in found]
    del found
    stats["pre_gathered"] = int(sum(len(p[0]) for p in pre))
    excess = T.pass_imbalance(counts0, lam0, dmin, dmax_r, n)[1]
    want = int(gather_users if gather_users is not None else max(_tuning.GATHER_MIN, _tuning.GATHER_PER_EXCESS * excess))
    stats.update(initial_excess=excess, pass_a_s=time.perf_counter() - t0)

    # per fund: enough of its users to take away its surplus over demand_max (else the reduced problem
    # cannot be feasible); overall: the ``want`` users closest to a price boundary
    surplus = np.maximum(counts0 - np.append(dmax_r, n), 0)

    def thresholds(scale: int) -> np.ndarray:
        base = _quantile_threshold(gaps, n, want * scale)
        th = np.full(k + 1, base)
        for a in np.flatnonzero(surplus):
            mine = gaps[gap_nodes == a]
            th[a] = max(base, _quantile_threshold(mine, int(counts0[a]), scale * (2 * int(surplus[a]) + _tuning.SURPLUS_SLACK)))
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
        # 3. pass B: gather the users near a price boundary (in the first round, from what pass A returned
        # when its threshold covers theta: the same users, by the same kernel on the same prices)
        t0 = time.perf_counter()
        if pre is not None and len(extra_global) == 0 and bool((theta <= theta_pre).all()):
            got = [_select(p, theta) for p in pre]
            rs["from_pass_a"] = True
        else:
            extra = [extra_global[(extra_global >= bounds[i]) & (extra_global < bounds[i + 1])] - bounds[i]
                     for i in range(len(bounds) - 1)]
            got = map_user_blocks(_pass_b, etv, parts=parts, per_block=[(e,) for e in extra],
                                  args=(lo, hi, lam0, target, theta), progress=progress)
        pre = None
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
            # the in-memory level's phases on the gathered block: pass, Newton step, repair
            info: dict[str, Any] = {"sample_levels": [], "level_seconds": []}
            lam, g_assign, status, st = T.settle(g_etv, g_ul, lo, hi, sdmin, sdmax, holdout, levels, deadline,
                                                 info, lam0)
            status = int(status)
            rs["moved"] = int(st[K.ST_MOVED])
            rs["newton_read"] = info["newton_read"]
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
        theta = np.maximum(thresholds(_tuning.GROWTH ** (rnd + 1)), 2.0 * spread if math.isfinite(spread) else 0.0)
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


def run_lazy(solver: Solver, problem: AllocationProblem) -> SolverOutput:
    """Run ``solver`` on a problem with a Dask-backed grid (what :func:`eoca.solve` calls for one).

    Only solvers that declare ``supports_lazy`` get here (``Solver.check_supports`` refuses the others by
    name); of the built-in ones that is the exact solver.
    """
    if solver.name != "exact":
        raise ValidationError("solver", f"{solver.name!r} has no chunk-wise solve for a Dask-backed grid")
    start = time.perf_counter()
    c = problem.compile()
    if c.constraints:
        from eoca.distributed.rules import solve_rules

        out = solve_rules(c, solver.settings["time_limit"])
        return SolverOutput(codes=out["codes"], status=out["status"], prices=out["prices"],
                            multipliers=out["multipliers"], message=out["message"], stats=out["stats"],
                            timings={"solve": time.perf_counter() - start})
    sol = solve_exact(lazy_penalised(c), time_limit=solver.settings["time_limit"])
    return solver_output(sol, time.perf_counter() - start)


def lazy_optimal_prices(compiled: CompiledProblem) -> np.ndarray:
    """Optimal fund prices of a feasible problem with a Dask-backed grid (to bound any solver's result)."""
    return np.asarray(solve_exact(lazy_penalised(compiled)).prices, dtype=np.float64)


def lazy_penalised(c: CompiledProblem) -> CompiledProblem:
    """A Dask-backed problem with an eligibility mask as one without: every chunk of the grid reads its
    forbidden pairs as :func:`~eoca.solvers._side.forbidden_value` (lazily, chunk by chunk, as the
    in-memory solve folds the mask in), so every phase of the solve runs unchanged. The mask itself is in
    the client's memory (one byte per pair) and travels with the task graph, cut like the grid."""
    if c.mask is None:
        return c
    import dask.array as da

    from eoca.solvers._side import forbidden_value

    top = float(da.maximum(c.etv.max(), 0.0).compute()) if c.n_users else 0.0  # one pass over the grid
    value = forbidden_value(c, top)
    mask = da.from_array(c.mask, chunks=c.etv.chunks)
    return replace(c, etv=da.where(mask, c.etv, value), mask=None, constraints=())
