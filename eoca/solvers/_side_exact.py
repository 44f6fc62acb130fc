"""The exact solver with side constraints: the transport kept, the constraints priced on the users near
the price boundary, verified on every user, and the last fractional users settled by a small MIP.

A side constraint couples users only through one extra multiplier, so at fixed prices ``lambda`` (one
per fund) and multipliers ``mu`` (one per constraint) every user is independent: it takes a best pair
of ``etv - lambda - sum_q mu_q a_q``. The method (docs/guide.md, "Business rules"):

1. The LP relaxation on a random sample of users (bounds scaled to it) gives warm multipliers; the
   transport optimum on the grid priced by them (the exact kernel, the mask folded in as forbidden
   values) gives starting prices and each user's gap between its best and second-best pair.
2. **Restricted LP.** The users of smallest gap form a working set W; every other user is fixed at a
   best pair under the current prices. HiGHS solves the LP relaxation over W's pairs with the demands
   and constraint bounds less what the fixed users take; its duals are new prices and multipliers,
   kept within a box around the last ones (widened where it binds: a multiplier is often degenerate on
   W alone, and a far one would break thousands of fixed users).
3. **Verification on all users.** A fixed user that is no longer at a best pair under the new duals
   breaks complementary slackness: such users join W and step 2 repeats, W's other users leaving it at
   the pair the LP gave them unless fractional or of small gap (so W stays small; after a few rounds it
   only grows, so the rounds end). When no user is broken and no box binds, the LP
   solution over W with the fixed users is optimal for the whole LP relaxation and the duals certify it:
   the checker's dual bound of (prices, multipliers) equals the LP optimum.
4. **Settlement.** The LP optimum has at most about k + m fractional users. They and the W users of
   smallest gap around them are re-solved as a binary program (HiGHS MIP) against what the others leave;
   the allocation then meets every constraint and its ETV is within the integrality gap of the bound,
   which the checker reports (``optimal`` only when it is closed).

From ``DUAL_USERS`` users on (and always on a Dask-backed grid), steps 1-3 give way to Newton's method on
the smoothed dual (:mod:`eoca.solvers._side_dual`), which needs a few reads of the grid where each
restricted LP costs HiGHS about 0.15 s per 1,000 users. Every user then takes a best option under its
prices and multipliers; the LP relaxation over the few hundred users of smallest gap places all but a
handful, and step 4 settles those with a MIP over a few dozen users. The bound is then the smoothed
dual's (within a tiny share of the LP optimum, certified by the checker either way). Where that method
fails, the restricted LPs run as above.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from eoca.problem import CompiledProblem
from eoca.solvers import _tuning
from eoca.solvers._side import (
    allowed_pairs,
    core_message,
    infeasible_core,
    pair_coefficients,
    penalised,
    side_bounds,
    solve_lp,
    solve_mip,
)
from eoca.solvers._side_dual import InMemory, smoothed_duals
from eoca.solvers._side_kernels import coefficient_sizes, reduced_choices

__all__ = ["solve_with_constraints", "solve_by_smoothed_dual"]


def _residual(c: CompiledProblem, codes: np.ndarray, free: np.ndarray):
    """Demand and constraint bounds less what the users outside ``free`` take with ``codes``."""
    k = c.n_funds
    held = np.where(free, -1, codes)
    counts = np.bincount(held[held >= 0], minlength=k).astype(np.float64)
    lo_s, hi_s = side_bounds(c)
    act = np.array([con.activity(held) for con in c.constraints])
    return (c.demand_min - counts, c.demand_max - counts, lo_s - act, hi_s - act)


def _priced(c: CompiledProblem, etv: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """``etv - sum_q mu_q a_q`` as a read-only float64 grid (forbidden pairs stay forbidden)."""
    out = np.array(etv, dtype=np.float64)
    for s in range(0, c.n_users, _tuning.SIDE_ROWS):
        rows = slice(s, min(s + _tuning.SIDE_ROWS, c.n_users))
        for q, con in enumerate(c.constraints):
            if mu[q]:
                out[rows] -= mu[q] * con.coefficients(rows)
    out.flags.writeable = False
    return out


def _sample_duals(c: CompiledProblem, seed: int, penalty: np.ndarray):
    """Warm prices and multipliers: the LP relaxation on a random sample of users, every bound scaled by
    the sample's share (widened by 5% if that is infeasible). None when even that is infeasible."""
    rng = np.random.default_rng(seed)
    members = np.sort(rng.choice(c.n_users, size=_tuning.SIDE_SAMPLE, replace=False))
    users, funds, local, values, coef = _local_model(InMemory(c), members)
    r = _tuning.SIDE_SAMPLE / c.n_users
    lo_s, hi_s = side_bounds(c)
    for widen in (0.0, 0.05):
        lo_f = np.floor(c.demand_min * r * (1 - widen))
        hi_f = np.ceil(c.demand_max * r * (1 + widen))
        if widen == 0.0 and c.exact_demands and not c.holdout:
            lo_f = hi_f = c.demand_min * r  # exact scaled demands add up to the sample
        lo = np.where(np.isfinite(lo_s), lo_s * r * (1 - widen * np.sign(lo_s)), lo_s)
        hi = np.where(np.isfinite(hi_s), hi_s * r * (1 + widen * np.sign(hi_s)), hi_s)
        lp = solve_lp(values, local, funds, coef, _tuning.SIDE_SAMPLE, c.n_funds, lo_f, hi_f, lo, hi,
                      c.holdout or widen > 0, penalty)
        if lp is not None:
            return lp[2], lp[3]
    return None


