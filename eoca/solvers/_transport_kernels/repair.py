"""Phase 4 of the exact solve: successive shortest paths on the fund graph, with lazily refilled heaps."""

from __future__ import annotations

import time

import numba as nb
import numpy as np
from numba import njit

from eoca.solvers._transport_kernels.common import (
    _AHEAD,
    NCHUNK,
    NSTATS,
    ST_AUGMENT,
    ST_DIJKSTRA,
    ST_ENTRIES,
    ST_LOADED,
    ST_MOVED,
    ST_REFILL,
    ST_SCANNED,
    STATUS_INFEASIBLE,
    STATUS_OPTIMAL,
    STATUS_TIME_LIMIT,
    _code_level,
    _fetch_row,
    _fetch_user,
)
from eoca.solvers._transport_kernels.heaps import (
    _append,
    _clean_top,
    _full,
    _grow,
    _heapify,
    _load_user,
    _pop,
    _reserve,
    _sift_up_at,
    _val,
)
from eoca.solvers._transport_kernels.select import _kth
from eoca.solvers._tuning import REFILL_SAMPLE


@njit(cache=True, inline="always")
def _code(bnd, lv):
    """Number of entries of the sorted ``bnd`` that are <= lv."""
    a = 0
    b = bnd.shape[0]
    while a < b:
        h = (a + b) >> 1
        if bnd[h] <= lv:
            a = h + 1
        else:
            b = h
    return a


@njit(cache=True)
def _code_table(bnd):
    """Level -> code table (:func:`_code`) over ``t0 - 1 <= lv <= t1 + 1``, where t0 and t1 are the
    smallest and largest entries of the sorted ``bnd`` other than the int32 sentinels: the code is
    constant below t0 and from t1 + 1 up to (not including) the int32 maximum, so ``tab[clip(lv - t0 +
    1, 0, len(tab) - 1)]`` is the code of any level but the int32 maximum. Returns (tab, t0 - 1), or an
    empty table where t1 - t0 exceeds 2**16 (then :func:`_code`, a binary search, is used)."""
    nb_ = bnd.shape[0]
    i0 = 0
    while i0 < nb_ and bnd[i0] == -2147483648:
        i0 += 1
    i1 = nb_
    while i1 > i0 and bnd[i1 - 1] == 2147483647:
        i1 -= 1
    base = np.int64(0)
    T = 1
    if i1 > i0:
        base = np.int64(bnd[i0]) - 1
        T = np.int64(bnd[i1 - 1]) + 2 - base
        if T > 65536:
            T = 0
    tab = np.empty(T, np.int64)
    for x in range(T):
        tab[x] = _code(bnd, base + x)
    return tab, base


@njit(cache=True, inline="always")
def _member_group(lv, assign_i, C, bnd, tab, base, T):
    if T == 0 or lv == 2147483647:
        c = _code(bnd, lv)
    else:
        c = tab[min(max(np.int64(lv) - base, 0), T - 1)]
    return assign_i * C + c


