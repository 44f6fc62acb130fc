"""Phase 2 of the exact solve, the pass: every user of a block at its best node under given prices, with its gaps."""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import njit

from eoca.solvers._transport_kernels.common import GAP2_INF, PASS_BLOCK, TIED, _open_nodes
from eoca.solvers._tuning import GAP_BINS, PASS_SWEEP


@njit(cache=True)
def _pass_rare(etv, ulev, lo, hi, lam, assign, gap, gap2, bc, blk, s, rare, nrare, j1, b1, open_idx, nopen,
               lamabs, smax, tied):
    """The users of one sweep of :func:`_pass_blocks` without any allowed node, or whose best nodes tie.
    (A function of its own: inside the sweep's function it keeps the compiler from vectorising the
    sweep, which then runs 2.5x slower.) ``tied`` holds the tied nodes' bitmask of every user of the
    sweep where the sweep computed them (many tied users), else it is empty and each rare user's row is
    read again here. Returns the updated max |best|."""
    k = etv.shape[1]
    K = k + 1
    enc = K <= 25  # tied nodes and best node fit in the marker
    for r in range(nrare):
        t = rare[r]
        i = s + t
        best = np.int64(j1[t])
        if best < 0:
            bc[blk, K + 1] += 1
            assign[i] = k
            gap[i] = np.inf
            if gap2.shape[0] > 0:
                gap2[i] = GAP2_INF
            continue
        v1 = b1[t]
        ab = abs(v1)
        smax = max(smax, ab)
        ttol = 1e-12 * (ab + lamabs)
        code = 0
        if enc and tied.shape[0] > 0:
            code = tied[t] | (best << K)
        elif enc:
            lv = ulev[i]
            lim = v1 - ttol
            for q in range(nopen):
                x = open_idx[q]
                if lo[x] <= lv and lv < hi[x]:
                    if ((etv[i, x] if x < k else 0.0) - lam[x]) >= lim:
                        code |= 1 << x
            code |= best << K
        assign[i] = TIED - code
        gap[i] = 0.0
        if gap2.shape[0] > 0:
            gap2[i] = 0
        bc[blk, K] += 1
    return smax




@njit(cache=True, inline="always")
def _gap_bin(bits):
    """Bin of a gap >= 0 given its float32 bits: increasing with the gap, each bin spans 1/8 of an octave
    (all of [0, smallest normal) is bin 0, +inf is bin 2040)."""
    return (bits & np.uint32(0x7FFFFFFF)) >> np.uint32(20)