def solve_with_constraints(c: CompiledProblem, kernel, time_limit: float | None = None) -> dict:
    """Solve a problem with side constraints (and possibly a mask). ``kernel(compiled)`` is the exact
    transport solve used for step 1. Returns codes, prices, multipliers, status, message and stats."""
    start = time.perf_counter()
    deadline = None if time_limit is None else start + time_limit
    n, k, m = c.n_users, c.n_funds, len(c.constraints)
    memory = InMemory(c)
    if n >= _tuning.DUAL_USERS:
        out = solve_by_smoothed_dual(c, memory, deadline, start)
        if out is not None:
            return out
    base = penalised(c)
    etv = base.etv  # float64, forbidden pairs at a value no optimum takes
    scale = max(1.0, float(np.max(c.etv, initial=0.0)))  # ETVs are >= 0 (validated): no copy of the grid
    tol = 1e-9 * scale
    smallest, typical = np.array([coefficient_sizes(con) for con in c.constraints]).reshape(m, 2).T
    # a price per unit outside a side bound above any shadow price the constraint can have: moving one
    # user changes the ETV by at most 2 * scale and the activity by at least the smallest coefficient
    penalty = 100.0 * (scale + 1.0) / smallest
    mu = np.zeros(m)
    warm = _sample_duals(c, n, penalty) if n > _tuning.SIDE_SAMPLE else None
    if warm is not None:
        # the transport on the grid priced by the sample's multipliers: every demand met, every user at a
        # best option under (its prices, the multipliers); only the constraints' activities are left off,
        # by the sample's error, for the restricted LP to settle
        mu = warm[1]
        sol = kernel(replace(base, etv=_priced(c, etv, mu)))
    else:
        sol = kernel(base)
    lam = np.asarray(sol.prices, dtype=np.float64)
    fixed = np.asarray(sol.assignment, dtype=np.int32).copy()
    _, gap, _ = reduced_choices(c, etv, lam, mu, None)
    size = min(n, max(_tuning.SIDE_FIRST, int(_tuning.SIDE_SHARE * n)))
    free = np.zeros(n, dtype=bool)
    free[np.argpartition(gap, size - 1)[:size] if size < n else slice(None)] = True
    stats = {"method": "restricted LP", "transport_s": time.perf_counter() - start, "rounds": 0,
             "largest_lp_users": 0}
    # a box step: each restricted LP keeps the multipliers within `width` of the previous ones. On the
    # users near the boundary a constraint's multiplier is often degenerate (any value in a wide range is
    # optimal for them); unboxed, HiGHS may pick one far from the right one and thousands of fixed users
    # then break. Where a box binds it widens, so the final LP is the plain restricted LP.
    width = np.maximum(_tuning.SIDE_BOX * np.abs(mu), _tuning.SIDE_BOX_FLOOR * scale / typical)
    lp = None
    for rnd in range(_tuning.SIDE_ROUNDS):
        stats["rounds"] = rnd + 1
        members = np.flatnonzero(free)
        stats["largest_lp_users"] = max(stats["largest_lp_users"], len(members))
        users, funds, local, values, coef = _local_model(memory, members)
        lo_f, hi_f, lo_s, hi_s = _residual(c, fixed, free)
        # elastic side bounds: where the fixed users leave the working set no room, the LP misses a
        # bound at a high price instead of failing, and the users that price moves join the set
        box = (np.maximum(mu - width, -penalty), np.minimum(mu + width, penalty))
        lp = solve_lp(values, local, funds, coef, len(members), k, lo_f, hi_f, lo_s, hi_s, c.holdout, box=box)
        if lp is None:  # the demands themselves leave the working set no room: widen it by gap order
            if free.all():
                return _infeasible(c, fixed, stats, "")
            free[np.argsort(np.where(free, -np.inf, gap), kind="stable")[:min(n, 2 * len(members))]] = True
            continue
        _, x, lam, mu, excess = lp
        used = np.abs(excess) > 1e-9 * (1 + np.abs(np.where(excess > 0, hi_s, lo_s)))
        boxed = used & np.where(excess > 0, box[1] < penalty, box[0] > -penalty)
        missed = used & ~boxed
        width[boxed] *= 4
        _, gap, short = reduced_choices(c, etv, lam, mu, fixed)
        broken = ~free & (short > tol)
        if not broken.any() and not boxed.any():
            if not missed.any():
                break
            if free.all():
                return _infeasible(c, fixed, stats, _missed(c, excess, missed))
            free[np.argsort(np.where(free, -np.inf, gap), kind="stable")[:min(n, 2 * len(members))]] = True
            continue
        if deadline is not None and time.perf_counter() > deadline:
            break
        if rnd < _tuning.SIDE_SHRINK_ROUNDS:
            free = _next_working_set(free, members, funds, local, x, fixed, gap, broken, size, c.holdout)
        else:  # past them the working set only grows, so the rounds end
            free |= broken
    stats.update(working_users=int(free.sum()), lp_s=time.perf_counter() - start - stats["transport_s"])
    if lp is None or broken.any() or missed.any() or boxed.any():
        out = _failed(fixed, stats, "the restricted LP did not settle on every user within its rounds")
        out["status"] = "time_limit" if deadline else "error"
        return out

    # the LP solution: integral users take their pair, the fractional ones are settled below
    codes = fixed.copy()
    members = np.flatnonzero(free)
    share = np.zeros(len(members))
    np.add.at(share, local, x)
    big = x > 1 - 1e-9
    codes[members] = -1
    codes[users[big]] = funds[big]
    whole = np.zeros(len(members), dtype=bool)
    whole[local[big]] = True
    frac = ~whole & ((share > 1e-9) | (not c.holdout))
    total = float(lp[0]) + memory.value(np.where(free, -1, fixed))  # the LP optimum over all users
    stats["fractional_users"] = int(frac.sum())
    return _settle(c, codes, members, gap[members], frac, _tuning.SIDE_SETTLE + 20 * (k + m), total, lam, mu,
                   stats, deadline, "the LP bound", memory)