@njit(cache=True, parallel=True)
def _build_members(assign, loaded, K, ulev, bnd, only=-1):
    """Unloaded users grouped by node and, inside a node, by level code (see :func:`_code`; every node
    is allowed to all or none of a code's users), increasing user index inside a group (CSR: group
    ``a * C + c`` with C = len(bnd) + 1). With ``only`` >= 0, the users of that node alone (every other
    node's groups empty). A user's code is one lookup in :func:`_code_table`. Built in parallel over fixed
    chunks of users (each user's group noted and counted, then the users placed at offsets in chunk
    order), so the order is the same for any number of threads."""
    n = assign.shape[0]
    C = bnd.shape[0] + 1
    G = K * C  # < 2**16: K <= 52 nodes, at most 2 * K bounds
    tab, base = _code_table(bnd)
    T = tab.shape[0]
    gid = np.empty(n, np.uint16)  # group of each user (G: moved or not listed, in no group)
    cc = np.zeros((NCHUNK, G + 1), np.int64)
    for ch in nb.prange(NCHUNK):
        i0 = ch * n // NCHUNK
        i1 = (ch + 1) * n // NCHUNK
        L, U, A, GI = loaded[i0:i1], ulev[i0:i1], assign[i0:i1], gid[i0:i1]  # (slices: see _pass_blocks)
        for t in range(i1 - i0):
            listed = L[t] == 0 and (only < 0 or A[t] == only)
            GI[t] = _member_group(U[t], A[t], C, bnd, tab, base, T) if listed else G
        # four interleaved counts: with ``only`` most users share group G, and one counter would make each
        # increment wait for the one before (3x slower)
        loc = np.zeros((4, G + 1), np.int64)
        m = i1 - i0
        for t in range(0, m - 3, 4):
            loc[0, GI[t]] += 1
            loc[1, GI[t + 1]] += 1
            loc[2, GI[t + 2]] += 1
            loc[3, GI[t + 3]] += 1
        for t in range(m - m % 4, m):
            loc[0, GI[t]] += 1
        for g in range(G + 1):
            cc[ch, g] = loc[0, g] + loc[1, g] + loc[2, g] + loc[3, g]
    start = np.zeros(G + 1, np.int64)
    off = np.empty((NCHUNK, G), np.int64)
    for g in range(G):
        run = start[g]
        for ch in range(NCHUNK):
            off[ch, g] = run
            run += cc[ch, g]
        start[g + 1] = run
    mem = np.empty(start[G], np.int32)
    for ch in nb.prange(NCHUNK):
        i0 = ch * n // NCHUNK
        i1 = (ch + 1) * n // NCHUNK
        GI = gid[i0:i1]
        w = off[ch].copy()
        for t in range(i1 - i0):
            g = GI[t]
            if g < G:
                mem[w[g]] = i0 + t
                w[g] += 1
    return start, mem


@njit(cache=True)
def _below(key, u, tk, tu):
    """(key, u) < (tk, tu) lexicographically: whether a never-moved user is in the heap of threshold
    (tk, tu)."""
    return key < tk or (key == tk and u < tu)


