"""The repair's first load: which users (smallest gaps) the heaps start from."""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from numba import njit

from eoca.solvers._transport_kernels.assign import _gap_bin
from eoca.solvers._transport_kernels.common import NCHUNK, PASS_BLOCK


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
