"""Shared pieces of the exact kernels: the work split, status codes and counters, and the row fetches every scan uses."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from eoca.solvers._tuning import AHEAD as _AHEAD  # noqa: F401 - shared by the kernels that import it from here
from eoca.solvers._tuning import NCHUNK, PASS_BLOCK  # noqa: F401

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