@njit(cache=True, parallel=True)
def _pass_blocks(etv, ulev, lo, hi, lam, assign, gap, grp, gap2):
    """Phase 1 of :func:`assign_pass`, in parallel over fixed blocks of users: every user whose best node
    is unique goes there; a tied user is marked ``TIED`` (gap 0). Returns per-block counts (nblk, K + 2):
    users per node, then tied users, then users without any allowed node; and per-block max |best|.

    The best and second-best values of ``PASS_SWEEP`` users at a time are swept node by node, without
    branches (a node a user may not take counts as -inf): the users are independent lanes that the
    compiler vectorises, where a scan user by user would wait on each comparison and mispredict which
    node wins. The tied nodes are found by a second read of the row, for tied users only, or, where a
    sweep holds many tied users (a degenerate grid), by one more branch-free sweep over its columns."""
    n, k = etv.shape
    K = k + 1
    open_idx, nopen, lamabs = _open_nodes(lo, hi, lam)
    two = gap2.shape[0] > 0
    nblk = (n + PASS_BLOCK - 1) // PASS_BLOCK
    bc = np.zeros((nblk, K + 2), np.int64)
    bmax = np.zeros(nblk)
    hist = np.zeros((nblk, GAP_BINS), np.int32)
    for blk in nb.prange(nblk):
        s0 = blk * PASS_BLOCK
        e0 = min(n, s0 + PASS_BLOCK)
        smax = 0.0
        b1 = np.empty(PASS_SWEEP)
        b2 = np.empty(PASS_SWEEP)
        j1 = np.empty(PASS_SWEEP)  # best node, as a float: lanes as wide as the values' vectorise better
        g1 = np.empty(PASS_SWEEP)  # the best node's group
        bo = np.empty(PASS_SWEEP)  # best value at a node of another group than the best node's
        g2f = np.empty(PASS_SWEEP, np.float32)
        g2b = g2f.view(np.uint32)
        lvf = np.empty(PASS_SWEEP)  # levels as floats (every int32 is exact), for the same reason
        cols = np.empty((K, PASS_SWEEP))  # the sweep's rows, transposed: each node's values contiguous
        cols[k] = 0.0  # T: value 0 for every user
        rare = np.empty(PASS_SWEEP, np.int64)
        tied = np.empty(PASS_SWEEP, np.int64)
        lim = np.empty(PASS_SWEEP)
        for s in range(s0, e0, PASS_SWEEP):
            m = min(PASS_SWEEP, e0 - s)
            # the sweep's rows through slices: an index known to be >= 0 needs no negative-index fix-up,
            # which would keep these loops from vectorising
            E = etv[s:s + m]
            U = ulev[s:s + m]
            A = assign[s:s + m]
            G = gap[s:s + m]
            for x in range(k):  # column by column: each store stream contiguous (2x faster than row by row)
                cx = cols[x]
                for t in range(m):
                    cx[t] = E[t, x]
            for t in range(m):
                b1[t] = -np.inf
                b2[t] = -np.inf
                bo[t] = -np.inf
                j1[t] = -1.0
                g1[t] = -1.0
                lvf[t] = U[t]
            for q in range(nopen):  # increasing node order: the first best node wins, as in a scan
                x = open_idx[q]
                lx = float(lo[x])
                hx = float(hi[x])
                lmx = lam[x]
                fx = float(x)
                col = cols[x]  # (T's: zeros)
                # two copies of the sweep: the second gap's two more selects per lane cost the pass ~10%
                # where it is not asked for
                if two:
                    gx = grp[x]
                    for t in range(m):
                        lv = lvf[t]
                        v = col[t] - lmx
                        v = v if (lx <= lv) & (lv < hx) else -np.inf
                        c1 = b1[t]
                        gt = v > c1
                        j1[t] = fx if gt else j1[t]
                        lo2 = v if v < c1 else c1
                        b2[t] = lo2 if lo2 > b2[t] else b2[t]
                        b1[t] = v if gt else c1
                        # the lower of (v, old best) is at another group than the new best iff x's group
                        # differs from the old best's
                        bo[t] = lo2 if (gx != g1[t]) & (lo2 > bo[t]) else bo[t]
                        g1[t] = gx if gt else g1[t]
                else:
                    for t in range(m):
                        lv = lvf[t]
                        v = col[t] - lmx
                        v = v if (lx <= lv) & (lv < hx) else -np.inf
                        c1 = b1[t]
                        gt = v > c1
                        j1[t] = fx if gt else j1[t]
                        lo2 = v if v < c1 else c1
                        b2[t] = lo2 if lo2 > b2[t] else b2[t]
                        b1[t] = v if gt else c1
            if two:
                G2 = gap2[s:s + m]
                for t in range(m):
                    g2f[t] = b1[t] - bo[t]
                for t in range(m):  # the float32's top 16 bits (tied users: overwritten with 0 below)
                    G2[t] = np.uint16(g2b[t] >> np.uint32(16))
            nrare = 0
            for t in range(m):  # the common case, kept simple so that it stays fast
                best = np.int64(j1[t])
                v1 = b1[t]
                g = v1 - b2[t]
                ab = abs(v1)
                if best < 0 or g <= 1e-12 * (ab + lamabs):
                    rare[nrare] = t
                    nrare += 1
                    continue
                smax = max(smax, ab)
                A[t] = best
                G[t] = g
                bc[blk, best] += 1
            if nrare * 8 > m and K <= 25:
                # many tied users (a degenerate grid): their tied nodes in one more branch-free sweep, as a
                # bitmask per user (the same comparisons as the per-user loop of _pass_rare)
                for t in range(m):
                    lim[t] = b1[t] - 1e-12 * (abs(b1[t]) + lamabs)
                    tied[t] = 0
                for q in range(nopen):
                    x = open_idx[q]
                    lx = float(lo[x])
                    hx = float(hi[x])
                    lmx = lam[x]
                    bit = np.int64(1) << x
                    col = cols[x]
                    for t in range(m):
                        lv = lvf[t]
                        hit = (lx <= lv) & (lv < hx) & (col[t] - lmx >= lim[t])
                        tied[t] |= bit if hit else 0
                smax = _pass_rare(etv, ulev, lo, hi, lam, assign, gap, gap2, bc, np.int64(blk), np.int64(s), rare,
                                  np.int64(nrare), j1, b1, open_idx, np.int64(nopen), lamabs, smax, tied)
            elif nrare > 0:
                # integers cast at both calls: otherwise numba types them apart per call (a literal, the
                # loop's unsigned index) and compiles _pass_rare three times over
                smax = _pass_rare(etv, ulev, lo, hi, lam, assign, gap, gap2, bc, np.int64(blk), np.int64(s), rare,
                                  np.int64(nrare), j1, b1, open_idx, np.int64(nopen), lamabs, smax, tied[:0])
        bmax[blk] = smax
        bits = gap[s0:e0].view(np.uint32)
        for i in range(e0 - s0):
            hist[blk, _gap_bin(bits[i])] += 1
    return bc, bmax, hist


