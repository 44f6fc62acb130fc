"""Binary heaps of (key, user) per ordered node pair, in one pool: the repair's candidate moves."""

from __future__ import annotations

import numpy as np
from numba import njit

# binary heaps of (key, user), lexicographic, one per ordered node pair p = a * K + b. All heaps live in one
# pool (PK keys, PU users); heap p occupies PK[hb[p] : hb[p] + hc[p]] and holds hs[p] entries. A full heap
# moves to the end of the pool with twice the room (the pool itself doubles when needed).


@njit(cache=True, inline="always")
def _less(k1, u1, k2, u2):
    return k1 < k2 or (k1 == k2 and u1 < u2)


@njit(cache=True)
def _sift_down(PK, PU, base, size, pos):
    k0 = PK[base + pos]
    u0 = PU[base + pos]
    while True:
        c = 2 * pos + 1
        if c >= size:
            break
        if c + 1 < size and _less(PK[base + c + 1], PU[base + c + 1], PK[base + c], PU[base + c]):
            c += 1
        if _less(PK[base + c], PU[base + c], k0, u0):
            PK[base + pos] = PK[base + c]
            PU[base + pos] = PU[base + c]
            pos = c
        else:
            break
    PK[base + pos] = k0
    PU[base + pos] = u0


@njit(cache=True)
def _heapify(PK, PU, hb, hs, p):
    for pos in range(hs[p] // 2 - 1, -1, -1):
        _sift_down(PK, PU, hb[p], hs[p], pos)


@njit(cache=True)
def _pop(PK, PU, hb, hs, p):
    s = hs[p] - 1
    hs[p] = s
    if s > 0:
        base = hb[p]
        PK[base] = PK[base + s]
        PU[base] = PU[base + s]
        _sift_down(PK, PU, base, s, 0)


@njit(cache=True)
def _reserve(PK, PU, hb, hc, hs, top, p, extra):
    """Room for ``extra`` more entries in heap p; returns the (possibly reallocated) pool."""
    need = hs[p] + extra
    if need <= hc[p]:
        return PK, PU
    cap = max(16, 2 * hc[p], need)
    if top[0] + cap > PK.shape[0]:
        # first close the holes left by heaps that moved (slide every heap down, in order of position)
        H = hb.shape[0]
        order = np.arange(H)
        for i in range(1, H):
            v = order[i]
            j = i - 1
            while j >= 0 and hb[order[j]] > hb[v]:
                order[j + 1] = order[j]
                j -= 1
            order[j + 1] = v
        pos = 0
        for t in range(H):
            q = order[t]
            b = hb[q]
            if b != pos:
                for r in range(hs[q]):
                    PK[pos + r] = PK[b + r]
                    PU[pos + r] = PU[b + r]
                hb[q] = pos
            pos += hc[q]
        top[0] = pos
    if top[0] + cap > PK.shape[0]:
        size = max(PK.shape[0] + PK.shape[0] // 2, top[0] + cap)
        nk = np.empty(size, np.float64)
        nu = np.empty(size, np.int32)
        nk[: top[0]] = PK[: top[0]]
        nu[: top[0]] = PU[: top[0]]
        PK = nk
        PU = nu
    b0 = hb[p]
    b1 = top[0]
    for q in range(hs[p]):
        PK[b1 + q] = PK[b0 + q]
        PU[b1 + q] = PU[b0 + q]
    hb[p] = b1
    hc[p] = cap
    top[0] = b1 + cap
    return PK, PU


@njit(cache=True)
def _append(PK, PU, hb, hs, p, key, user):
    """Append without restoring heap order (room reserved by the caller)."""
    q = hb[p] + hs[p]
    PK[q] = key
    PU[q] = user
    hs[p] += 1


@njit(cache=True)
def _sift_up(PK, PU, hb, hs, p):
    _sift_up_at(PK, PU, hb[p], hs[p] - 1)


@njit(cache=True)
def _sift_up_at(PK, PU, base, pos):
    key = PK[base + pos]
    user = PU[base + pos]
    while pos > 0:
        par = (pos - 1) // 2
        if _less(key, user, PK[base + par], PU[base + par]):
            PK[base + pos] = PK[base + par]
            PU[base + pos] = PU[base + par]
            pos = par
        else:
            break
    PK[base + pos] = key
    PU[base + pos] = user


@njit(cache=True)
def _clean_top(PK, PU, hb, hs, p, assign, a):
    """Drop stale entries (users no longer at a); True if a live entry is on top."""
    while hs[p] > 0:
        if assign[PU[hb[p]]] == a:
            return True
        _pop(PK, PU, hb, hs, p)
    return False


@njit(cache=True, inline="always")
def _val(etv, u, x, k):
    if x < k:
        return etv[u, x]
    return 0.0


@njit(cache=True)
def _full(hc, hs, a, K):
    for z in range(K):
        if hs[a * K + z] >= hc[a * K + z]:
            return True
    return False


@njit(cache=True)
def _grow(PK, PU, hb, hc, hs, top, a, K):
    """Room for one more entry in every heap (a, z). (Returns the pool: keep array returns off hot paths,
    they are slow in numba.)"""
    for z in range(K):
        p = a * K + z
        if hs[p] >= hc[p]:
            PK, PU = _reserve(PK, PU, hb, hc, hs, top, p, np.int64(1))  # (one specialization)
    return PK, PU


@njit(cache=True)
def _load_user(etv, ulev, lo, hi, u, a, PK, PU, hb, hs, sift):
    """Put user u (sitting at node a) into every heap (a, z) for the nodes z it may use; the caller has
    made room (``_full`` / ``_grow``)."""
    k = etv.shape[1]
    K = k + 1
    lv = ulev[u]
    va = _val(etv, u, a, k)
    for z in range(K):
        if z != a and lo[z] <= lv and lv < hi[z]:
            p = a * K + z
            _append(PK, PU, hb, hs, p, va - _val(etv, u, z, k), u)
            if sift:
                _sift_up(PK, PU, hb, hs, p)
