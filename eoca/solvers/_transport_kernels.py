"""Numba kernels of the exact transportation solver (see ``_transport.py`` for the algorithm).

Nodes are the k funds plus a sink node ``T = k`` with fixed value 0 for every user. T carries the users
that are held out (``holdout=True``) and the slack of demand ranges: fund j sends ``f_j`` units to T with
``min_j <= f_j <= max_j``. Node prices ``lam`` (length k + 1) are Johnson potentials; only differences
matter and the driver reports ``lam[j] - lam[T]``.

User u may sit at node x iff ``lo[x] <= user_level[u] < hi[x]``. Every user always sits at an argmax of
``value(u, x) - lam[x]`` over the nodes it may use (reduced-cost optimality); the repair moves users along
shortest paths of the fund graph until every imbalance is zero.

Arc a -> b (move one user from a to b) costs ``min_u key_ab(u) - lam[a] + lam[b]`` with the price-free
``key_ab(u) = value(u, a) - value(u, b)``. Its candidate users live in a binary heap ordered by
``(key, user index)`` (lazy deletion: an entry is live iff the user still sits at a). A user that has
moved is in every heap of its node; a never-moved user u at a is in heap (a, b) iff ``(key_ab(u), u) <
(TK, TU)[a, b]`` (a load threshold per arc, raised by refills), so a user enters only the heaps of the
arcs it is cheap for, not all k of its node's heaps (the heaps are the memory on top of the grid). Users
of a not in heap (a, b) satisfy ``key_ab(u) >= kappa[a, b]``; so ``kappa`` gives a lower bound on the part
of an arc that is not loaded, and an arc whose heap top is ``<= kappa`` is known exactly.
"""

from __future__ import annotations

import math
import time

import numba as nb
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

NCHUNK = 64  # fixed work split: results never depend on the number of threads
_AHEAD = 16  # users ahead whose row, level and flags the scans of scattered users ask the CPU to fetch

# statistics counters (indices into the int64 stats vector returned by ``repair``)
ST_DIJKSTRA = 0
ST_AUGMENT = 1
ST_MOVED = 2
ST_REFILL = 3
ST_LOADED = 4
ST_SCANNED = 5
ST_ENTRIES = 6
NSTATS = 7

STATUS_OPTIMAL = 0
STATUS_TIME_LIMIT = 1
STATUS_INFEASIBLE = 2


PASS_BLOCK = 32768  # users per block of the parallel pass (fixed: the output never depends on threads)
TIED = -2  # assign marker (TIED - code) of a user whose best nodes tie, between the two phases of the pass;
# code = bitmask of the tied nodes + (best node << K) when K <= 25, else 0 (phase 2 reads the row again)


GAP2_INF = np.uint16(0x7F80)  # +inf as a second gap (see gap16)


def gap16(x):
    """The top 16 bits of float32 ``x`` (>= 0), as the pass stores second gaps: a stored value ``s`` and a
    limit ``L`` have ``gap < L`` only if ``s <= gap16(L)``, and ``gap > L`` where ``s > gap16(L)``."""
    return (np.asarray(x, np.float32).view(np.uint32) >> np.uint32(16)).astype(np.uint16)


