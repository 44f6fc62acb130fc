"""Numba kernels for the paper's Algorithm 1 (the heuristic, HA) and its risk-safe variant.

Algorithm 1 ranks users by h_i = (alpha_a + alpha_b) / 2 * (2 ETV_ia - ETV_ib - ETV_ic) over their top three
funds a, b, c, where alpha_j = sum_i ETV_ij / d_j, and places users in that order into their top fund; when a
fund fills, it closes and the remaining users are re-ranked. So the work is one scoring pass and one sort per
fund that fills, and the placement walk between fills is a plain loop over the ranked users.

Faithful mode follows the paper: ineligible ETV is set to 0 but the fund stays selectable, so a user whose
eligible funds are all full (or all worth 0) can land above their risk tolerance. Safe mode only considers
eligible funds and keeps the rest of the problem feasible at each placement: with ordered risk levels the
remainder is feasible iff, for every level L, the users left with tolerance >= L cover the unmet minimum
demand of funds with risk >= L, and (unless holdout) the users left with tolerance < L fit into the capacity
left below L. Each placement changes those slacks on a range of levels, checked in O(levels).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["algorithm1"]


def _alpha_py(etv, user_level, fund_level, pool, open_, need, n_chunks):  # pragma: no cover - compiled
    k = etv.shape[1]
    m = pool.shape[0]
    partial = np.zeros((n_chunks, k))
    for c in numba.prange(n_chunks):
        lo = m * c // n_chunks
        hi = m * (c + 1) // n_chunks
        for p in range(lo, hi):
            i = pool[p]
            for j in range(k):
                if open_[j] and user_level[i] >= fund_level[j]:
                    partial[c, j] += etv[i, j]
    alpha = np.zeros(k)
    for j in range(k):
        if open_[j]:
            alpha[j] = partial[:, j].sum() / need[j]
    return alpha


def _scores_py(etv, user_level, fund_level, pool, open_, alpha, safe):  # pragma: no cover - compiled
    """Top fund and heuristic score h of each pooled user (lines 5-9 of Algorithm 1)."""
    k = etv.shape[1]
    m = pool.shape[0]
    top = np.empty(m, dtype=np.int32)
    h = np.empty(m)
    for p in numba.prange(m):
        i = pool[p]
        # top three open funds by (masked) ETV; ties go to the lower fund index
        a = -1
        b = -1
        c = -1
        va = -np.inf
        vb = -np.inf
        vc = -np.inf
        for j in range(k):
            if not open_[j]:
                continue
            if user_level[i] >= fund_level[j]:
                v = etv[i, j]
            elif safe:
                continue
            else:
                v = 0.0  # line 1 of Algorithm 1: ineligible ETV set to 0, fund still selectable
            if v > va:
                c, vc = b, vb
                b, vb = a, va
                a, va = j, v
            elif v > vb:
                c, vc = b, vb
                b, vb = j, v
            elif v > vc:
                c, vc = j, v
        top[p] = a
        if a < 0:
            h[p] = -np.inf
            continue
        # fewer than three candidates: the missing ones count as worth 0 (and b's alpha as a's)
        if b < 0:
            vb = 0.0
        if c < 0:
            vc = 0.0
        alpha_b = alpha[b] if b >= 0 else alpha[a]
        h[p] = (alpha[a] + alpha_b) / 2.0 * (2.0 * va - vb - vc)
    return top, h


# Each pass exists twice: threaded for large pools, serial for small ones, where starting threads costs
# more than the pass (and stalls when the other cores are busy).
_alpha_par = numba.njit(cache=True, parallel=True)(_alpha_py)
_alpha_seq = numba.njit(cache=True)(_alpha_py)
_scores_par = numba.njit(cache=True, parallel=True)(_scores_py)
_scores_seq = numba.njit(cache=True)(_scores_py)
PARALLEL_MIN_USERS = 200_000


@numba.njit(cache=True)
def _keeps_feasible(t, r, takes_min, slack_a, slack_b, check_b):  # pragma: no cover - compiled
    """Would placing a user of level t into a fund of level r keep the remainder feasible?"""
    first = r + 1 if takes_min else 0
    for level in range(first, t + 1):
        if slack_a[level] < 1:
            return False
    if check_b:
        for level in range(r + 1, t + 1):
            if slack_b[level] < 1:
                return False
    return True


@numba.njit(cache=True)
def _place(t, r, takes_min, slack_a, slack_b):  # pragma: no cover - compiled
    first = r + 1 if takes_min else 0
    for level in range(first, t + 1):
        slack_a[level] -= 1
    for level in range(r + 1, t + 1):
        slack_b[level] -= 1


@numba.njit(cache=True)
def _walk(etv, user_level, fund_level, pool, order, top, open_, need, codes, placed, lo_left,
          slack_a, slack_b, safe, check_b):  # pragma: no cover - compiled
    """Place ranked users until a fund fills (lines 11-19). Returns (users placed, rerouted)."""
    k = etv.shape[1]
    done = 0
    rerouted = 0
    for q in range(order.shape[0]):
        p = order[q]
        i = pool[p]
        j = top[p]
        if j < 0:
            continue
        if safe:
            t = user_level[i]
            if not _keeps_feasible(t, fund_level[j], lo_left[j] > 0, slack_a, slack_b, check_b):
                # best other open eligible fund that keeps the rest feasible; ties to the lower index
                j = -1
                best = -np.inf
                for f in range(k):
                    if open_[f] and t >= fund_level[f] and etv[i, f] > best:
                        if _keeps_feasible(t, fund_level[f], lo_left[f] > 0, slack_a, slack_b, check_b):
                            best = etv[i, f]
                            j = f
                if j < 0:
                    continue  # deferred: stays in the pool for a later round
                rerouted += 1
            _place(t, fund_level[j], lo_left[j] > 0, slack_a, slack_b)
        codes[i] = j
        placed[j] += 1
        if lo_left[j] > 0:
            lo_left[j] -= 1
        need[j] -= 1
        done += 1
        if need[j] == 0:
            open_[j] = False
            break
    return done, rerouted


def _until_first_fill(h, top, waiting, need, open_):
    """Positions (into the pool) of the waiting users ranked at or above the first fund to fill."""
    h_w = h[waiting]
    top_w = top[waiting]
    threshold = -np.inf
    fills = False
    for j in np.flatnonzero(open_):
        scores = h_w[top_w == j]
        if scores.size >= need[j]:
            fills = True
            kth = np.partition(scores, scores.size - need[j])[scores.size - need[j]]
            threshold = max(threshold, kth)
    if not fills:
        return waiting
    return waiting[h_w >= threshold]


def algorithm1(compiled, *, safe):
    """Run Algorithm 1 on a :class:`~eoca.problem.CompiledProblem`.

    Demands are met in two phases: first every fund's minimum (the paper's exact demand), then, for range
    demands, the room up to each maximum. Users left once every fund is full receive no fund (holdout).

    Returns
    -------
    codes : ndarray of int32, shape (n_users,)
        Fund index per user, -1 for none.
    stats : dict
        ``rounds`` (re-rankings), ``rerouted`` (safe mode: users sent to another fund than their top one
        to keep the remaining problem feasible), ``stranded`` (users left with no valid fund).
    """
    etv, user_level, fund_level = compiled.etv, compiled.user_level, compiled.fund_level
    demand_min, demand_max, holdout = compiled.demand_min, compiled.demand_max, compiled.holdout
    n, k = etv.shape
    codes = np.full(n, -1, dtype=np.int32)
    placed = np.zeros(k, dtype=np.int64)
    lo_left = np.asarray(demand_min, dtype=np.int64).copy()
    counts = compiled.level_counts()
    slack_a = counts["users_ge"] - counts["min_ge"]  # users to spare above each level
    slack_b = counts["max_lt"] - counts["users_lt"]  # places to spare below each level
    check_b = not holdout
    rounds = 0
    rerouted = 0
    for phase_need in (np.asarray(demand_min, dtype=np.int64), np.asarray(demand_max, dtype=np.int64) - demand_min):
        need = phase_need.copy()
        open_ = need > 0
        while open_.any():
            pool = np.flatnonzero(codes < 0).astype(np.int64)
            if pool.size == 0:
                break
            big = pool.size >= PARALLEL_MIN_USERS
            alpha = (_alpha_par if big else _alpha_seq)(etv, user_level, fund_level, pool, open_,
                                                        np.where(open_, need, 1), 4 * numba.get_num_threads())
            top, h = (_scores_par if big else _scores_seq)(etv, user_level, fund_level, pool, open_, alpha, safe)
            rounds += 1
            done_in_round = 0
            waiting = np.arange(pool.size)
            first = True
            while waiting.size:
                # Only the users ranked above the point where the first fund fills are walked in this round,
                # so sort just them: find, per open fund, the score of the user that would fill it. If
                # rerouting (safe mode) kept that fund from filling, walk all the rest in one go.
                prefix = _until_first_fill(h, top, waiting, need, open_) if first else waiting
                first = False
                # by score; the prefix is in pool order, so the stable sort breaks ties by user position
                order = prefix[np.argsort(-h[prefix], kind="stable")]
                before = int(open_.sum())
                done, moved = _walk(etv, user_level, fund_level, pool, order, top, open_, need, codes, placed,
                                    lo_left, slack_a, slack_b, safe, check_b)
                done_in_round += done
                rerouted += moved
                if int(open_.sum()) < before:
                    break  # a fund filled: re-rank the rest (line 17 of Algorithm 1)
                waiting = waiting[codes[pool[waiting]] < 0]
                waiting = np.setdiff1d(waiting, prefix[codes[pool[prefix]] < 0], assume_unique=True)
            if done_in_round == 0:
                break
    stranded = 0 if holdout else int((codes < 0).sum())
    return codes, {"rounds": rounds, "rerouted": rerouted, "stranded": stranded}
