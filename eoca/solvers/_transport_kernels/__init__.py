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

The kernels live by phase: :mod:`.common` (work split, status codes, row fetches), :mod:`.assign` (the
pass), :mod:`.select` (the repair's first load), :mod:`.heaps` and :mod:`.repair` (successive shortest
paths), :mod:`.prices` (the Newton step's reads and the certificate). This package re-exports them, so
the driver reads them as one namespace ``K``.
"""

from __future__ import annotations

from eoca.solvers._transport_kernels.assign import (  # noqa: F401
    GAP_BINS,
    PASS_SWEEP,
    _gap_bin,
    _pass_blocks,
    _pass_rare,
    _prefault,
    _spread_ties,
    assign_pass,
)
from eoca.solvers._transport_kernels.common import (  # noqa: F401
    _AHEAD,
    GAP2_INF,
    NCHUNK,
    NSTATS,
    PASS_BLOCK,
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
    TIED,
    _code_level,
    _fetch_row,
    _fetch_user,
    _open_nodes,
    _prefetch,
    gap16,
)
from eoca.solvers._transport_kernels.heaps import (  # noqa: F401
    _append,
    _clean_top,
    _full,
    _grow,
    _heapify,
    _less,
    _load_user,
    _pop,
    _reserve,
    _sift_down,
    _sift_up,
    _sift_up_at,
    _val,
)
from eoca.solvers._transport_kernels.prices import (  # noqa: F401
    _FEW_FUNDS,
    arc_density,
    best_nodes,
    best_values,
    block_violations,
    closed_best,
    gaps_below_node,
    level_counts,
    to_output,
    violations,
)
from eoca.solvers._transport_kernels.repair import (  # noqa: F401
    REFILL_SAMPLE,
    _below,
    _build_members,
    _code,
    _code_table,
    _excess,
    _first_load,
    _member_group,
    _refill,
    _refill_scan,
    repair,
)
from eoca.solvers._transport_kernels.select import (  # noqa: F401
    _first_zero_gaps,
    _kth,
    _pack_runs,
    _select_by_bins,
    _select_sampled,
    select_initial,
)