def solve_by_smoothed_dual(c: CompiledProblem, access, deadline: float | None, start: float) -> dict | None:
    """The path for many users: prices and multipliers from Newton's method on the smoothed dual
    (:mod:`eoca.solvers._side_dual`), every user at a best option under them, and the users of smallest
    gap settled by an LP and a small MIP. ``access`` reads every user (in memory, or chunk by chunk on
    Dask). None where the smoothed dual fails (in memory the restricted LPs then take over)."""
    duals = smoothed_duals(c, access, deadline)
    if duals is None:
        return None
    stats = {"method": "smoothed dual", **duals["stats"], "transport_s": 0.0, "rounds": 0,
             "largest_lp_users": 0, "lp_s": time.perf_counter() - start, "fractional_users": 0}
    codes, must, pool, pool_gap = _relaxed_settlement(c, access, duals["best"].astype(np.int32), duals["gap"], stats)
    if codes is None:
        return None
    out = _settle(c, codes, pool, pool_gap, must, _tuning.SIDE_SETTLE_SMALL, duals["bound"], duals["prices"],
                  duals["multipliers"], stats, deadline, "the dual bound", access)
    return None if out["status"] == "error" else out


def _local_model(access, members: np.ndarray):
    """The LP's pairs over the sorted users ``members``, read through ``access``: their global user
    positions, funds, positions within ``members``, ETVs and constraint coefficients."""
    sub = access.subset(members)
    u, funds = allowed_pairs(sub)
    return members[u], funds, u, np.asarray(sub.etv[u, funds], dtype=np.float64), pair_coefficients(sub, u, funds)