@njit(cache=True, parallel=True)
def _refill_scan(etv, lo, hi, loaded, a, b, s0, s1, mem, start, bnd, TK, TU, theta, take_eq, flag):
    """The scan of :func:`_refill` over the never-moved users of node a, in parallel over fixed chunks:
    flags each user (1: some key below its new threshold, 2: its key towards b ties the new threshold,
    decided afterwards in index order; 0: nothing new) and returns, per chunk, the smallest key towards each
    node among the keys that stay out of the heaps, the new entries per node, and the ties towards b. A
    user's allowed nodes come from its group's level code (:func:`_build_members`): its level is not read."""
    k = etv.shape[1]
    K = k + 1
    C = bnd.shape[0] + 1
    na = s1 - s0
    nch = max(1, min(64, na // 8192))
    kapc = np.full((nch, K), np.inf)
    cntc = np.zeros((nch, K + 1), np.int64)
    for c in nb.prange(nch):
        q0 = s0 + c * na // nch
        q1 = s0 + (c + 1) * na // nch
        g = 0  # level code of the group that holds position q
        while start[a * C + g + 1] <= q0 and g < C - 1:
            g += 1
        nxt = start[a * C + g + 1]
        lv = _code_level(bnd, g)
        for q in range(q0, q1):
            while q >= nxt:
                g += 1
                nxt = start[a * C + g + 1]
                lv = _code_level(bnd, g)
            if q + _AHEAD < q1:
                _fetch_row(etv, loaded, mem[q + _AHEAD])
            u = mem[q]
            if loaded[u] != 0:
                flag[q - s0] = 0
                continue
            va = _val(etv, u, a, k)
            fl = 0
            for z in range(K):
                if z != a and lo[z] <= lv and lv < hi[z]:
                    p = a * K + z
                    key = va - _val(etv, u, z, k)
                    if _below(key, u, TK[p], TU[p]):
                        continue
                    if key < theta[z]:
                        fl |= 1
                        cntc[c, z] += 1
                    elif z == b and key == theta[z] and take_eq > 0:
                        fl |= 2
                        cntc[c, K] += 1
                    elif key < kapc[c, z]:
                        kapc[c, z] = key
            flag[q - s0] = fl
    return kapc, cntc




@njit(cache=True)
def _refill(etv, ulev, lo, hi, assign, loaded, a, b, m, start, mem, bnd, kappa, TK, TU, PK, PU, hb, hc, hs, top,
            stats):
    """Raise the load threshold of arc (a, b), and with at most 15 funds of every arc (a, z), so that about
    ``m`` more never-moved users of node a enter heap (a, b) (and about ``max(256, min(m // (K // 4 + 1),
    na // 32))`` (na: users at a) enter each other heap (a, z)), and recompute kappa[a, :] exactly over
    the keys that stay out.

    A never-moved user u at a is in heap (a, z) iff ``(key_az(u), u) < (TK[a, z], TU[a, z])``
    (lexicographically): a user enters only the heaps of the arcs it is cheap for, not every heap of its
    node. The thresholds are quantiles of a systematic sample of the keys (no array of the node's size is
    allocated, and the node is read once more); at most ``m`` users exactly at the new threshold of (a, b)
    are taken, the smallest indices first, so a node of thousands of exactly tied users loads one batch,
    not all of them.

    Only the users of a that may take b are scanned (the level codes of :func:`_build_members` that b
    allows, a contiguous range); the threshold and kappa[a, z] change only for the nodes z that no
    unscanned user of a may take, and kappa is kept (still a lower bound) for the others.
    """
    k = etv.shape[1]
    K = k + 1
    C = bnd.shape[0] + 1
    c_lo = C
    c_hi = 0
    for c in range(1, C):
        if lo[b] <= bnd[c - 1] and bnd[c - 1] < hi[b]:
            c_lo = min(c_lo, c)
            c_hi = c + 1
    if c_lo >= c_hi:
        c_lo = 0
        c_hi = 0
    exact = np.ones(K, np.bool_)
    for c in range(1, C):
        if (c < c_lo or c >= c_hi) and start[a * C + c + 1] > start[a * C + c]:
            for z in range(K):
                if lo[z] <= bnd[c - 1] and bnd[c - 1] < hi[z]:
                    exact[z] = False
    s0 = start[a * C + c_lo]
    s1 = start[a * C + c_hi]
    na = s1 - s0
    stats[ST_REFILL] += 1
    stats[ST_SCANNED] += na
    # (with many funds the extra heap entries cost more than the scans they save)
    m_other = max(256, min(m // (K // 4 + 1), na // 32)) if K <= 16 else 0
    raise_ = np.zeros(K, np.bool_)
    for z in range(K):
        raise_[z] = z != a and exact[z] and (z == b or m_other > 0)
    stride = max(1, na // REFILL_SAMPLE)
    nsamp = (na + stride - 1) // stride  # users the sample below visits
    samp = np.empty((K, max(nsamp, 1)), np.float64)
    ns = np.zeros(K, np.int64)
    nv = np.zeros(K, np.int64)
    for q in range(s0, s1, stride):
        if q + _AHEAD * stride < s1:
            _fetch_user(etv, ulev, loaded, mem[q + _AHEAD * stride])
        u = mem[q]
        if loaded[u] != 0:
            continue
        lv = ulev[u]
        va = _val(etv, u, a, k)
        for z in range(K):
            if raise_[z] and lo[z] <= lv and lv < hi[z]:
                nv[z] += 1
                key = va - _val(etv, u, z, k)
                if not _below(key, u, TK[a * K + z], TU[a * K + z]):
                    samp[z, ns[z]] = key
                    ns[z] += 1
    theta = np.empty(K)
    for z in range(K):
        theta[z] = TK[a * K + z]  # nothing new below it
        if raise_[z] and ns[z] == 0:
            theta[z] = np.inf
        elif raise_[z]:
            mz = m if z == b else m_other
            qi = int(np.ceil(mz / na * nv[z]))
            if qi < ns[z]:
                theta[z] = max(theta[z], _kth(samp[z, : ns[z]], qi))
            else:
                theta[z] = np.inf
    hs0 = np.empty(K, np.int64)
    for z in range(K):
        hs0[z] = hs[a * K + z]
    flag = np.empty(max(na, 1), np.uint8)
    kapc, cntc = _refill_scan(etv, lo, hi, loaded, a, b, s0, s1, mem, start, bnd, TK, TU, theta, m, flag)
    kap = np.full(K, np.inf)
    cnt = np.zeros(K + 1, np.int64)
    for c in range(kapc.shape[0]):
        for z in range(K):
            if kapc[c, z] < kap[z]:
                kap[z] = kapc[c, z]
        for z in range(K + 1):
            cnt[z] += cntc[c, z]
    # new thresholds; ties towards b: the m smallest user indices
    tk_new = np.empty(K)
    tu_new = np.empty(K, np.int64)
    for z in range(K):
        p = a * K + z
        if theta[z] > TK[p]:
            tk_new[z] = theta[z]
            tu_new[z] = -1
        else:
            tk_new[z] = TK[p]
            tu_new[z] = TU[p]
    nt = cnt[K]
    if nt > 0:
        tk_new[b] = theta[b]
        if nt <= m:
            tu_new[b] = 2147483647
            cnt[b] += nt
        else:
            tie = np.empty(nt, np.float64)
            t = 0
            for q in range(s0, s1):
                if flag[q - s0] & 2:
                    tie[t] = mem[q]
                    t += 1
            tu_new[b] = np.int64(_kth(tie, m))
            cnt[b] += m
    for z in range(K):
        if cnt[z] > 0:
            PK, PU = _reserve(PK, PU, hb, hc, hs, top, a * K + z, cnt[z])
    nf = 0
    for q in range(na):
        nf += flag[q] != 0
    sel = np.empty(nf, np.int32)  # the flagged users, listed first so that their rows can be read ahead
    nf = 0
    for q in range(na):
        if flag[q] != 0:
            sel[nf] = mem[s0 + q]
            nf += 1
    for t in range(nf):
        if t + _AHEAD < nf:
            _fetch_user(etv, ulev, loaded, sel[t + _AHEAD])
        u = sel[t]
        lv = ulev[u]
        va = _val(etv, u, a, k)
        new = 0
        for z in range(K):
            if z != a and lo[z] <= lv and lv < hi[z]:
                p = a * K + z
                key = va - _val(etv, u, z, k)
                if _below(key, u, TK[p], TU[p]):
                    continue
                if _below(key, u, tk_new[z], tu_new[z]):
                    _append(PK, PU, hb, hs, p, key, u)
                    new += 1
                elif key < kap[z]:
                    kap[z] = key
        if new > 0:
            stats[ST_LOADED] += 1
            stats[ST_ENTRIES] += new
    for z in range(K):
        if z != a:
            p = a * K + z
            TK[p] = tk_new[z]
            TU[p] = tu_new[z]
            if exact[z]:
                kappa[p] = kap[z]
            if (hs[p] - hs0[z]) * 16 < hs[p]:  # a few new entries: sift them up, else rebuild the heap
                for pos in range(hs0[z], hs[p]):
                    _sift_up_at(PK, PU, hb[p], pos)
            else:
                _heapify(PK, PU, hb, hs, p)
    return PK, PU


@njit(cache=True)
def _excess(c, f, x, k, n):
    if x < k:
        return c[x] - f[x]
    tot = 0
    for j in range(k):
        tot += f[j]
    return c[k] + tot - n


@njit(cache=True, parallel=True)
def _first_load(etv, ulev, lo, hi, assign, cand, TK, off, PK, PU, stats, one_p, one_k):
    """The first load of the repair's heaps, in parallel over fixed chunks of the candidates ``cand``:
    user u at node a goes into heap (a, z) iff its key is below ``TK[a, z]``. Without ``off`` (an empty
    array) it counts the entries per chunk and heap and returns the counts, and notes for each candidate
    with exactly one entry its heap and key in ``one_p`` / ``one_k`` (-1: none, -2: several); with
    ``off`` (the pool position of each chunk's first entry per heap) it writes them there, in candidate
    order (the same pool as a sequential load), reading again only the rows of candidates with several
    entries, and adds the loaded users and entries to ``stats``. The rows of users ``_AHEAD`` candidates
    on are prefetched (they are scattered over the grid)."""
    k = etv.shape[1]
    K = k + 1
    m = cand.shape[0]
    fill = off.shape[0] > 0
    cc = np.zeros((NCHUNK, K * K), np.int64)
    users = np.zeros(NCHUNK, np.int64)
    for ch in nb.prange(NCHUNK):
        q0 = ch * m // NCHUNK
        q1 = (ch + 1) * m // NCHUNK
        for q in range(q0, q1):
            if fill and one_p[q] != -2:  # none or one entry, noted by the count
                p = one_p[q]
                if p >= 0:
                    w = off[ch, p] + cc[ch, p]
                    PK[w] = one_k[q]
                    PU[w] = cand[q]
                    cc[ch, p] += 1
                    users[ch] += 1
                continue
            if q + _AHEAD < q1 and not fill:
                _fetch_user(etv, ulev, assign, cand[q + _AHEAD])
            u = cand[q]
            a = assign[u]
            lv = ulev[u]
            va = _val(etv, u, a, k)
            new = 0
            for z in range(K):
                if z != a and lo[z] <= lv and lv < hi[z]:
                    p = a * K + z
                    key = va - _val(etv, u, z, k)
                    if key < TK[p]:
                        if fill:
                            w = off[ch, p] + cc[ch, p]
                            PK[w] = key
                            PU[w] = u
                        elif new == 0:
                            one_p[q] = p
                            one_k[q] = key
                        cc[ch, p] += 1
                        new += 1
            if not fill and new != 1:
                one_p[q] = -1 if new == 0 else -2
            if new > 0:
                users[ch] += 1
    if fill:
        for ch in range(NCHUNK):
            stats[ST_LOADED] += users[ch]
            for p in range(K * K):
                stats[ST_ENTRIES] += cc[ch, p]
    return cc


@njit(cache=True)
def repair(etv, ulev, lo, hi, dmin, dmax, lam, assign, counts, cand, theta, tol, deadline):
    """Successive shortest paths on the node graph until every node is balanced.

    ``lam`` (k + 1,) and ``assign`` (n,) are updated in place. ``cand`` are the users loaded first: a user
    u at a goes into heap (a, b) iff its reduced key towards b under the entry prices is below
    ``theta[a * (k + 1) + b]``, and every user not in ``cand`` is known to have a reduced key of at least
    that (``tol`` absorbs rounding; inf: no bound, every user is in ``cand``). Returns (status, stats).
    """
    n, k = etv.shape
    K = k + 1
    stats = np.zeros(NSTATS, np.int64)
    inf = np.inf

    # flows to T: at the bound that complementary slackness asks for, else the count clamped into range
    f = np.zeros(K, np.int64)
    for j in range(k):
        d = lam[j] - lam[k]
        if d > 0:
            f[j] = dmax[j]
        elif d < 0:
            f[j] = dmin[j]
        else:
            f[j] = min(max(counts[j], dmin[j]), dmax[j])
    c = counts.copy()

    hb = np.zeros(K * K, np.int64)
    hc = np.zeros(K * K, np.int64)
    hs = np.zeros(K * K, np.int64)
    top = np.zeros(1, np.int64)
    # load thresholds: a never-moved user u at a is in heap (a, b) iff (key_ab(u), u) < (TK, TU)[a, b]
    # lexicographically; the first one is the bound that every non-candidate is known to respect
    kappa = np.full(K * K, inf)
    for a in range(K):
        for b in range(K):
            if a != b and theta[a * K + b] < inf:
                kappa[a * K + b] = theta[a * K + b] + lam[a] - lam[b] - tol
    TK = kappa.copy()
    TU = np.full(K * K, -1, np.int64)
    PK0 = np.empty(0, np.float64)
    PU0 = np.empty(0, np.int32)
    # exact room for the first load, plus slack for users that move
    one_p = np.empty(cand.shape[0], np.int32)
    one_k = np.empty(cand.shape[0], np.float64)
    cc = _first_load(etv, ulev, lo, hi, assign, cand, TK, np.empty((0, 0), np.int64), PK0, PU0, stats, one_p,
                     one_k)
    for p in range(K * K):
        for ch in range(NCHUNK):
            hc[p] += cc[ch, p]
        hc[p] += 16 + hc[p] // 4
        hb[p] = top[0]
        top[0] += hc[p]
    PK = np.empty(top[0] + top[0] // 4, np.float64)
    PU = np.empty(top[0] + top[0] // 4, np.int32)
    loaded = np.zeros(n, np.uint8)  # 1: moved at least once (then in every heap of its node)
    batch = np.zeros(K * K, np.int64)  # last refill size per arc
    off = np.empty((NCHUNK, K * K), np.int64)
    for p in range(K * K):
        run = hb[p]
        for ch in range(NCHUNK):
            off[ch, p] = run
            run += cc[ch, p]
        hs[p] = run - hb[p]
    _first_load(etv, ulev, lo, hi, assign, cand, TK, off, PK, PU, stats, one_p, one_k)
    for p in range(K * K):
        _heapify(PK, PU, hb, hs, p)
    built = False
    start = np.zeros(K + 1, np.int64)
    mem = np.empty(0, np.int32)
    bnd = np.empty(0, np.int32)

    e = np.zeros(K, np.int64)
    dist = np.empty(K)
    done = np.zeros(K, np.bool_)
    pred = np.empty(K, np.int64)
    ptype = np.empty(K, np.int64)  # 0 user arc, 1 user arc known only by its lower bound, 2 j->T, 3 T->j
    path_x = np.empty(K, np.int64)
    path_y = np.empty(K, np.int64)
    path_t = np.empty(K, np.int64)
    path_key = np.empty(K)
    status = STATUS_OPTIMAL
    while True:
        tot = 0
        for j in range(k):
            e[j] = c[j] - f[j]
            tot += f[j]
        e[k] = c[k] + tot - n
        anyex = False
        for x in range(K):
            if e[x] > 0:
                anyex = True
        if not anyex:
            break
        if deadline < inf and (stats[ST_DIJKSTRA] & 63) == 0:
            with nb.objmode(now="float64"):
                now = time.perf_counter()
            if now > deadline:
                status = STATUS_TIME_LIMIT
                break
        stats[ST_DIJKSTRA] += 1
        # ---- Dijkstra from every node with excess to the nearest node with a deficit
        for x in range(K):
            done[x] = False
            pred[x] = -1
            dist[x] = 0.0 if e[x] > 0 else inf
        sink = -1
        big_d = inf
        while True:
            x = -1
            bd = inf
            for y in range(K):
                if not done[y] and dist[y] < bd:
                    bd = dist[y]
                    x = y
            if x < 0:
                break
            done[x] = True
            if e[x] < 0:
                sink = x
                big_d = bd
                break
            for y in range(K):
                if done[y] or y == x:
                    continue
                p = x * K + y
                cost = inf
                typ = -1
                if _clean_top(PK, PU, hb, hs, p, assign, x):
                    tk = PK[hb[p]]
                    t = tk - lam[x] + lam[y]
                    if tk <= kappa[p]:
                        cost = t
                        typ = 0
                    else:
                        cost = kappa[p] - lam[x] + lam[y]
                        typ = 1
                elif kappa[p] < inf:
                    cost = kappa[p] - lam[x] + lam[y]
                    typ = 1
                if cost < 0.0:
                    cost = 0.0
                if y == k and x < k and f[x] < dmax[x]:
                    c2 = lam[k] - lam[x]
                    if c2 < 0.0:
                        c2 = 0.0
                    if c2 <= cost:
                        cost = c2
                        typ = 2
                elif x == k and f[y] > dmin[y]:
                    c2 = lam[y] - lam[k]
                    if c2 < 0.0:
                        c2 = 0.0
                    if c2 <= cost:
                        cost = c2
                        typ = 3
                if typ < 0:
                    continue
                nd = bd + cost
                if nd < dist[y]:
                    dist[y] = nd
                    pred[y] = x
                    ptype[y] = typ
        if sink < 0:
            status = STATUS_INFEASIBLE
            break
        for x in range(K):
            dx = dist[x]
            if not done[x] or dx > big_d:
                dx = big_d
            lam[x] -= dx
        # ---- path, source first
        plen = 0
        y = sink
        while pred[y] >= 0:
            plen += 1
            y = pred[y]
        y = sink
        q = plen - 1
        uncertain = False
        while pred[y] >= 0:
            path_x[q] = pred[y]
            path_y[q] = y
            path_t[q] = ptype[y]
            if ptype[y] == 1:
                uncertain = True
            y = pred[y]
            q -= 1
        src = y
        if uncertain:
            if bnd.shape[0] == 0:
                nbd = 0
                bnd = np.empty(2 * K, np.int32)
                for x in range(K):
                    for v in (lo[x], hi[x]):
                        seen = False
                        for t in range(nbd):
                            if bnd[t] == v:
                                seen = True
                        if not seen:
                            t = nbd
                            while t > 0 and bnd[t - 1] > v:
                                bnd[t] = bnd[t - 1]
                                t -= 1
                            bnd[t] = v
                            nbd += 1
                bnd = bnd[:nbd]
            rem = 0
            for x in range(K):
                if e[x] > 0:
                    rem += e[x]
            for q in range(plen):
                if path_t[q] == 1:
                    p = path_x[q] * K + path_y[q]
                    m = max(4096, 2 * rem, 2 * batch[p])
                    batch[p] = m
                    a = path_x[q]
                    if not built and c[a] * 32 >= n:  # the lists of every node, once
                        start, mem = _build_members(assign, loaded, K, ulev, bnd, np.int64(-1))
                        built = True
                    st_a, mem_a = start, mem
                    if not built:  # a small node (under 1/32 of the users) before any big one: its own list
                        st_a, mem_a = _build_members(assign, loaded, K, ulev, bnd, np.int64(a))
                    PK, PU = _refill(etv, ulev, lo, hi, assign, loaded, a, path_y[q], m, st_a, mem_a, bnd, kappa,
                                     TK, TU, PK, PU, hb, hc, hs, top, stats)
            continue
        # ---- augment one unit at a time while the whole path stays tight
        first = True
        while True:
            if not first:
                if _excess(c, f, src, k, n) <= 0 or _excess(c, f, sink, k, n) >= 0:
                    break
                ok = True
                for q in range(plen):
                    x = path_x[q]
                    y = path_y[q]
                    t = path_t[q]
                    if t == 0:
                        p = x * K + y
                        if not _clean_top(PK, PU, hb, hs, p, assign, x) or PK[hb[p]] != path_key[q]:
                            ok = False
                            break
                    elif t == 2:
                        if f[x] >= dmax[x]:
                            ok = False
                            break
                    else:
                        if f[y] <= dmin[y]:
                            ok = False
                            break
                if not ok:
                    break
            for q in range(plen):
                x = path_x[q]
                y = path_y[q]
                t = path_t[q]
                if t == 0:
                    p = x * K + y
                    if first:
                        path_key[q] = PK[hb[p]]
                    u = PU[hb[p]]
                    _pop(PK, PU, hb, hs, p)
                    if hs[p] > 0:  # the arc's next user: likely the next to move
                        _fetch_user(etv, ulev, assign, PU[hb[p]])
                    assign[u] = y
                    loaded[u] = 1
                    c[x] -= 1
                    c[y] += 1
                    stats[ST_MOVED] += 1
                    if _full(hc, hs, y, K):
                        PK, PU = _grow(PK, PU, hb, hc, hs, top, y, K)
                    _load_user(etv, ulev, lo, hi, u, y, PK, PU, hb, hs, True)
                    stats[ST_ENTRIES] += K - 1
                elif t == 2:
                    f[x] += 1
                else:
                    f[y] -= 1
            stats[ST_AUGMENT] += 1
            first = False
    return status, stats