@intrinsic
def _prefetch(typingctx, arr, i, j):
    """Ask the CPU to start fetching ``arr[i, j]`` (``arr[i]`` for a 1-D array; ``j`` is then ignored) into
    its caches, without waiting for it and without any effect on results (LLVM's ``prefetch``). The
    scans over users scattered over the grid issue this for a user some way ahead: their cache misses
    then overlap instead of each stalling the scan in turn (measured: 3x faster scans of a node's users)."""
    if not (isinstance(arr, types.Array) and isinstance(i, types.Integer) and isinstance(j, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        inds = [context.cast(builder, args[1], signature.args[1], types.intp)]
        if aryty.ndim == 2:
            inds.append(context.cast(builder, args[2], signature.args[2], types.intp))
        inds += [context.get_constant(types.intp, 0)] * (aryty.ndim - len(inds))
        ptr = cgutils.get_item_pointer2(context, builder, ary.data, cgutils.unpack_tuple(builder, ary.shape),
                                        cgutils.unpack_tuple(builder, ary.strides), aryty.layout, inds,
                                        wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        # read access, keep in all cache levels, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, i, j), codegen


@njit(cache=True, inline="always")
def _fetch_row(etv, flags, u):
    """:func:`_prefetch` user u's row (every 64 bytes and its end: a row may straddle cache lines) and
    flag."""
    for j in range(0, etv.shape[1], 8):
        _prefetch(etv, u, j)
    _prefetch(etv, u, etv.shape[1] - 1)
    _prefetch(flags, u, 0)


@njit(cache=True, inline="always")
def _fetch_user(etv, ulev, flags, u):
    """:func:`_fetch_row`, and user u's level."""
    _fetch_row(etv, flags, u)
    _prefetch(ulev, u, 0)


@njit(cache=True, inline="always")
def _code_level(bnd, c):
    """A level of code c (:func:`_code`): every level of a code may take the same nodes, as the codes'
    bounds ``bnd`` hold every node's ``lo`` and ``hi``."""
    return np.int64(bnd[c - 1]) if c > 0 else np.int64(bnd[0]) - 1


@njit(cache=True, inline="always")
def _open_nodes(lo, hi, lam):
    K = lo.shape[0]
    open_idx = np.empty(K, np.int64)
    nopen = 0
    lamabs = 0.0
    for x in range(K):
        if lo[x] < hi[x]:
            open_idx[nopen] = x
            nopen += 1
            lamabs = max(lamabs, abs(lam[x]))
    return open_idx, nopen, lamabs


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


PASS_SWEEP = 320  # users whose best and second-best values are swept column by column together (the
# sweep's rows and columns stay in the core's cache: 512 was 25% slower)
GAP_BINS = 2048  # histogram of the gaps by their float32 exponent and 3 leading mantissa bits


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
                smax = _pass_rare(etv, ulev, lo, hi, lam, assign, gap, gap2, bc, blk, s, rare, nrare, j1, b1,
                                  open_idx, nopen, lamabs, smax, tied)
            elif nrare > 0:
                smax = _pass_rare(etv, ulev, lo, hi, lam, assign, gap, gap2, bc, blk, s, rare, nrare, j1, b1,
                                  open_idx, nopen, lamabs, smax, tied[:0])
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


@njit(cache=True)
def _kth(a, q):
    """q-th smallest entry of ``a`` (reordered in place): quickselect with a median-of-three pivot. (Far
    cheaper to compile than ``np.partition`` / ``np.sort``.)"""
    lo = 0
    hi = a.shape[0] - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        x, y, z = a[lo], a[mid], a[hi]
        if x > y:
            x, y = y, x
        if y > z:
            y = z
            if x > y:
                y = x
        piv = y
        i = lo
        j = hi
        while i <= j:
            while a[i] < piv:
                i += 1
            while a[j] > piv:
                j -= 1
            if i <= j:
                t = a[i]
                a[i] = a[j]
                a[j] = t
                i += 1
                j -= 1
        if q <= j:
            hi = j
        elif q >= i:
            lo = i
        else:
            return a[q]
    return a[q]


@njit(cache=True, parallel=True)
def _select_by_bins(gap, hist, nbin, target):
    """Users with gap in bins < ``nbin`` (see :func:`_gap_bin`), in increasing order, collected in parallel
    over the pass's blocks at offsets from their histograms. Each block writes every user's index and
    advances only past the selected ones (no branch to mispredict; one slot of slack per block), then
    the blocks' runs are packed together."""
    n = gap.shape[0]
    nblk = hist.shape[0]
    off = np.zeros(nblk + 1, np.int64)
    for b in range(nblk):
        c = 0
        for x in range(nbin):
            c += hist[b, x]
        off[b + 1] = off[b] + c
    tmp = np.empty(off[nblk] + nblk, np.int32)
    for b in nb.prange(nblk):
        w = off[b] + b
        s0 = b * PASS_BLOCK
        e0 = min(n, s0 + PASS_BLOCK)
        bits = gap[s0:e0].view(np.uint32)
        for i in range(e0 - s0):
            tmp[w] = s0 + i
            w += _gap_bin(bits[i]) < nbin
    return _pack_runs(tmp, off)


@njit(cache=True, parallel=True)
def _pack_runs(tmp, off):
    """Pack runs written with one slot of slack per part: part b's ``off[b + 1] - off[b]`` entries start
    at ``tmp[off[b] + b]`` and go to ``out[off[b]:off[b + 1]]`` (in parallel over the parts)."""
    nparts = off.shape[0] - 1
    out = np.empty(off[nparts], np.int32)
    for b in nb.prange(nparts):
        src = tmp[off[b] + b:off[b + 1] + b]
        dst = out[off[b]:off[b + 1]]
        for t in range(src.shape[0]):
            dst[t] = src[t]
    return out


def select_initial(gap, target, hist=None):
    """Users to load into the arc heaps first: about the ``target`` smallest gaps.

    With the pass's gap histogram ``hist``, the users of the smallest bins that hold at least ``target``
    users, where those are at most twice ``target`` (one scan, no sample); otherwise (or without ``hist``)
    see :func:`_select_sampled`. Returns (threshold, candidate user indices in increasing order); every
    other user has gap >= threshold.
    """
    if hist is not None and hist.shape[0] > 0:
        cum = np.cumsum(hist.sum(axis=0, dtype=np.int64))
        nbin = int(np.searchsorted(cum, target)) + 1  # bins 0 .. nbin - 1 hold >= target users
        inf_bin = int(np.float32(np.inf).view(np.uint32)) >> 20
        if nbin >= inf_bin:
            return math.inf, _select_by_bins(gap, hist, inf_bin, target)
        if cum[nbin - 1] <= 2 * max(target, 1):
            theta = float(np.array([nbin << 20], np.uint32).view(np.float32)[0])
            return theta, _select_by_bins(gap, hist, nbin, target)
        if nbin == 1:  # a spike of tied users (gap 0): the first ``target`` of them, in index order
            cand = _first_zero_gaps(gap, target)
            if cand.shape[0] == target:  # else bin 0 holds tiny positive gaps too: the general way below
                return 0.0, cand
    return _select_sampled(gap, target)


@njit(cache=True)
def _first_zero_gaps(gap, target):
    """The first ``target`` users (all, if fewer) with gap exactly 0, in index order: what
    :func:`_select_sampled` takes when its threshold is 0, found without scanning past them."""
    cand = np.empty(target, np.int32)
    w = 0
    for i in range(gap.shape[0]):
        if w == target:
            break
        if gap[i] == 0.0:
            cand[w] = i
            w += 1
    return cand[:w].copy()


@njit(cache=True, parallel=True)
def _select_sampled(gap, target):
    """The ``target`` smallest gaps, ties by user index (a spike of equal gaps, e.g. 0 for tied users,
    is taken only up to ``target``).

    The threshold is a quantile of a systematic sample of the gaps, so the count is approximate.
    Returns (threshold, candidate user indices in increasing order); every other user has gap >= threshold.
    (The users are counted and collected in parallel over fixed chunks, in chunk order.)
    """
    n = gap.shape[0]
    stride = max(1, n // 65536)
    m = 0
    for i in range(0, n, stride):
        if gap[i] < np.inf:
            m += 1
    if m == 0:
        return np.inf, np.empty(0, np.int32)
    samp = np.empty(m, np.float64)
    m = 0
    for i in range(0, n, stride):
        if gap[i] < np.inf:
            samp[m] = gap[i]
            m += 1
    q = int(np.ceil(target / n * m))
    if q >= m:
        theta = np.inf
    else:
        theta = _kth(samp, q)
    less = np.zeros(NCHUNK, np.int64)
    eq = np.zeros(NCHUNK, np.int64)
    for c in nb.prange(NCHUNK):
        Gc = gap[c * n // NCHUNK:(c + 1) * n // NCHUNK]  # (a slice: see _pass_blocks)
        nl = 0
        ne = 0
        for t in range(Gc.shape[0]):
            g = Gc[t]
            nl += g < theta
            ne += (g == theta) & (g < np.inf)
        less[c] = nl
        eq[c] = ne
    nless = less.sum()
    take_eq = max(0, target - nless)
    # chunk c takes its ties up to what the chunks before it left of take_eq
    off = np.empty(NCHUNK, np.int64)
    teq = np.empty(NCHUNK, np.int64)
    run = 0
    left = take_eq
    for c in range(NCHUNK):
        teq[c] = min(eq[c], left)
        left -= teq[c]
        off[c] = run
        run += less[c] + teq[c]
    cand = np.empty(run, np.int32)
    for c in nb.prange(NCHUNK):
        w = off[c]
        te = teq[c]
        i0 = c * n // NCHUNK
        Gc = gap[i0:(c + 1) * n // NCHUNK]
        for t in range(Gc.shape[0]):
            g = Gc[t]
            i = i0 + t
            if g < theta:
                cand[w] = i
                w += 1
            elif g == theta and te > 0 and g < np.inf:
                cand[w] = i
                w += 1
                te -= 1
    return theta, cand


# ----------------------------------------------------------------------------------------------------------
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


REFILL_SAMPLE = 4096  # users of a node whose keys set a refill's thresholds


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
                        start, mem = _build_members(assign, loaded, K, ulev, bnd, -1)
                        built = True
                    st_a, mem_a = start, mem
                    if not built:  # a small node (under 1/32 of the users) before any big one: its own list
                        st_a, mem_a = _build_members(assign, loaded, K, ulev, bnd, a)
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


_FEW_FUNDS = 4  # empty funds that best_values reads the grid once for each


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