def _relaxed_settlement(c: CompiledProblem, access, best: np.ndarray, gap: np.ndarray, stats: dict):
    """Every user at a best option meets the rules only up to the users near a tie. The LP relaxation
    over the ``SIDE_SETTLE + 20 (k + m)`` users of smallest gap (four times as many while it has no
    solution), everyone else kept, places all but at most about k + m of them; those fractional ones are
    left for the MIP (a MIP over all of them costs HiGHS a second where this LP costs a few hundredths).
    Returns (codes, must, pool, pool_gap): the codes with the LP's whole users placed, and the users the
    MIP must settle among a pool to pick more from, or Nones where the LP fails on every size."""
    n, k, m = c.n_users, c.n_funds, len(c.constraints)
    size = _tuning.SIDE_SETTLE + 20 * (k + m)
    while True:
        take = min(size, n)
        part = np.argpartition(gap, take - 1)[:take] if take < n else np.arange(n)
        part.sort()
        users, funds, local, values, coef = _local_model(access, part)
        settle = np.zeros(n, dtype=bool)
        settle[part] = True
        lo_f, hi_f, lo_s, hi_s = _residual(c, best, settle)
        lp = solve_lp(values, local, funds, coef, len(part), k, lo_f, hi_f, lo_s, hi_s, c.holdout)
        if lp is not None:
            break
        if take == n or take >= _tuning.SIDE_SETTLE_MAX:
            return None, None, None, None  # the users near a tie cannot meet the rules: not this method's case
        size *= 4
    x = lp[1]
    codes = best.copy()
    codes[part] = -1
    big = x > 1 - 1e-9
    codes[users[big]] = funds[big]
    placed = np.zeros(len(part))
    np.add.at(placed, local, x)
    whole = np.zeros(len(part), dtype=bool)
    whole[local[big]] = True
    must = ~whole & ((placed > 1e-9) | (not c.holdout))
    stats["fractional_users"] = int(must.sum())
    stats["relaxed_users"] = int(take)
    return codes, must, part, gap[part]


