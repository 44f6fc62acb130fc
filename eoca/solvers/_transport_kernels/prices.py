"""Phases 3 and 5 of the exact solve: the Newton step's reads of the grid, and the certificate's maxima and violations."""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import njit

from eoca.solvers._transport_kernels.common import _AHEAD, NCHUNK, _fetch_user
from eoca.solvers._transport_kernels.heaps import _val
from eoca.solvers._transport_kernels.repair import _code, _code_table
from eoca.solvers._transport_kernels.select import _pack_runs
from eoca.solvers._tuning import FEW_FUNDS as _FEW_FUNDS


@njit(cache=True, parallel=True)
def best_values(etv, ulev, funds, fund_lo, assign, lam):
    """For each fund j = funds[q]: max over users allowed it (level >= fund_lo[q]) of etv[i, j] - (value of
    i at its fund, 0 where held out: assign -1): the price at which no user prefers a fund that must stay
    empty. Up to ``_FEW_FUNDS`` funds are read one after the other over every user, without branches;
    more in one pass for all of them (in parallel over fixed chunks; a maximum does not depend on the
    order)."""
    n, k = etv.shape
    nf = funds.shape[0]
    out = np.full((NCHUNK, nf), -np.inf)
    for c in nb.prange(NCHUNK):
        s = c * n // NCHUNK
        e = (c + 1) * n // NCHUNK
        E, U, A = etv[s:e], ulev[s:e], assign[s:e]  # (slices: see _pass_blocks)
        if nf <= _FEW_FUNDS:  # branch-free, fund by fund: 1.5x faster than skipping users not allowed
            for q in range(nf):
                f = funds[q]
                fl = fund_lo[q]
                mq = -np.inf
                for t in range(e - s):
                    a = max(A[t], 0)
                    v = E[t, a] - lam[a] if A[t] >= 0 else 0.0
                    d = E[t, f] - v
                    mq = max(mq, d if U[t] >= fl else -np.inf)
                out[c, q] = mq
            continue
        m = np.full(nf, -np.inf)  # many funds: one read of each row
        for t in range(e - s):
            lv = U[t]
            a = A[t]
            v = 0.0 if a < 0 else E[t, a] - lam[a]
            for q in range(nf):
                if lv >= fund_lo[q]:
                    d = E[t, funds[q]] - v
                    if d > m[q]:
                        m[q] = d
        out[c] = m
    res = np.full(nf, -np.inf)
    for c in range(NCHUNK):
        for q in range(nf):
            res[q] = max(res[q], out[c, q])
    return res