@njit(cache=True)
def _prefault(buf):
    """Write one byte per 4 KiB page of a new array, in one thread: the kernel then maps its pages here,
    where a parallel first write from several threads at once was measured to stall (by up to 20x)."""
    for i in range(0, buf.shape[0], 4096):
        buf[i] = 0


@njit(cache=True)
def _spread_ties(etv, ulev, lo, hi, lam, target, assign, counts, bc):
    """Phase 2 of :func:`assign_pass`, sequential over the tied users only, in index order."""
    n, k = etv.shape
    K = k + 1
    open_idx, nopen, lamabs = _open_nodes(lo, hi, lam)
    red = np.empty(K)
    for blk in range(bc.shape[0]):
        if bc[blk, K] == 0:
            continue
        s = blk * PASS_BLOCK
        e = min(n, s + PASS_BLOCK)
        for i in range(s, e):
            code = TIED - assign[i]
            if code < 0:
                continue
            if code > 0:  # tied nodes and best node encoded by phase 1: no need to read the row
                mask = code & ((1 << K) - 1)
                best = code >> K
                for q in range(nopen):
                    x = open_idx[q]
                    if (mask >> x) & 1 and x != best:
                        tx = target[x]
                        tb = target[best]
                        if tx > 0 and (tb <= 0 or counts[x] * tb < counts[best] * tx or
                                       (counts[x] * tb == counts[best] * tx and x < best)):
                            best = x
                assign[i] = best
                counts[best] += 1
                continue
            lv = ulev[i]
            b1 = -np.inf
            j1 = -1
            for q in range(nopen):
                x = open_idx[q]
                if lo[x] <= lv and lv < hi[x]:
                    v = (etv[i, x] if x < k else 0.0) - lam[x]
                    red[x] = v
                    if v > b1:
                        b1 = v
                        j1 = x
                else:
                    red[x] = -np.inf
            lim = b1 - 1e-12 * (abs(b1) + lamabs)
            best = j1
            for q in range(nopen):
                x = open_idx[q]
                if red[x] >= lim and x != best:
                    tx = target[x]
                    tb = target[best]
                    if tx > 0 and (tb <= 0 or counts[x] * tb < counts[best] * tx or
                                   (counts[x] * tb == counts[best] * tx and x < best)):
                        best = x
            assign[i] = best
            counts[best] += 1


def assign_pass(etv, ulev, lo, hi, lam, target, grp=None):
    """Best node of every user under ``lam``, the gap to its second-best node, and counts per node.

    Phase 1 (parallel over fixed blocks of users) places every user whose best node is unique. Users
    whose best nodes tie (within a relative 1e-12, which absorbs the rounding of prices built from sums of
    ETV differences) are then spread, in index order, over the tied nodes: each goes to the tied node
    whose count is furthest below ``target`` (smallest count / target, ties to the lowest index), counts
    starting from the untied users, so that on degenerate grids the imbalance left to the repair is small
    instead of piling every tied user on one node. A tied user's gap is 0. The output does not depend on
    the number of threads. Returns (assign, gap (float32), counts, number of users without any allowed
    node, max |best reduced value|, per-block histogram of the gaps for :func:`select_initial`).

    With ``grp`` (a group number per node), each user's second gap is returned too: to its best node in
    another group than its node's (0 for a tied user, +inf where none is allowed), as the top 16 bits
    of its float32 (:func:`gap16`: a lower bound within 1%, half the bytes). It costs the pass about 15%.
    """
    n = etv.shape[0]
    K = lo.shape[0]
    assign = np.empty(n, np.int32)
    gap = np.empty(n, np.float32)
    _prefault(assign.view(np.uint8))
    _prefault(gap.view(np.uint8))
    gap2 = np.empty(n if grp is not None else 0, np.uint16)
    _prefault(gap2.view(np.uint8))
    groups = np.zeros(K) if grp is None else np.asarray(grp, np.float64)
    bc, bmax, hist = _pass_blocks(etv, ulev, lo, hi, lam, assign, gap, groups, gap2)
    tot = bc.sum(axis=0)
    counts = np.ascontiguousarray(tot[:K])
    if tot[K] > 0:
        _spread_ties(etv, ulev, lo, hi, lam, target, assign, counts, bc)
    smax = float(bmax.max()) if bmax.shape[0] else 0.0
    if grp is not None:
        return assign, gap, counts, int(tot[K + 1]), smax, hist, gap2
    return assign, gap, counts, int(tot[K + 1]), smax, hist