def _settle(c: CompiledProblem, codes: np.ndarray, pool: np.ndarray, pool_gap: np.ndarray, must: np.ndarray,
            extra: int, total: float, lam: np.ndarray, mu: np.ndarray, stats: dict, deadline: float | None,
            bound: str, access) -> dict:
    """Re-solve by MIP the users of ``pool`` that ``must`` be (fractional ones) and the ``extra`` ones of
    smallest gap (four times as many while no allocation exists) against what everyone else takes under
    ``codes``, so that every constraint holds; ``total`` is the bound the result is measured against."""
    n, k = c.n_users, c.n_funds
    settle_s = time.perf_counter()
    chosen = None
    while chosen is None:
        pick = must.copy()
        take = min(extra, len(pool))
        pick[np.argpartition(pool_gap, take - 1)[:take] if take < len(pool) else slice(None)] = True
        part = np.sort(pool[pick])
        p_users, p_funds, p_local, p_values, p_coef = _local_model(access, part)
        settle = np.zeros(n, dtype=bool)
        settle[part] = True
        lo_f, hi_f, lo_s, hi_s = _residual(c, codes, settle)
        left = None if deadline is None else max(deadline - time.perf_counter(), 1.0)
        chosen = solve_mip(p_values, p_local, p_funds, p_coef, len(part), k, lo_f, hi_f, lo_s, hi_s,
                           c.holdout, time_limit=left, abs_gap=_tuning.SIDE_SETTLE_GAP * abs(total))
        if chosen is None:
            if pick.all():
                return {"codes": codes, "status": "error", "prices": lam, "multipliers": mu, "stats": stats,
                        "message": "no integer allocation meets the side constraints near the LP optimum"}
            extra *= 4
    codes = codes.copy()
    codes[part] = -1
    codes[p_users[chosen]] = p_funds[chosen]
    stats.update(settled_users=int(len(part)), settle_s=time.perf_counter() - settle_s, lp_objective=total)
    value = access.value(codes)
    stats["gap"] = max(total - value, 0.0) / max(abs(total), 1e-300)
    if total - value <= 1e-12 * max(abs(total), 1.0):
        return {"codes": codes, "status": "optimal", "prices": lam, "multipliers": mu, "stats": stats, "message": ""}
    # the bound is not met by an integer allocation: a gap the solver proves, not an optimum it claims
    return {"codes": codes, "status": "feasible", "prices": lam, "multipliers": mu, "stats": stats,
            "message": f"side constraints: within {stats['gap']:.2e} of {bound} (the integrality gap "
                       f"left after settling {len(part)} users by MIP)"}


def _next_working_set(free, members, funds, local, x, fixed, gap, broken, size, holdout):
    """The users of the next restricted LP: those the last LP left fractional, the fixed users its duals
    broke, and the ``size`` users of smallest gap under them. The others of the last working set leave it
    at the option the LP gave them (a best option under its duals), so the next LP stays small however
    many users earlier rounds added; ``fixed`` is updated in place."""
    n = len(free)
    whole = x > 1 - 1e-9
    choice = np.full(len(members), -1, dtype=np.int32)
    choice[local[whole]] = funds[whole]
    integral = np.zeros(len(members), dtype=bool)
    integral[local[whole]] = True
    if holdout:  # a user the LP leaves without a fund is integral too
        share = np.zeros(len(members))
        np.add.at(share, local, x)
        integral |= share < 1e-9
    keep = broken.copy()
    keep[members[~integral]] = True
    keep[np.argpartition(gap, size - 1)[:size] if size < n else slice(None)] = True
    leaving = integral & ~keep[members]
    fixed[members[leaving]] = choice[leaving]
    return keep


def _failed(codes, stats, message):
    return {"codes": codes, "status": "error", "prices": None, "multipliers": None, "stats": stats,
            "message": message}


def _infeasible(c: CompiledProblem, codes, stats, missed: str) -> dict:
    """The LP relaxation over every user cannot meet the rules: name the constraints that cannot hold
    together (:func:`infeasible_core`) or, past its size, those the elastic LP had to break."""
    message = core_message(c, infeasible_core(c), missed)
    if message is None:
        return _failed(codes, stats, "the LP relaxation failed on every user (numerical trouble in HiGHS)")
    return {**_failed(codes, stats, message), "status": "infeasible"}


def _missed(c: CompiledProblem, excess: np.ndarray, missed: np.ndarray) -> str:
    """Name the constraints the elastic LP relaxation had to break, and by how much."""
    parts = []
    for q in np.flatnonzero(missed):
        con = c.constraints[q]
        side = f"above at_most {con.hi:,.6g}" if excess[q] > 0 else f"below at_least {con.lo:,.6g}"
        parts.append(f"{con.name!r} by {abs(excess[q]):,.6g} ({side})")
    return "; ".join(parts) + " at the least"
