"""Exact kernel for the allocation transportation problem at platform scale.

Assign each of n users one of k funds (or none, with ``holdout``) to maximise the total ETV subject to
``demand_min[j] <= count_j <= demand_max[j]`` and the risk rule ``user_level[i] >= fund_level[j]``.

Method (docs/design.md, "The solvers")
----------------------------------------------------------------------
The problem is a transportation problem whose dual has one price per fund. Add a sink node T (value 0 for
every user, price fixed to 0 in the output): held-out users sit at T, and fund j sends ``f_j`` units to T
with ``min_j <= f_j <= max_j``, which turns demand ranges into ordinary arcs j -> T and T -> j.

1. **Warm prices from a sample.** The same problem on every 10th user, with demands scaled by the
   sample's share of the users at each risk level and above (so the sample keeps the full problem's slack
   at every risk boundary, which sets the prices across levels), widened to [floor, ceil] and then
   repaired until the sample is feasible, is solved recursively (down to a few thousand users); its prices
   start the full solve. A sample level of fewer than 500k users whose Newton step (below) cuts its
   imbalance at least 2.5x is not repaired: the step's prices are as good a start (what it leaves is
   small next to the sampling noise the level above corrects anyway), and the repair is saved.
2. **One pass over the grid** (parallel over fixed blocks of users, so the output never depends on the
   number of threads) puts each user at its best node under those prices, counts users per node, and
   records each user's gap to its second-best node (and, where the level below found it worth it, a
   second gap: to its best node at another risk level than its own node's, in 16 bits). A user whose
   best nodes tie (within a relative 1e-12) is marked in the parallel phase and afterwards, in index
   order, goes to the tied node furthest below the count it should reach under the warm prices
   (smallest count / target), and gets gap 0: on degenerate grids (few distinct values, mostly zeros,
   identical users) exactly tied users no longer pile onto one fund, so the imbalance left to the repair
   is about as small as on a continuous grid, and so are the heaps (the memory on top of the grid).
   **A Newton step on the prices** (instances of 50k users or more, without holdout): the sample's prices
   leave an imbalance that is mostly a small error in a few price differences (on nearly tight risk
   levels, where a few users set the prices across levels, a large one). How many users move per unit
   of price between two nodes is read off the reduced keys of the users with the smallest gaps (on a
   systematic part of them), and the linear model (a graph Laplacian on the k + 1 nodes) is solved for
   the price change that meets every demand. A user can change its best node only if its gap is below
   the largest rise of its node's price against a node it may take: every user whose gap is below that
   plus a margin goes to its best node under the new prices, so each user again sits at a best node.
   With second gaps, rises within a risk level and across levels are told apart: on nearly tight levels
   the prices across levels move far and those within a level barely, and a user is read only where one
   of its two gaps is below the matching rise (at 1M users about 20k users instead of 200-400k).
   The step is kept only if it shrinks the imbalance by 30% (at 1M users it typically cuts it by
   10-40x); it is halved once, then given up, where it would read more than a third of the users or 6x
   the users of smallest gap it starts from. The repair's first load then takes, arc by arc, the users
   whose reduced key is below the bound known for every user the step did not read (further along the
   sparse arcs across risk levels, where the linear model is least sure).
3. **Successive shortest paths on the (k + 1)-node graph** (Johnson potentials = prices) move users from
   over-full to under-full nodes. The arc a -> b costs the cheapest move of a user sitting at a; its
   candidates are kept in a heap per ordered pair ordered by the price-free key
   ``value(u, a) - value(u, b)`` and then by user index, so ties are broken lexicographically and the
   result never depends on thread scheduling. Heaps are filled lazily, arc by arc, through a load
   threshold per arc (a never-moved user is in heap a -> b iff its (key, index) is below it, so a user
   enters only the heaps of the arcs it is cheap for, not all k of them: the heaps are the memory on top
   of the grid): first with the users whose gap is smallest (16 to 48 times the warm prices' imbalance,
   more for more users, since a refill scans a whole node), each in the arcs where it is within that
   gap, later, when a path needs arc a -> b beyond what is loaded, with a batch of a's remaining users of
   smallest key towards b (a batch about twice the remaining imbalance, at most that many taken among
   exactly tied keys); users not yet loaded give an exact lower bound ``kappa`` on the arc, so a
   path through a not-yet-loaded arc still yields valid prices and triggers that refill. (The refill's scan
   of the node runs in parallel over fixed chunks; tied keys at a batch threshold are taken in index order.) After each price update the shortest path is tight, and it is reused to move a
   whole batch of tied users (one per arc per step) until an arc's next key differs, the source is
   balanced, or the sink is full: on degenerate grids (few distinct values, mostly zeros, identical
   users) thousands of tied users move per Dijkstra run.
4. **Certificate.** Every user sits at an argmax of ``etv - price`` over its allowed funds (or at 0 for
   held-out users), and every fund with a positive price is at its max, every fund with a negative price
   at its min, so the assignment's value equals the Lagrangian dual value of the prices.

**Tight risk levels** (docs/design.md, "The solvers"). Where the users whose level reaches fund level L are exactly
as many as the demand_min of the funds at level >= L, every one of them must take one of those funds,
which get exactly their demand_min. This is made explicit as eligibility before solving (users at or
above L may not take lower funds nor be held out; those funds' demand_max becomes demand_min), which
splits the problem into blocks that exchange nobody, so the prices have no unbounded direction; the
sample of step 1 keeps the blocks. Afterwards the prices of each tight block are lowered (the "matching
price correction") until, under the original risk rule, no user prefers a node below its block and a
ranged fund of a tight block has a price <= 0; this keeps dual(prices) = objective because a block's
users exactly fill its funds' demand_min.

Funds with ``demand_max == 0`` take nobody: they are removed from everyone's choices during the solve
and their price is set afterwards to the smallest value that no user would beat.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from eoca._arrays import mutable_view
from eoca.solvers import _transport_kernels as K
from eoca.solvers import _tuning

__all__ = ["TransportSolution", "solve_transport"]

_INT32_MIN = np.iinfo(np.int32).min
_INT32_MAX = np.iinfo(np.int32).max
_WARM = -1  # status of a sample level left at the Newton step's prices (not repaired)


@dataclass(frozen=True)
class TransportSolution:
    """Result of :func:`solve_transport`.

    Attributes
    ----------
    assignment : numpy.ndarray of int32, shape (n,)
        Fund index of each user, -1 for a held-out user.
    prices : numpy.ndarray of float64, shape (k,)
        Fund prices lambda (dual of the demand constraints; the value of holding a user out is 0). With
        ``status == "optimal"`` they certify optimality: the assignment's ETV equals
        ``sum_i max(0 if holdout else -inf, max_{j allowed} etv[i, j] - lambda_j)
        + sum_j (lambda_j * demand_max_j if lambda_j >= 0 else lambda_j * demand_min_j)``.
    status : str
        ``"optimal"``, or ``"time_limit"`` when the time limit stopped the repair; the assignment then
        respects the risk rule but may miss some demands.
    stats : dict
        Counters and seconds per phase.
    """

    assignment: np.ndarray
    prices: np.ndarray
    status: str
    stats: dict = field(default_factory=dict)


def _as_inputs(etv, user_level, fund_level, demand_min, demand_max):
    etv = np.asarray(etv)
    if etv.ndim != 2:
        raise ValueError(f"etv must be a 2-d (users, funds) array; got shape {etv.shape}")
    if etv.dtype not in (np.float32, np.float64) or not etv.flags.c_contiguous:
        # the core hands over float32 or float64 C-contiguous grids (the kernels are compiled for both);
        # anything else costs one conversion
        etv = np.ascontiguousarray(etv, dtype=np.float64)
    n, k = etv.shape
    ul = np.ascontiguousarray(user_level, dtype=np.int32)
    fl = np.ascontiguousarray(fund_level, dtype=np.int32)
    dmin = np.ascontiguousarray(demand_min, dtype=np.int64)
    dmax = np.ascontiguousarray(demand_max, dtype=np.int64)
    etv, ul = mutable_view(etv), mutable_view(ul)
    fl, dmin, dmax = fl.copy(), dmin.copy(), dmax.copy()
    if k < 1:
        raise ValueError("etv must have at least one fund column")
    for name, arr, size in (("user_level", ul, n), ("fund_level", fl, k), ("demand_min", dmin, k),
                            ("demand_max", dmax, k)):
        if arr.shape != (size,):
            raise ValueError(f"{name} must have shape ({size},); got {arr.shape}")
    if (dmin < 0).any() or (dmin > dmax).any():
        bad = np.flatnonzero((dmin < 0) | (dmin > dmax))
        raise ValueError(f"demands must satisfy 0 <= demand_min <= demand_max; funds {bad.tolist()} do not")
    return etv, ul, fl, dmin, dmax


def _feasibility(code_counts, fcode, dmin, dmax, holdout):
    """First violated condition of the level-wise Hall conditions, as a message (None if feasible).

    ``code_counts[c]`` = users whose level reaches exactly c of the m sorted open fund levels; fund j has
    code ``fcode[j]`` in 1..m (0 = closed) and is allowed to users with code >= fcode[j].
    """
    m = len(code_counts) - 1
    at_least = np.cumsum(code_counts[::-1])[::-1]  # users with code >= t
    n = int(at_least[0])
    for t in range(1, m + 1):
        need = int(dmin[fcode >= t].sum())
        if at_least[t] < need:
            return f"funds at risk rank >= {t} need at least {need} users but only {int(at_least[t])} may take them"
    if not holdout:
        for t in range(1, m + 2):
            below = n - (int(at_least[t]) if t <= m else 0)
            cap = int(dmax[(fcode >= 1) & (fcode < t)].sum())
            if below > cap:
                return (f"{below} users may only take funds at risk rank < {t}, whose demand_max sums to {cap}"
                        if t <= m else f"{n} users must be placed but demand_max sums to {cap}")
    return None


def _sample_demands(code_counts, fcode, dmin, dmax, holdout, ratio):
    """Scaled demands [floor, ceil] for a sample, repaired until the sample is feasible (None if it can't)."""
    smin = np.floor(dmin * ratio).astype(np.int64)
    smax = np.ceil(dmax * ratio).astype(np.int64)
    m = len(code_counts) - 1
    at_least = np.cumsum(code_counts[::-1])[::-1]
    n = int(at_least[0])
    for t in range(m, 0, -1):
        over = int(smin[fcode >= t].sum()) - int(at_least[t])
        for j in np.argsort(-smin, kind="stable"):
            if over <= 0:
                break
            if fcode[j] >= t:
                cut = min(over, int(smin[j]))
                smin[j] -= cut
                over -= cut
    if not holdout:
        for t in range(1, m + 2):
            below = n - (int(at_least[t]) if t <= m else 0)
            mask = (fcode >= 1) & (fcode < t)
            short = below - int(smax[mask].sum())
            if short > 0:
                if not mask.any():
                    return None
                j = int(np.flatnonzero(mask)[np.argmax(fcode[mask])])
                smax[j] += short
    return smin, smax


def _code_ratios(sample_counts, full_counts, fcode, dmin, ratio):
    """The scale of each fund's demand in a sample, per risk code: the sample's funds at code >= t get
    (together) the share of the full demand that the sample's users at code >= t are of the full problem's.

    With one ratio for every fund, the sample's slack at a risk boundary (its users at code >= t minus the
    demand there) would carry the sampling noise of its level counts, which on nearly tight levels is as
    large as the slack itself, and the warm prices across levels would be far off. Funds of code 0 (closed)
    keep ``ratio``."""
    m = len(full_counts) - 1
    at_s = np.append(np.cumsum(sample_counts[::-1])[::-1], 0).astype(np.float64)
    at_f = np.append(np.cumsum(full_counts[::-1])[::-1], 0).astype(np.float64)
    cum = np.zeros(m + 2)  # the sample's demand_min at code >= t
    eq = np.zeros(m + 2)  # the full demand_min at code == t
    for t in range(1, m + 1):
        share = at_s[t] / at_f[t] if at_f[t] > 0 else ratio
        cum[t] = share * float(dmin[fcode >= t].sum())
        eq[t] = float(dmin[fcode == t].sum())
    rho = np.full(m + 1, float(ratio))
    for t in range(1, m + 1):
        if eq[t] > 0:
            rho[t] = max(0.0, cum[t] - cum[t + 1]) / eq[t]
    return rho[fcode]


def _block_sample_demands(code_counts, fcode, dmin, dmax, holdout, ratio, tight):
    """:func:`_sample_demands` block by block: the tight codes split users and funds into blocks that
    exchange nobody (block 0 also holds the held-out node); returns None if a block can't be repaired.
    ``ratio`` is one scale for every fund's demands or one per fund."""
    ratio = np.broadcast_to(np.asarray(ratio, np.float64), dmin.shape)
    bounds = [1] + [int(t) for t in tight] + [len(code_counts)]
    smin = np.zeros_like(dmin)
    smax = np.zeros_like(dmax)
    for b in range(len(bounds) - 1):
        c0, c1 = bounds[b], bounds[b + 1]
        sel = (fcode >= c0) & (fcode < c1)
        if b == 0:
            cc = code_counts[:c1]
            fc = fcode[sel]
        else:
            cc = np.concatenate([[0], code_counts[c0:c1]])
            fc = fcode[sel] - c0 + 1
        dm = _sample_demands(cc, fc, dmin[sel], dmax[sel], holdout and b == 0, ratio[sel])
        if dm is None:
            return None
        smin[sel], smax[sel] = dm
    return smin, smax


class _Levels:
    """Risk levels of the open funds, as dense codes, and the exactly tight ones.

    Code t (1..m) is tight when the users whose level reaches it are exactly as many as the demand_min of
    the funds at code >= t: every such user must take one of those funds (not a lower fund, not the
    held-out node), and those funds get exactly their demand_min. Made explicit as eligibility, the
    problem splits into blocks that exchange nobody, and the prices have no unbounded direction.
    """

    def __init__(self, fl, dmax):
        self.open = dmax > 0
        self.levels = np.unique(fl[self.open]).astype(np.int32)
        self.fcode = np.zeros(len(fl), np.int64)
        self.fcode[self.open] = np.searchsorted(self.levels, fl[self.open]) + 1
        self.tight = np.zeros(0, np.int64)  # tight codes, increasing
        self.user_counts = None  # users per code (set by prepare_nodes)

    def counts(self, ul):
        return K.level_counts(ul, self.levels)

    def find_tight(self, code_counts, dmin):
        at_least = np.cumsum(code_counts[::-1])[::-1]
        m = len(code_counts) - 1
        tight = [t for t in range(1, m + 1)
                 if at_least[t] > 0 and int(at_least[t]) == int(dmin[self.fcode >= t].sum())]
        self.tight = np.array(tight, np.int64)

    def block_of_code(self, codes):
        return np.searchsorted(self.tight, codes, side="right")


def warm_prices(sub, sul, n, code_counts, lo, hi, dmin, dmax, holdout, levels, deadline, info, settle=False):
    """Phase 1, warm start: node prices (sink at 0) from a systematic sample of users, solved exactly by
    the in-memory recursion with demands scaled by the sample's share of the users at each risk level and
    above. ``sub``/``sul``: the sample's grid rows and risk levels; ``n`` and ``code_counts``: the users of
    the whole problem and their count per risk code. ``settle``: repair the sample to its optimum even where
its Newton step's prices would do (see :func:`_solve_level`). Zero prices where the sample cannot be made
feasible."""
    k = sub.shape[1]
    sub_counts = levels.counts(sul)
    ratio = _code_ratios(sub_counts, code_counts, levels.fcode, dmin, len(sul) / n)
    dm = _block_sample_demands(sub_counts, levels.fcode, dmin, dmax, holdout, ratio, levels.tight)
    if dm is not None:
        lam_s, _a, st, _s = _solve_level(sub, sul, lo, hi, dm[0], dm[1], holdout, levels, deadline, info,
                                         code_counts=sub_counts, top=settle)
        if st != K.STATUS_INFEASIBLE:
            return lam_s - lam_s[k]
    return np.zeros(k + 1)


def pass_targets(lam0, dmin, dmax, n, holdout):
    """The count each node should reach under prices ``lam0`` (complementary slackness): the pass spreads
    exactly tied users towards it."""
    k = len(dmin)
    target = np.empty(k + 1, np.int64)
    target[:k] = np.where(lam0[:k] < 0, dmin, dmax)
    target[k] = max(0, n - int(target[:k].sum())) if holdout else 0
    return target


def pass_imbalance(counts, lam0, dmin, dmax, n):
    """After the pass: the count each fund should have under ``lam0`` and the users that must move (the
    imbalance the Newton step and the repair remove)."""
    k = len(dmin)
    f = np.where(lam0[:k] > 0, dmax, np.where(lam0[:k] < 0, dmin, np.clip(counts[:k], dmin, dmax)))
    return f, int(np.maximum(counts[:k] - f, 0).sum() + max(counts[k] + f.sum() - n, 0))


def settle(etv, ul, lo, hi, dmin, dmax, holdout, levels, deadline, info, prices):
    """Phases 2-4 on one block of users from given node ``prices`` (sink at 0) instead of a warm-start
    sample: the pass, the Newton step (from ``NEWTON_USERS`` users) and the repair, exactly as a level of
    the in-memory recursion runs them. The distributed solve calls it on the users it gathers, with each
    fund's demand less the users fixed elsewhere. Returns (prices, assignment, status, repair stats)."""
    return _solve_level(etv, ul, lo, hi, dmin, dmax, holdout, levels, deadline, info, warm=False, start=prices)


def _solve_level(etv, ul, lo, hi, dmin, dmax, holdout, levels, deadline, info, warm=True, code_counts=None, top=True,
                 start=None):
    """Prices and assignment of one level of the recursion. Returns (lam, assign, status, repair stats).
    ``code_counts``: the users per risk code (:meth:`_Levels.counts` of ``ul``), if already known.
    ``start``: prices to start from where ``warm`` is false (zero prices without). A
    sample level (``top`` false, under ``_tuning.UNREPAIRED`` users) whose Newton step cuts its imbalance to at
    most ``_tuning.WARM_CUT`` returns the step's prices with status ``_WARM``: they only start the level above,
    whose own Newton step and repair make up the difference (its imbalance barely grows, and the sample's
    repair is saved). ``info["second_gap"]``: whether the pass of the level above should record each
    user's second gap (see :func:`_newton_step`)."""
    n, k = etv.shape
    t0 = time.perf_counter()
    lam0 = np.zeros(k + 1) if start is None else np.array(start, dtype=np.float64)
    if warm and n > _tuning.BASE_USERS:
        # a strided view, not a copy: no memory to map and fill (a 10M grid's sample is 64 MB); the kernels
        # read it about as fast
        sul = np.ascontiguousarray(ul[::_tuning.SAMPLE_STEP])
        if code_counts is None:
            code_counts = levels.counts(ul)
        lam0 = warm_prices(etv[::_tuning.SAMPLE_STEP], sul, n, code_counts, lo, hi, dmin, dmax, holdout, levels,
                           deadline, info)
        info["sample_levels"].append(len(sul))
        del sul
    t1 = time.perf_counter()
    target = pass_targets(lam0, dmin, dmax, n, holdout)
    newton = n >= _tuning.NEWTON_USERS and not holdout
    grp = _node_groups(lo, hi) if newton and info.get("second_gap", True) else None
    assign, gap, counts, nbad, smax, hist, *gap2 = K.assign_pass(etv, ul, lo, hi, lam0, target, grp)
    gap2 = gap2[0] if gap2 else None

    def record(pass_s, repair_s, moved, repaired):
        info["level_seconds"].append({"users": n, "sample_s": t1 - t0, "pass_s": pass_s, "repair_s": repair_s,
                                      "pass_excess": int(pass_excess), "initial_excess": int(excess),
                                      "moved": moved, "repaired": repaired, "second_gap": grp is not None,
                                      "newton_read": info["newton_read"]})

    if nbad:
        raise ValueError(f"{nbad} users may take no fund (their risk level is below every open fund's)")
    # first heap load: a generous multiple of the imbalance under the warm prices. A refill scans every
    # user of a node, which costs more the more users there are, while the first load costs in proportion
    # to itself: the multiple grows with sqrt(n), from 16 at 1M users to 48 from 9M users on
    f, excess = pass_imbalance(counts, lam0, dmin, dmax, n)
    factor = min(_tuning.FIRST_LOAD_MAX, max(_tuning.FIRST_LOAD_MIN, _tuning.FIRST_LOAD_MIN * math.sqrt(n / 1e6)))
    target = int(min(n, max(_tuning.FIRST_LOAD_USERS, factor * excess)))
    lam = lam0.copy()
    pass_excess = excess
    theta0, cand = K.select_initial(gap, target, hist)
    th = abs(theta0) if math.isfinite(theta0) else 0.0
    theta = np.full((k + 1) ** 2, theta0)  # per arc: every user outside cand has reduced keys >= theta
    info["newton_read"] = (0, 0)
    if newton and excess > 0 and math.isfinite(theta0) and theta0 > 0:
        step = _newton_step(etv, ul, lo, hi, f, lam0, assign, counts, cand, theta0, gap, gap2, grp, excess, info)
        if step is not None:
            lam, excess, cand, theta, th = step
            if not top and n < _tuning.UNREPAIRED and excess <= _tuning.WARM_CUT * pass_excess:
                record(time.perf_counter() - t1, 0.0, 0, False)
                return lam, assign, _WARM, np.zeros(K.NSTATS, np.int64)
    del hist, gap, gap2
    # a non-candidate at a has key_ab >= theta[a, b] + lam_a - lam_b - tol, where tol covers the rounding
    # of the pass (its gaps are float32; th is the largest gap bound read); every allowed etv is at most
    # smax + max|lam| (ties within 1e-12 relative count as gap 0 in the pass, hence the factor 2)
    lam_abs = max(float(np.abs(lam0).max()), float(np.abs(lam).max()))
    tol = 2e-12 * (float(smax) + 2.0 * lam_abs + th) + 1e-6 * th + 1e-300
    t2 = time.perf_counter()
    status, st = K.repair(etv, ul, lo, hi, dmin, dmax, lam, assign, counts, cand, theta, tol, deadline)
    t3 = time.perf_counter()
    record(t2 - t1, t3 - t2, int(st[K.ST_MOVED]), True)
    return lam, assign, int(status), st


def _node_groups(lo, hi):
    """Group of each node for the pass's second gap: nodes that the same levels may take (one risk level,
    inside one tight block) form a group. The warm prices of one group mostly move together, and the
    largest moves are of one group against another (across risk levels)."""
    pairs = np.stack([lo, hi], axis=1)
    return np.unique(pairs, axis=0, return_inverse=True)[1].ravel().astype(np.float64)


def _newton_step(etv, ul, lo, hi, demand, lam0, assign, counts, cand, theta, gap, gap2, grp, excess, info):
    """One Newton step on the prices after the pass: the imbalance left by the sample's prices is mostly
    a small error in a few price differences, and the users it moves all have small gaps.

    ``cand`` holds every user whose gap under ``lam0`` is below ``theta`` (``gap``: every user's, to its
    second-best node). Their reduced keys give, per pair of nodes, how many users move per unit of price
    (:func:`K.arc_density`, on a systematic part of them); the step solves that linear model (a graph
    Laplacian) for the price change that meets the node counts ``demand``. A user at node a can change
    its best node only if its reduced key towards some node b it may take is below the rise of a's price
    against b's. Every user whose gap is below the largest such rise of its node, plus a margin, goes to
    its best node under the new prices (:func:`K.best_nodes`), so each user again sits at a best node,
    and every other one keeps a gap of at least the margin.

    With ``gap2`` (each user's gap to its best node outside its node's group ``grp``, from the pass; None
    without), the rises against the node's own group and against the others are told apart: on nearly
    tight risk levels the sample's prices across levels are far off (a few users there set them) while
    those inside a level are close, and a user is read only if its gap is below the first or its second
    gap below the second (at 1M users about 20k instead of 200-400k). Whether that saves more reads than
    the second gap costs the pass is noted in ``info["second_gap"]`` for the level above, and the users
    read and those one gap would read in ``info["newton_read"]``.

    Halved once, then given up, where it would read more than a third of the users or 6x ``cand``.
    Kept only if it shrinks the imbalance by at least 30%; on degenerate grids (exact ties spread by the
    pass) it often does not, and then nothing is changed.

    Returns None or (prices, imbalance, the repair's first load, the per-arc bound (k + 1)**2 on the
    reduced keys of every user outside it, the largest gap limit read from the pass); ``assign`` and
    ``counts`` are then updated in place.
    """
    n = len(gap)
    k1 = len(lam0)
    step = max(1, len(cand) // _tuning.DENSITY_USERS)
    W, per_node = K.arc_density(etv, ul, lo, hi, lam0, assign, cand, theta, step)
    W = W.astype(np.float64) * step
    per_node = per_node * step  # users of cand per node (estimated)
    w = (W + W.T) / (2.0 * theta)
    lap = np.diag(w.sum(axis=1)) - w
    e = (counts - np.append(demand, counts[k1 - 1])).astype(np.float64)  # node T: no one, nothing to meet
    delta = np.linalg.lstsq(lap, e, rcond=None)[0]
    # node pairs that some level may take both of
    pair = (np.maximum(lo[:, None], lo[None, :]) < np.minimum(hi[:, None], hi[None, :])) & ~np.eye(k1, dtype=bool)
    if not pair.any():
        return None
    two = gap2 is not None
    same = grp[:, None] == grp[None, :] if two else np.ones((k1, k1), bool)
    margin = _tuning.MARGIN * theta
    most = min(n // 3, _tuning.WIDE * len(cand))
    # how far (in theta) the repair's first load reaches from each node towards the other groups: where
    # every such arc has few users near its boundary (across risk levels), the linear model is least sure
    # and loading further costs little; with the second gap those users are read that much further too
    far = np.ones((k1, k1))
    if (pair & (w > 0)).any():
        dense = w[pair & (w > 0)].mean()
        cross = np.where(pair & ~same, w, 0.0).max(axis=1)
        with np.errstate(divide="ignore"):
            far = np.where(same, 1.0, np.clip(dense / cross, 1.0, _tuning.SPARSE_REACH)[:, None])
    for halve in (False, True):
        if halve:
            delta = delta / 2
        diff = delta[:, None] - delta[None, :]  # rise of a's price against b's
        # per node: the largest rise against a node of its group (limit), of another group (limit2)
        limit = np.maximum(np.where(pair & same, diff, 0.0).max(axis=1), 0.0) + margin
        limit2 = np.maximum(np.where(pair & ~same, diff + (far - 1.0) * theta, 0.0).max(axis=1), 0.0) + margin
        if not max(limit.max(), limit2.max()) > margin:
            return None
        # users that one gap would read, estimated from cand (gaps thin out further from 0, so a linear
        # estimate is high): a step that one gap would read too wide is not scanned for
        if not two and float((per_node * limit).sum()) / theta > most:
            continue
        wide, one_gap = K.gaps_below_node(gap, gap2 if two else np.empty(0, np.uint16), assign, limit,
                                          K.gap16(limit2), most, np.maximum(limit, limit2))
        if wide is not None:
            break
    else:
        return None
    info["newton_read"] = (len(wide), int(one_gap))
    if two:
        info["second_gap"] = one_gap - len(wide) > _tuning.SECOND_GAP * n
    lam1 = lam0 + delta
    # a user outside wide at a has a reduced key towards b of at least limit[a] (b in a's group) or the
    # larger of its two limits (b outside) minus diff[a, b], which is >= margin under lam1; the repair
    # loads the users of wide whose keys are below that bound, arc by arc (at most far * theta: more
    # would load far more users than the repair needs)
    reach = np.where(same, limit[:, None], np.maximum(limit, limit2)[:, None])
    bound = np.where(pair, np.maximum(np.minimum(reach - diff, far * theta), margin), np.inf)
    old = np.empty(len(wide), np.int32)
    gap1 = np.empty(len(wide), np.float64)
    moved, first = K.best_nodes(etv, ul, lo, hi, lam1, assign, wide, old, gap1,
                                np.where(pair, bound, -np.inf).max(axis=1))
    counts1 = counts + moved
    excess1 = int(np.maximum(counts1[: k1 - 1] - demand, 0).sum())
    if excess1 > 0.7 * excess:
        assign[wide] = old
        return None
    counts[:] = counts1
    return lam1, excess1, first, bound.ravel(), float(max(limit.max(), limit2.max()))


def _tight_price_correction(etv, ul, fl, holdout, levels, node_block, dmin, dmax, assign, prices):
    """Lower the prices of each tight block (and every block above it) so that, under the original risk
    rule, no user prefers a node below its block; a tight block's funds end with price <= 0 unless their
    demand is exact. Both keep dual(prices) = objective: a block's users and funds exchange nobody, so a
    shift c of its funds' prices adds c to each of its users' values and takes c * demand_min from its
    funds' terms, and the block's users are exactly its funds' demand_min."""
    k = len(prices)
    p = np.append(prices, 0.0)
    node_lo = np.empty(k + 1, np.int32)  # the original risk rule (closed funds are priced afterwards)
    node_lo[:k] = np.where(levels.open, fl, _INT32_MAX)
    node_lo[k] = _INT32_MIN if holdout else _INT32_MAX
    tight_lv = levels.levels[levels.tight - 1].astype(np.int32)
    nb_ = len(levels.tight) + 1
    if ((node_block >= 0) & (node_block < nb_ - 1) & (node_lo < _INT32_MAX)).any():
        M = K.block_violations(etv, ul, tight_lv, node_block, node_lo, assign, p)
    else:
        # no node below the top block is open to anyone (e.g. the lowest level is tight only because
        # every user must be placed): no user can prefer one, and the scan of every user is saved
        M = np.full((nb_, nb_), -np.inf)
    return _tight_shift(M, levels, node_block, dmin, dmax, prices)


def _tight_shift(M, levels, node_block, dmin, dmax, prices):
    """The prices of :func:`_tight_price_correction` given the matrix ``M`` of :func:`K.block_violations`
    (a maximum over users, so it may also be reduced over chunks of users computed elsewhere)."""
    k = len(prices)
    nb = len(levels.tight) + 1
    c = np.zeros(nb)
    for s in range(nb - 1, 0, -1):
        need = 0.0
        for b in range(s, nb):
            above = c[s + 1 : b + 1].sum()
            for b2 in range(s):
                if math.isfinite(M[b, b2]):
                    need = max(need, M[b, b2] - above)
        c[s] = need
    for b in range(1, nb):
        ranged = (node_block[:k] == b) & (dmax > dmin)
        if ranged.any():
            c[b] += max(0.0, float(prices[ranged].max()) - c[1 : b + 1].sum())
    shift = np.cumsum(c)
    out = prices.copy()
    blk = node_block[:k]
    out[blk >= 1] -= shift[blk[blk >= 1]]
    return out


def prepare_nodes(ul, fl, dmin, dmax, holdout):
    """Check feasibility and set up the fund graph shared by the in-memory and distributed solves.

    Node k is the sink T (no fund); a fund that must stay empty is allowed to nobody; tight risk levels
    become eligibility (a user at or above a tight level takes nothing below it).

    Returns
    -------
    levels : _Levels
    lo, hi : int32 arrays (k + 1,)
        A user of level t may take node j iff ``lo[j] <= t <= hi[j]``.
    node_block : int64 array (k + 1,)
        Tight block of each node (T: 0, closed funds: -1).
    dmax_r : int64 array (k,)
        Maximum demands, with a tight block's funds held at exactly their minimum.
    """
    k = len(fl)
    levels = _Levels(fl, dmax)
    code_counts = levels.counts(ul)
    levels.user_counts = code_counts
    msg = _feasibility(code_counts, levels.fcode, dmin, dmax, holdout)
    if msg is not None:
        raise ValueError(f"infeasible instance: {msg}")
    lo = np.empty(k + 1, np.int32)
    lo[:k] = np.where(levels.open, fl, _INT32_MAX)
    lo[k] = _INT32_MIN if holdout else _INT32_MAX
    hi = np.full(k + 1, _INT32_MAX, np.int32)
    levels.find_tight(code_counts, dmin)
    node_block = np.zeros(k + 1, np.int64)
    node_block[:k] = np.where(levels.open, levels.block_of_code(levels.fcode), -1)
    dmax_r = dmax
    if len(levels.tight):
        tight_lv = levels.levels[levels.tight - 1]
        ext = np.append(tight_lv, _INT32_MAX).astype(np.int32)
        hi[:k] = np.where(levels.open, ext[np.maximum(node_block[:k], 0)], _INT32_MAX)
        hi[k] = ext[0]
        dmax_r = np.where(node_block[:k] >= 1, dmin, dmax)
    return levels, lo, hi, node_block, dmax_r


def solve_transport(etv, user_level, fund_level, demand_min, demand_max, holdout, *, time_limit=None):
    """Optimal assignment of users to funds and the fund prices that prove it.

    Parameters
    ----------
    etv : numpy.ndarray of float64, shape (n, k), C-contiguous
        Expected transaction value of user i for fund j; finite and >= 0. Read, never copied or written.
    user_level : numpy.ndarray of int32, shape (n,)
        Risk tolerance of each user.
    fund_level : numpy.ndarray of int32, shape (k,)
        Risk level of each fund; user i may receive fund j only if ``user_level[i] >= fund_level[j]``.
    demand_min, demand_max : numpy.ndarray of int64, shape (k,)
        Fund j must receive between ``demand_min[j]`` and ``demand_max[j]`` users.
    holdout : bool
        If true a user may receive no fund (value 0); otherwise every user receives exactly one.
    time_limit : float, optional
        Seconds after which the repair stops with status ``"time_limit"``.

    Returns
    -------
    TransportSolution

    Raises
    ------
    ValueError
        If the inputs are malformed or the instance is infeasible.
    """
    t_start = time.perf_counter()
    deadline = math.inf if time_limit is None else t_start + float(time_limit)
    etv, ul, fl, dmin, dmax = _as_inputs(etv, user_level, fund_level, demand_min, demand_max)
    n, k = etv.shape
    holdout = bool(holdout)
    levels, lo, hi, node_block, dmax_r = prepare_nodes(ul, fl, dmin, dmax, holdout)
    info = {"sample_levels": [], "level_seconds": []}
    if n == 0:
        return TransportSolution(np.empty(0, np.int32), np.zeros(k), "optimal", {"total_s": 0.0})
    lam, assign, status, st = _solve_level(etv, ul, lo, hi, dmin, dmax_r, holdout, levels, deadline, info,
                                           code_counts=levels.user_counts)
    if status == K.STATUS_INFEASIBLE:
        raise ValueError("infeasible instance: no way to meet every demand was found")
    prices = lam[:k] - lam[k]
    if len(levels.tight):
        prices = _tight_price_correction(etv, ul, fl, holdout, levels, node_block, dmin, dmax, assign, prices)
    K.to_output(assign, k)
    closed = np.flatnonzero(~levels.open)
    if len(closed):
        # the smallest price at which no allowed user would rather take an empty fund
        best = K.best_values(etv, ul, closed, np.ascontiguousarray(fl[closed]), assign, prices)
        prices[closed] = np.maximum(0.0, best)
    top = info["level_seconds"][-1]
    stats = {
        "status_code": status,
        "users": n,
        "funds": k,
        "sample_levels": info["sample_levels"][::-1],
        "pass_excess": top["pass_excess"],
        "initial_excess": top["initial_excess"],
        "moved": int(st[K.ST_MOVED]),
        "dijkstra_runs": int(st[K.ST_DIJKSTRA]),
        "augmentations": int(st[K.ST_AUGMENT]),
        "refills": int(st[K.ST_REFILL]),
        "loaded": int(st[K.ST_LOADED]),
        "scanned": int(st[K.ST_SCANNED]),
        "heap_entries": int(st[K.ST_ENTRIES]),
        "sample_s": top["sample_s"],
        "pass_s": top["pass_s"],
        "repair_s": top["repair_s"],
        "levels": info["level_seconds"],
        "total_s": time.perf_counter() - t_start,
    }
    return TransportSolution(assign, prices, "optimal" if status == K.STATUS_OPTIMAL else "time_limit", stats)