@njit(cache=True, parallel=True)
def arc_density(etv, ulev, lo, hi, lam, assign, cand, theta, step):
    """``W[a, z]``: among every ``step``-th user of ``cand``, those at node a whose reduced key towards an
    allowed node z under ``lam`` (``value(a) - lam[a] - value(z) + lam[z]``) is below ``theta``. Every user
    with such a key has a gap below theta, so with ``cand`` every user whose gap is below theta,
    ``step * W / theta`` estimates how many users per unit of price would move from a to z if a's price
    rose against z's. Also returns how many of those users sit at each node. (In parallel over fixed
    chunks; the rows are prefetched.)"""
    k = etv.shape[1]
    K = k + 1
    m = (cand.shape[0] + step - 1) // step
    cc = np.zeros((NCHUNK, K * K + K), np.int64)
    for ch in nb.prange(NCHUNK):
        q0 = ch * m // NCHUNK
        q1 = (ch + 1) * m // NCHUNK
        for q in range(q0, q1):
            if q + _AHEAD < q1:
                _fetch_user(etv, ulev, assign, cand[(q + _AHEAD) * step])
            u = cand[q * step]
            a = assign[u]
            lv = ulev[u]
            cc[ch, K * K + a] += 1
            ra = _val(etv, u, a, k) - lam[a]
            for z in range(K):
                if z != a and lo[z] <= lv and lv < hi[z]:
                    if ra - (_val(etv, u, z, k) - lam[z]) < theta:
                        cc[ch, a * K + z] += 1
    W = np.zeros((K, K), np.int64)
    N = np.zeros(K, np.int64)
    for ch in range(NCHUNK):
        for p in range(K * K):
            W[p // K, p % K] += cc[ch, p]
        for a in range(K):
            N[a] += cc[ch, K * K + a]
    return W, N


@njit(cache=True, parallel=True)
def best_nodes(etv, ulev, lo, hi, lam, assign, cand, old, gap1, below):
    """Move each user of ``cand`` to its best allowed node under ``lam`` (the first of equal ones), in
    place in ``assign``; its former node goes to ``old`` and the gap to its second-best node under
    ``lam`` to ``gap1`` (float64), which is below ``below[node]`` for the users returned second.
    Returns (the change of the node counts, those users in the order of ``cand``). (In parallel over
    fixed chunks; the rows are prefetched.)"""
    k = etv.shape[1]
    K = k + 1
    m = cand.shape[0]
    cc = np.zeros((NCHUNK, K + 1), np.int64)
    for ch in nb.prange(NCHUNK):
        q0 = ch * m // NCHUNK
        q1 = (ch + 1) * m // NCHUNK
        for q in range(q0, q1):
            if q + _AHEAD < q1:
                _fetch_user(etv, ulev, assign, cand[q + _AHEAD])
            u = cand[q]
            lv = ulev[u]
            b1 = -np.inf
            b2 = -np.inf
            j1 = assign[u]
            for z in range(K):
                if lo[z] <= lv and lv < hi[z]:
                    v = _val(etv, u, z, k) - lam[z]
                    if v > b1:
                        b2 = b1
                        b1 = v
                        j1 = z
                    elif v > b2:
                        b2 = v
            old[q] = assign[u]
            cc[ch, assign[u]] -= 1
            cc[ch, j1] += 1
            assign[u] = j1
            gap1[q] = b1 - b2
            cc[ch, K] += b1 - b2 < below[j1]
    d = np.zeros(K, np.int64)
    off = np.zeros(NCHUNK + 1, np.int64)
    for ch in range(NCHUNK):
        for z in range(K):
            d[z] += cc[ch, z]
        off[ch + 1] = off[ch] + cc[ch, K]
    first = np.empty(off[NCHUNK], np.int32)
    for ch in nb.prange(NCHUNK):
        w = off[ch]
        for q in range(ch * m // NCHUNK, (ch + 1) * m // NCHUNK):
            if gap1[q] < below[assign[cand[q]]]:
                first[w] = cand[q]
                w += 1
    return d, first


@njit(cache=True, parallel=True)
def gaps_below_node(gap, gap2, assign, limit, limit2, most, limit1):
    """Users whose gaps from the pass are below the limits of their node, ``gap[i] < limit[assign[i]]``
    or, with second gaps (``gap2`` not empty), ``gap2[i] <= limit2[assign[i]]`` (both as the pass stores
    them: see :func:`gap16`), in increasing order, or None if there are more than ``most``; and how many
    users have ``gap[i] < limit1[assign[i]]`` (the users one gap would read). (Flagged and counted, then
    collected from the flags, in parallel over fixed chunks.)"""
    n = gap.shape[0]
    two = gap2.shape[0] > 0
    flag = np.empty(n, np.uint8)
    cnt = np.zeros(NCHUNK + 1, np.int64)
    one = np.zeros(NCHUNK, np.int64)
    for c in nb.prange(NCHUNK):
        i0 = c * n // NCHUNK
        i1 = (c + 1) * n // NCHUNK
        G, A, F = gap[i0:i1], assign[i0:i1], flag[i0:i1]  # (slices: see _pass_blocks)
        m = 0
        m1 = 0
        if two:
            G2 = gap2[i0:i1]
            for t in range(i1 - i0):
                a = A[t]
                x = (G[t] < limit[a]) | (G2[t] <= limit2[a])
                F[t] = x
                m += x
                m1 += G[t] < limit1[a]
        else:
            for t in range(i1 - i0):
                x = G[t] < limit[A[t]]
                F[t] = x
                m += x
            m1 = m
        cnt[c + 1] = m
        one[c] = m1
    for c in range(NCHUNK):
        cnt[c + 1] += cnt[c]
    if cnt[NCHUNK] > most:
        return None, one.sum()
    tmp = np.empty(cnt[NCHUNK] + NCHUNK, np.int32)  # one slot of slack per chunk: see _select_by_bins
    for c in nb.prange(NCHUNK):
        i0 = c * n // NCHUNK
        F = flag[i0:(c + 1) * n // NCHUNK]
        w = cnt[c] + c
        for t in range(F.shape[0]):
            tmp[w] = i0 + t
            w += F[t]
    return _pack_runs(tmp, cnt), one.sum()


@njit(cache=True, parallel=True)
def to_output(assign, k):
    """Node T becomes -1 in place."""
    n = assign.shape[0]
    for c in nb.prange(NCHUNK):
        A = assign[c * n // NCHUNK:(c + 1) * n // NCHUNK]  # (a slice: see _pass_blocks)
        for t in range(A.shape[0]):
            if A[t] == k:
                A[t] = -1


@njit(cache=True, parallel=True)
def level_counts(ulev, levels):
    """Users per code, code = number of entries of the sorted ``levels`` that are <= the user's level (a
    table lookup, see :func:`_code_table`; a binary search where the levels span more than 2**16)."""
    n = ulev.shape[0]
    m = levels.shape[0]
    tab, base = _code_table(levels)
    T = tab.shape[0]
    cnt = np.zeros((NCHUNK, m + 1), np.int64)
    for c in nb.prange(NCHUNK):
        U = ulev[c * n // NCHUNK:(c + 1) * n // NCHUNK]  # (a slice: see _pass_blocks)
        for t in range(U.shape[0]):
            lv = U[t]
            if T == 0 or lv == 2147483647:
                a = _code(levels, lv)
            else:
                a = tab[min(max(np.int64(lv) - base, 0), T - 1)]
            cnt[c, a] += 1
    out = np.zeros(m + 1, np.int64)
    for c in range(NCHUNK):
        for j in range(m + 1):
            out[j] += cnt[c, j]
    return out


@njit(cache=True, parallel=True)
def block_violations(etv, ulev, tight, node_block, node_lo, assign, prices):
    """For the blocks of users split by the sorted ``tight`` risk levels (block b: tight[b-1] <= level <
    tight[b]), M[b, b'] = max over users u of block b and nodes x of a lower block b' that u may take under
    the original risk rule (``node_lo[x] <= level``) of ``(value(u, x) - prices[x]) - (value(u, a_u) -
    prices[a_u])``: how much the prices must drop for block b (relative to b') so that no user would rather
    take a node that the tight levels forbid. Node k (held out) has value 0 and price ``prices[k]``.
    (In parallel over fixed chunks; a maximum does not depend on the order.)"""
    n, k = etv.shape
    K = k + 1
    nb_ = tight.shape[0] + 1
    Mc = np.full((NCHUNK, nb_, nb_), -np.inf)
    for c in nb.prange(NCHUNK):
        i0 = c * n // NCHUNK
        i1 = (c + 1) * n // NCHUNK
        E, U, A = etv[i0:i1], ulev[i0:i1], assign[i0:i1]  # (slices: see _pass_blocks)
        for t in range(i1 - i0):
            lv = U[t]
            b = 0
            while b < nb_ - 1 and tight[b] <= lv:
                b += 1
            if b == 0:
                continue
            a = A[t]
            cur = _val(E, t, a, k) - prices[a]
            for x in range(K):
                bx = node_block[x]
                if 0 <= bx < b and node_lo[x] <= lv:
                    d = (_val(E, t, x, k) - prices[x]) - cur
                    if d > Mc[c, b, bx]:
                        Mc[c, b, bx] = d
    M = np.full((nb_, nb_), -np.inf)
    for c in range(NCHUNK):
        for b in range(nb_):
            for b2 in range(nb_):
                if Mc[c, b, b2] > M[b, b2]:
                    M[b, b2] = Mc[c, b, b2]
    return M


# ---- certificate of an assignment over a block of users (the distributed solve's verification) ----------


@njit(cache=True, nogil=True)
def violations(etv, ulev, lo, hi, lam, assign, rtol):  # pragma: no cover - compiled
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


@njit(cache=True, nogil=True)
def closed_best(etv, ulev, closed, closed_lv, node_block, nb, assign, p):  # pragma: no cover - compiled
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
