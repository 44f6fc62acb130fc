"""The side constraints' prices at platform scale: Newton's method on the smoothed dual, one read of the
grid per step.

With fund prices ``lam`` and constraint multipliers ``mu`` every user is independent, and the dual of the
LP relaxation is ``F(lam, mu) = sum_i max_j r_ij + sum_t sigma_t(y_t)`` with the reduced values
``r_ij = etv[i, j] - lam[j] - sum_q mu_q a_q[i, j]`` over the allowed pairs (and 0 for "no fund" with
holdout), ``y = (lam, mu)`` and ``sigma_t(y) = max(y * hi_t, y * lo_t)`` for a bound pair ``[lo_t, hi_t]``
(a demand or a side constraint). ``F`` is convex and piecewise linear in only ``k + m`` variables, and it
is an upper bound on every allocation for any ``y`` (the checker evaluates it).

The max over a user's options is smoothed by ``tau * log sum_j exp(r_ij / tau)`` (the entropy-regularised
LP) and each ``sigma_t`` by ``tau * log int_lo^hi exp(y s / tau) ds`` (a log barrier where one bound is
missing). The result is smooth and strictly convex up to the shift shared by all prices, so Newton's method
in ``k + m`` variables converges in a few steps from one ``tau`` to the next: ``tau`` falls by a constant
factor per stage, as in an interior-point method, from a tenth of the mean ETV down to where the smoothing
changes the bound by a negligible share. Each step reads the grid once (value, gradient and, on a stride of
the users whose options are not settled, the Hessian); the first stages run on a random sample of users
with the bounds scaled to it.

What comes out is a pair ``(lam, mu)`` whose dual value ``F`` is within a tiny share of the LP optimum.
It is not a certificate by itself: the caller settles the users of smallest gap by a MIP and the checker
computes ``F`` independently, so the gap it reports is proven. On any trouble (no convergence, a dual that
falls without bound because the rules cannot hold) this returns None and the caller uses the restricted-LP
method, which diagnoses infeasibility.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numba
import numpy as np

from eoca._arrays import mutable_view
from eoca.problem import CompiledProblem
from eoca.solvers import _tuning
from eoca.solvers._side_freeze import Freeze, quantile
from eoca.solvers._side_kernels import reduced_choices, stacked_user_weights

__all__ = ["smoothed_duals", "InMemory", "rows_problem", "layout_sums"]


@numba.njit(cache=True, parallel=True)
def _step_kernel(etv, user_level, fund_level, mask, use_mask, lam, mu, user_w, fund_w, prod_q, grid0, grid1,
                 stacked, grid_q, holdout, tau, stride, vals, grad, hess, active):  # pragma: no cover - compiled
    """Per block of users: the smoothed and the hard user terms of the dual, the sum of each user's
    expected option vector ``z = (e_j, a_q[i, j])`` under its soft choice, the number of users whose
    choice is not settled and (on users ``i % stride == 0`` among those, scaled by ``stride``) the sum of
    the covariances of ``z``, which is ``tau`` times the Hessian of the user terms."""
    n, k = etv.shape
    m = mu.shape[0]
    d = k + m
    nb = vals.shape[0]
    n_prod = user_w.shape[0]
    n_grid = 0
    mu_prod = np.zeros(n_prod)
    mu_grid = np.zeros(m)
    for q in range(m):
        if prod_q[q] >= 0:
            mu_prod[prod_q[q]] = mu[q]
        else:
            mu_grid[grid_q[q]] = mu[q]
            n_grid += 1
    for b in numba.prange(nb):
        first = b * n // nb
        last = (b + 1) * n // nb
        r = np.empty(k + 1)
        w = np.empty(k + 1)
        uw = np.empty(n_prod)
        su = np.empty(n_prod)
        a = np.zeros((k + 1, m))
        zbar = np.empty(d)
        smooth = 0.0
        hard = 0.0
        count = 0
        g = grad[b]
        h = hess[b]
        for i in range(first, last):
            for p in range(n_prod):
                uw[p] = user_w[p, i]
                su[p] = mu_prod[p] * uw[p]
            for j in range(k):
                r[j] = etv[i, j] - lam[j]
            for p in range(n_prod):
                for j in range(k):
                    r[j] -= su[p] * fund_w[p, j]
            if n_grid > 0:
                for j in range(k):
                    r[j] -= mu_grid[0] * grid0[i, j]
            if n_grid > 1:
                for j in range(k):
                    r[j] -= mu_grid[1] * grid1[i, j]
            for g2 in range(n_grid - 2):
                for j in range(k):
                    r[j] -= mu_grid[g2 + 2] * stacked[g2, i, j]
            top = -np.inf
            second = -np.inf
            arg = -1
            level = user_level[i]
            for j in range(k):
                if level < fund_level[j] or (use_mask and not mask[i, j]):
                    r[j] = -np.inf
                elif r[j] > top:
                    second = top
                    top = r[j]
                    arg = j
                elif r[j] > second:
                    second = r[j]
            options = k
            if holdout:
                r[k] = 0.0
                options = k + 1
                if top < 0.0:
                    second = top
                    top = 0.0
                    arg = k
                elif second < 0.0:
                    second = 0.0
            if top == -np.inf:
                hard = -np.inf  # a user with no option at all: the dual is unbounded below
                continue
            if (second - top) / tau <= -60.0:
                # every other option's weight below is exactly 0: the soft choice is the best option, the
                # same sums as below without the exponentials (most users once the smoothing is narrow)
                smooth += top
                hard += top
                if arg < k:
                    g[arg] += 1.0
                    for q in range(m):
                        p = prod_q[q]
                        if p >= 0:
                            g[k + q] += uw[p] * fund_w[p, arg]
                        elif grid_q[q] == 0:
                            g[k + q] += grid0[i, arg]
                        elif grid_q[q] == 1:
                            g[k + q] += grid1[i, arg]
                        else:
                            g[k + q] += stacked[grid_q[q] - 2, i, arg]
                continue
            total = 0.0
            for j in range(options):
                e = (r[j] - top) / tau
                w[j] = np.exp(e) if e > -60.0 else 0.0
                total += w[j]
            smooth += top + tau * np.log(total)
            hard += top
            largest = 0.0
            for j in range(options):
                w[j] /= total
                if w[j] > largest:
                    largest = w[j]
            for j in range(k):
                g[j] += w[j]
                zbar[j] = w[j]
                if w[j] > 0.0:
                    for q in range(m):
                        p = prod_q[q]
                        if p >= 0:
                            a[j, q] = uw[p] * fund_w[p, j]
                        elif grid_q[q] == 0:
                            a[j, q] = grid0[i, j]
                        elif grid_q[q] == 1:
                            a[j, q] = grid1[i, j]
                        else:
                            a[j, q] = stacked[grid_q[q] - 2, i, j]
            for q in range(m):
                s = 0.0
                for j in range(k):
                    if w[j] > 0.0:
                        s += w[j] * a[j, q]
                g[k + q] += s
                zbar[k + q] = s
            if largest < 1.0 - 1e-12:
                count += 1
                if i % stride == 0:
                    for j in range(k):
                        wj = w[j]
                        if wj == 0.0:
                            continue
                        h[j, j] += wj * stride
                        for q in range(m):
                            c = wj * a[j, q] * stride
                            h[j, k + q] += c
                            for q2 in range(q, m):
                                h[k + q, k + q2] += c * a[j, q2]
                    for x in range(d):
                        zx = zbar[x] * stride
                        for x2 in range(x, d):
                            h[x, x2] -= zx * zbar[x2]
        vals[b, 0] = smooth
        vals[b, 1] = hard
        active[b] = count


def rows_problem(c: CompiledProblem, rows, etv: np.ndarray | None = None) -> CompiledProblem:
    """``c`` restricted to the users ``rows`` (a slice or positions), in memory: their grid rows (``etv``
    where the caller has read them, e.g. from a Dask grid), risk levels, mask rows and constraint weights."""
    constraints = tuple(replace(con, user_weight=None if con.user_weight is None else con.user_weight[rows],
                                grid=None if con.grid is None else con.grid[rows]) for con in c.constraints)
    return replace(c, etv=c.etv[rows] if etv is None else etv, user_level=c.user_level[rows],
                   mask=None if c.mask is None else c.mask[rows], constraints=constraints)


class _Layout:
    """The arrays the step kernel reads for an in-memory problem: the grid, the risk levels, the mask and
    each constraint's coefficients (a user weight times a fund weight, or a grid)."""

    def __init__(self, c: CompiledProblem, with_grid: bool = True):
        k = c.n_funds
        # without the grid (for a Dask-backed problem, whose grid stays on the workers): the rules alone
        self.etv = np.ascontiguousarray(c.etv) if with_grid else np.zeros((0, k))
        self.user_level = np.ascontiguousarray(c.user_level)
        self.fund_level = c.fund_level
        self.use_mask = c.mask is not None
        self.mask = np.ascontiguousarray(c.mask) if self.use_mask else np.zeros((0, 0), dtype=np.bool_)
        fund_w, grids, prod_q, grid_q = [], [], [], []
        for con in c.constraints:
            if con.grid is not None:
                prod_q.append(-1)
                grid_q.append(len(grids))
                grids.append(np.ascontiguousarray(con.grid, dtype=np.float64))
            else:
                prod_q.append(len(fund_w))
                grid_q.append(-1)
                fund_w.append(con.fund_weight)
        n = c.n_users
        self.user_w = stacked_user_weights(c.constraints, n)
        self.fund_w = np.ascontiguousarray(np.array(fund_w, dtype=np.float64).reshape(len(fund_w), k))
        empty = np.zeros((0, k))
        self.grid0 = grids[0] if grids else empty
        self.grid1 = grids[1] if len(grids) > 1 else empty
        # a third per-pair constraint and more are stacked into one array (a copy; rare)
        self.stacked = np.stack(grids[2:]) if len(grids) > 2 else np.zeros((0, 0, k))
        self.prod_q = np.array(prod_q, dtype=np.int64)
        self.grid_q = np.array(grid_q, dtype=np.int64)
        self.holdout = bool(c.holdout)
        self.n = n
        # one compiled type whether the arrays come read-only (the problem's) or not (a subset's)
        for name in ("etv", "user_level", "fund_level", "mask", "user_w", "fund_w", "grid0", "grid1", "stacked"):
            setattr(self, name, mutable_view(getattr(self, name)))


@np.errstate(all="ignore")
def _bound_terms(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, tau: float):
    """The smoothed ``sigma_t`` of every bound pair: value, mean and variance of ``int_lo^hi exp(u s) ds``
    with ``u = y / tau`` (a truncated exponential: the mean and the variance over tau are the first and
    second derivatives; with one bound a log barrier), or None where ``y`` leaves a barrier's domain."""
    u = y / tau
    value = np.zeros_like(y)
    mean = np.zeros_like(y)
    var = np.zeros_like(y)
    for t in range(len(y)):
        lo_t, hi_t, u_t = lo[t], hi[t], u[t]
        if lo_t == hi_t:
            value[t], mean[t] = y[t] * lo_t, lo_t
        elif np.isinf(hi_t) or np.isinf(lo_t):
            # one bound: u must point away from the missing one; value tau * (u * b - log|u|)
            edge = lo_t if np.isinf(hi_t) else hi_t
            if (u_t >= 0) if np.isinf(hi_t) else (u_t <= 0):
                return None
            value[t] = tau * (u_t * edge - np.log(abs(u_t)))
            mean[t] = edge - 1.0 / u_t
            var[t] = 1.0 / (u_t * u_t)
        else:  # both bounds: the density leans towards hi where u > 0, towards lo where u < 0
            width = hi_t - lo_t
            v = abs(u_t) * width
            if v < 1e-4:
                share, spread, log_int = 0.5 + v / 12.0, 1.0 / 12.0 - v * v / 240.0, -v / 2.0 + v * v / 24.0
            else:
                em = -np.expm1(-v)  # 1 - e^-v in (0, 1)
                share = 1.0 / em - 1.0 / v
                spread = 1.0 / (v * v) - np.exp(-v) / (em * em)
                log_int = np.log(em / v)
            value[t] = tau * (max(u_t * lo_t, u_t * hi_t) + np.log(width) + log_int)
            mean[t] = lo_t + width * share if u_t >= 0 else hi_t - width * share
            var[t] = width * width * spread
    return value, mean, var


def layout_sums(layout: _Layout, y: np.ndarray, tau: float, stride: int):
    """One read of a layout's users at ``y``: (smoothed and hard user terms, sum of the expected option
    vectors, the Hessian sums (upper triangle), users not settled) summed over the kernel's blocks."""
    k, d = len(layout.fund_level), len(y)
    nb = max(1, min(_tuning.DUAL_BLOCKS, layout.n // 256))
    vals = np.zeros((nb, 2))
    grad = np.zeros((nb, d))
    hess = np.zeros((nb, d, d))
    active = np.zeros(nb, dtype=np.int64)
    L = layout
    _step_kernel(L.etv, L.user_level, L.fund_level, L.mask, L.use_mask, np.ascontiguousarray(y[:k]),
                 np.ascontiguousarray(y[k:]), L.user_w, L.fund_w, L.prod_q, L.grid0, L.grid1, L.stacked, L.grid_q,
                 L.holdout, tau, stride, vals, grad, hess, active)
    return vals.sum(axis=0), grad.sum(axis=0), hess.sum(axis=0), int(active.sum())


class _Dual:
    """The smoothed dual over some users: ``evaluate(y, tau)`` reads them once (``sums(y, tau, stride)``,
    :func:`layout_sums` or its chunk-wise equivalent) and returns the value, the gradient, the Hessian, the
    hard (unsmoothed) dual value, the number of unsettled users and what the smoothing adds."""

    def __init__(self, sums, lo: np.ndarray, hi: np.ndarray, k: int):
        self.sums, self.lo, self.hi, self.k = sums, lo, hi, k
        self.stride = 1
        self.passes = 0
        self.users = 0

    def evaluate(self, y: np.ndarray, tau: float):
        bounds = _bound_terms(y, self.lo, self.hi, tau)
        if bounds is None:
            return None
        (smooth, hard), grad, h, unsettled = self.sums(y, tau, self.stride)
        self.passes += 1
        value, mean, var = bounds
        h = np.triu(h) + np.triu(h, 1).T
        self.stride = _stride(unsettled)
        return (smooth + value.sum(), mean - grad, (h + np.diag(var)) / tau,
                hard + _hard_bound_terms(y, self.lo, self.hi), unsettled, smooth - hard)


def _stride(unsettled: float) -> int:
    """Every how many of the unsettled users the Hessian of a step reads: about ``DUAL_HESSIAN_USERS``."""
    return max(1, int(unsettled) // _tuning.DUAL_HESSIAN_USERS)


def _in_memory(c: CompiledProblem, lo: np.ndarray, hi: np.ndarray) -> _Dual:
    layout = _Layout(c)
    dual = _Dual(lambda y, tau, stride: layout_sums(layout, y, tau, stride), lo, hi, c.n_funds)
    dual.users = c.n_users
    return dual


class InMemory:
    """Every user of an in-memory problem, as the smoothed dual and the settlement read them. The Dask
    engine has the same four methods over a lazy grid's chunks (``eoca.distributed.rules``)."""

    def __init__(self, c: CompiledProblem):
        self.c = c

    def choices(self, lam: np.ndarray, mu: np.ndarray):
        """Every user's best option (-1: none, with holdout) and gap to the second best."""
        best, gap, _ = reduced_choices(self.c, self.c.etv, lam, mu, None)
        return best, gap

    def dual(self, lo: np.ndarray, hi: np.ndarray) -> _Dual:
        """The smoothed dual over every user."""
        return _in_memory(self.c, lo, hi)

    def subset(self, rows: np.ndarray) -> CompiledProblem:
        """The users ``rows`` (sorted positions) as an in-memory problem."""
        return rows_problem(self.c, rows)

    def value(self, codes: np.ndarray) -> float:
        """The ETV of ``codes`` (users with -1 add nothing)."""
        placed = np.flatnonzero(codes >= 0)
        return float(np.asarray(self.c.etv[placed, codes[placed]], dtype=np.float64).sum())


def _hard_bound_terms(y, lo, hi) -> float:
    with np.errstate(invalid="ignore"):
        terms = np.where(y >= 0, y * hi, y * lo)
    terms = np.where(y == 0, 0.0, terms)
    return float(terms.sum())


@np.errstate(all="ignore")
def _newton_direction(g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Solve ``h d = -g`` on the Jacobi-scaled Hessian, clipping its eigenvalues (the prices' common shift
    is a flat direction when every user takes a fund and every demand is exact). A variable on which no
    unsettled user weighs has no curvature of its own: its diagonal is floored at a tiny share of the
    largest, so that a round-off gradient moves it by a round-off step."""
    diag = np.diag(h)
    floor = max(float(diag.max(initial=0.0)), 1e-300) * 1e-12
    h = h + np.diag(np.maximum(floor - diag, 0.0))
    scale = 1.0 / np.sqrt(np.diag(h))
    hs = h * scale[:, None] * scale[None, :]
    w, v = np.linalg.eigh(hs)
    w = np.maximum(w, max(w.max(), 1e-300) * 1e-10)
    return -scale * (v @ ((v.T @ (g * scale)) / w))


def _stage(dual: _Dual, y: np.ndarray, tau: float, tol: float, iters: int, state, inside=None,
           geometric: bool = False):
    """Newton's method with a backtracking line search at one ``tau`` until the Newton decrement is
    below ``tol``. ``state`` is the evaluation at ``y`` (reused: each trial point's evaluation carries
    the gradient and Hessian of the next step). ``inside(y)``: whether a point is within the region
    where the evaluation is valid (a step is cut back to it, and the stage ends there). ``geometric``: see
    :func:`_keep_inside` (the whole's wide stages, which start from a sample's multipliers).
    Returns (y, state, cut) or None."""
    for _ in range(iters):
        value, g, h = state[:3]
        if not (np.all(np.isfinite(g)) and np.all(np.isfinite(h))):
            return None
        step = _newton_direction(g, h)
        decrement = -float(g @ step)
        if not np.isfinite(decrement):
            return None
        if decrement <= tol:
            return y, state, False
        if geometric:  # a multiplier whose step leaves its barrier's domain falls to a tenth instead
            kept = _keep_inside(y, step, dual.lo, dual.hi)
            slope = -float(g @ kept)
            if slope > 0.0:
                step, decrement = kept, slope
        alpha, cut = 1.0, inside is not None and not inside(y + step)
        if cut:  # the largest share of the step that stays inside, by bisection
            low, high = 0.0, 1.0
            for _ in range(12):
                mid = 0.5 * (low + high)
                low, high = (mid, high) if inside(y + mid * step) else (low, mid)
            alpha = low
            if alpha <= 0.0:
                return y, state, True
        while True:
            trial = dual.evaluate(y + alpha * step, tau)
            if trial is not None and trial[0] <= value - 0.25 * alpha * decrement:
                break
            alpha *= 0.5
            if alpha < 1e-8:
                return y, state, cut  # no progress along the step: as centred as the arithmetic allows
        y = y + alpha * step
        state = trial
        if cut:
            return y, state, True
    return y, state, False


def _keep_inside(y: np.ndarray, step: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``step`` with each multiplier of a one-sided bound that it would take out of its barrier's domain
    (> 0 with only a maximum, < 0 with only a minimum) taken to a tenth of its value instead.

    A rule that binds on the samples but is slack on the whole (a group's count near its quota: the
    samples' counts scatter around the whole's) reaches the whole with a multiplier far from its optimum
    near 0; Newton's step on its barrier overshoots 0, and halving the whole step until it stays inside
    holds every other variable back too. Going geometrically towards 0 takes one step where halving took
    three or four (measured with the smoothing falling fourfold per stage, six rules: 10M x 8, 26 -> 22
    reads of every user; 200k, 47 -> 28)."""
    only_max, only_min = _one_sided(lo, hi)
    out = (only_max & (y + step <= 0)) | (only_min & (y + step >= 0))
    return np.where(out, -0.9 * y, step)


def _one_sided(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which bound pairs have only a maximum (their barrier's multiplier > 0) and only a minimum (< 0)."""
    return np.isinf(lo) & ~np.isinf(hi), np.isinf(hi) & ~np.isinf(lo)


def _initial(c: CompiledProblem, tau: float) -> np.ndarray:
    """Zero prices; the multiplier of a rule with one declared bound starts at tau on the side that prices
    it, where its smoothed bound term acts as a barrier at the declared bound (at zero it would spread over
    the whole reach and take many steps to leave)."""
    y = np.zeros(c.n_funds + len(c.constraints))
    for q, con in enumerate(c.constraints):
        if np.isinf(con.hi) != np.isinf(con.lo):
            y[c.n_funds + q] = tau if np.isinf(con.lo) else -tau
    return y


@numba.njit(cache=True, parallel=True)
def _reach_kernel(user_level, fund_level, mask, use_mask, user_w, fund_w, prod_q, grid0, grid1, stacked, grid_q,
                  holdout, low, high, widest):  # pragma: no cover - compiled
    """Per block of users and per constraint: the sums of each user's smallest and largest coefficient
    over the pairs it may take (0 too with holdout; a user allowed nothing adds nothing), and the largest
    difference between the two of any user."""
    n = user_level.shape[0]
    k = fund_level.shape[0]
    m = prod_q.shape[0]
    nb = low.shape[0]
    for b in numba.prange(nb):
        top = np.empty(m)
        bottom = np.empty(m)
        for i in range(b * n // nb, (b + 1) * n // nb):
            top[:] = 0.0 if holdout else -np.inf
            bottom[:] = 0.0 if holdout else np.inf
            for j in range(k):  # each allowed pair once, every constraint's coefficient on it
                if user_level[i] < fund_level[j] or (use_mask and not mask[i, j]):
                    continue
                for q in range(m):
                    p = prod_q[q]
                    if p >= 0:
                        a = user_w[p, i] * fund_w[p, j]
                    elif grid_q[q] == 0:
                        a = grid0[i, j]
                    elif grid_q[q] == 1:
                        a = grid1[i, j]
                    else:
                        a = stacked[grid_q[q] - 2, i, j]
                    top[q] = max(top[q], a)
                    bottom[q] = min(bottom[q], a)
            for q in range(m):
                if top[q] >= bottom[q]:
                    low[b, q] += bottom[q]
                    high[b, q] += top[q]
                    widest[b, q] = max(widest[b, q], top[q] - bottom[q])


def _extents(c: CompiledProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per constraint, the least and the largest activity any allocation can have (each user's smallest
    and largest coefficient over the pairs it may take, summed) and the largest difference between two
    coefficients of one user's pairs (how far a multiplier's move can shift one option against another):
    one read of the rules, not of the grid."""
    L = _Layout(c, with_grid=False)
    nb = max(1, min(_tuning.DUAL_BLOCKS, c.n_users // 256))
    low, high, widest = (np.zeros((nb, len(c.constraints))) for _ in range(3))
    _reach_kernel(L.user_level, L.fund_level, L.mask, L.use_mask, L.user_w, L.fund_w, L.prod_q, L.grid0, L.grid1,
                  L.stacked, L.grid_q, L.holdout, low, high, widest)
    return low.sum(axis=0), high.sum(axis=0), widest.max(axis=0, initial=0.0)


def _reach(c: CompiledProblem) -> tuple[np.ndarray, np.ndarray]:
    """Per constraint, the least and the largest activity any allocation can have (see :func:`_extents`)."""
    return _extents(c)[:2]


def _bounds(c: CompiledProblem, share: float = 1.0, users: CompiledProblem | None = None, widen: bool = False,
            reach: tuple[np.ndarray, np.ndarray] | None = None):
    """Every bound pair (funds' demands, then constraints); for a sample of users (``users``, a ``share`` of
    them) the bounds it should meet. A rule declared at the very edge of what the users can reach
    (``at_most=0`` on weights >= 0: everyone at a zero weight) is held as an equality there: its one-sided
    barrier would have no minimiser and drive the multiplier to infinity. None when a declared bound lies
    beyond the reach. ``reach``: :func:`_reach` of ``c``, where the caller has it.

    A sample's rule bounds sit at the same place within the sample's reach as the declared bounds within
    the whole's (a ratio estimator: a quota on a group takes the group's share in the sample, not the
    sample's share of all users; at 1M users this took the sample's multipliers 2-10x closer to the
    whole's than scaling by ``share``). Its demands are scaled by ``share``, and with ``widen`` widened by
    their sampling error so that a sample whose risk levels happen to fall short can still meet them.
    """
    lo = np.r_[c.demand_min.astype(np.float64), [con.lo for con in c.constraints]]
    hi = np.r_[c.demand_max.astype(np.float64), [con.hi for con in c.constraints]]
    k = c.n_funds
    low, high = _reach(c) if reach is None else reach
    if users is not None:
        s_low, s_high = _reach(users)
        span = high - low
        for side in (lo, hi):
            rule = side[k:]
            with np.errstate(invalid="ignore", divide="ignore"):
                placed = s_low + (rule - low) / span * (s_high - s_low)
            # a rule whose reach is one value (every user counts the same whatever it takes): so is the
            # sample's, and a bound at that value stays at the sample's
            fixed = s_low + (rule - low) * share
            side[k:] = np.where(np.isinf(rule), rule, np.where(span > 0, placed, fixed))
        lo[:k], hi[:k] = lo[:k] * share, hi[:k] * share
        if widen:
            lo[:k], hi[:k] = lo[:k] - np.sqrt(np.abs(lo[:k])), hi[:k] + np.sqrt(np.abs(hi[:k]))
        low, high = s_low, s_high
        # a sample's bounds stay within its own reach (a missing side stays missing)
        lo[k:] = np.where(np.isinf(lo[k:]), lo[k:], np.maximum(lo[k:], low))
        hi[k:] = np.where(np.isinf(hi[k:]), hi[k:], np.minimum(hi[k:], high))
    slack = 1e-9 * np.maximum(1.0, np.maximum(np.abs(low), np.abs(high)))
    s_lo, s_hi = lo[k:], hi[k:]
    if np.any(s_hi < low - slack) or np.any(s_lo > high + slack):
        return None
    edge_hi = np.isinf(s_lo) & (s_hi <= low + slack)
    edge_lo = np.isinf(s_hi) & (s_lo >= high - slack)
    s_lo[edge_hi], s_hi[edge_lo] = s_hi[edge_hi], s_lo[edge_lo]
    return lo, hi


def _centred(state, tol: float) -> bool:
    """Whether the Newton decrement at an evaluation is within ``tol`` (its stage converged)."""
    g, h = state[1], state[2]
    return bool(-float(g @ _newton_direction(g, h)) <= tol)


def _sample_stages(sample: _Dual, y: np.ndarray, t: float, floor: float, stats: dict):
    """Centred stages on a sample from ``t`` while ``t`` is above ``floor`` (the smoothing falling
    ``DUAL_TAU_STEP`` per stage), ``t`` ending at the first smoothing not run; None where a stage does
    not converge within ``DUAL_SAMPLE_ITERS`` steps.
    Returns (y, t, the share of the sample's users not settled at t) or None."""
    state = sample.evaluate(y, t)
    try:
        while state is not None and t > floor:
            tol = 1e-3 * t * sample.users
            out = _stage(sample, y, t, tol, _tuning.DUAL_SAMPLE_ITERS, state)
            if out is None or not _centred(out[1], tol):
                return None
            y, state, _ = out
            t /= _tuning.DUAL_TAU_STEP
            state = sample.evaluate(y, t)
        return None if state is None else (y, t, state[4] / sample.users)
    finally:
        stats["sample_passes"] += sample.passes


def _sample_size(n: int) -> int:
    """Users of the first stages' sample: ``DUAL_SAMPLE_SHARE`` of the users, within ``DUAL_SAMPLE_MIN``
    and ``DUAL_SAMPLE`` (on a delivery of a few hundred thousand a sample of 50,000 costs a large part of
    a step over everyone, and takes as many steps)."""
    return max(min(_tuning.DUAL_SAMPLE, int(_tuning.DUAL_SAMPLE_SHARE * n)), min(_tuning.DUAL_SAMPLE_MIN, _tuning.DUAL_SAMPLE))


def _sample_start(c: CompiledProblem, access, tau: float, scale: float, stats: dict, reach):
    """The first stages on a random sample of :func:`_sample_size` users (bounds as :func:`_bounds` sets them),
    down to ``DUAL_TAU_SAMPLE`` of the mean ETV: (y, tau, the share of the sample's users not settled there)
    to go on from, or None. Tried with the demands scaled as they are, then, where a stage does not converge
    within ``DUAL_SAMPLE_ITERS`` steps (the sample's users may fall short of them at some risk level: its
    dual then has no minimum), widened; where that fails too, the whole starts cold (None). ``reach``: the
    whole's."""
    n = c.n_users
    rng = np.random.default_rng(n)
    size = _sample_size(n)
    users = access.subset(np.sort(rng.choice(n, size=size, replace=False)))
    for widen in (False, True):
        bounds = _bounds(c, size / n, users, widen, reach)
        if bounds is None:
            continue
        start = _sample_stages(_in_memory(users, *bounds), _initial(c, tau), tau, _tuning.DUAL_TAU_SAMPLE * scale,
                               stats)
        if start is not None:
            stats["sample_widened"] = widen
            return start
    return None


def smoothed_duals(c: CompiledProblem, access, deadline: float | None = None) -> dict | None:
    """Prices and multipliers whose dual value is within about ``DUAL_PRECISION`` of the LP optimum, or
    None. ``access`` reads every user (:class:`InMemory`, or the Dask engine's chunk-wise equivalent).
    Returns ``prices``, ``multipliers``, ``best`` and ``gap`` (every user's, there) and ``stats``.

    While the smoothing is wide (``tau`` above ``DUAL_TAU_FREEZE`` of the mean ETV) every step reads
    every user. Past that, users whose best option leads by far (a gap above ``DUAL_FREEZE * tau``, or
    outside the ``DUAL_ACTIVE`` share of smallest gaps) are frozen at it: their part of the dual is linear
    in the prices, which shifts the bounds of the others (as the users a restricted LP fixes), and the
    Newton steps read only the others' rows. A step that would let some other option catch up with a
    frozen user's is cut at that point, and one read of the grid freezes afresh with twice the share
    free. The method ends when the smoothing adds at most ``DUAL_PRECISION`` to the bound and a last read
    finds every frozen user still at its option.
    """
    start = time.perf_counter()
    k, n = c.n_funds, c.n_users
    spread = np.unique(np.linspace(0, n - 1, min(n, _tuning.DUAL_SCALE_USERS)).astype(np.int64))
    scale = float(np.mean(access.subset(spread).etv, dtype=np.float64))  # the mean ETV, from spread-out users
    if not np.isfinite(scale):
        return None
    scale = scale if scale > 0 else 1.0  # every ETV 0: any allocation that meets the rules is optimal
    tau = _tuning.DUAL_TAU_START * scale
    stats = {"full_passes": 0, "passes": 0, "stages": 0, "sample_passes": 0, "freezes": 0, "largest_active": 0}
    *reach, ranges = _extents(c)
    bounds = _bounds(c, reach=reach)
    if bounds is None:
        return None  # a rule beyond the users' reach: the restricted LPs name it
    lo, hi = bounds
    y = _initial(c, tau)
    unsettled = n  # users not settled at the last evaluation (the first Hessian's stride)
    if n > 2 * _sample_size(n):
        warm = _sample_start(c, access, tau, scale, stats, reach)
        if warm is not None:
            y, tau, unsettled = warm
            unsettled *= n
            # a multiplier the sample left on the wrong side of one of the whole's barriers starts inside it
            only_max, only_min = _one_sided(lo, hi)
            y = np.where(only_min & (y >= 0), -tau, np.where(only_max & (y <= 0), tau, y))
    share = _tuning.DUAL_ACTIVE
    best = gap = None  # every user's choice at y: read once the smoothing is narrow enough to freeze
    for _ in range(_tuning.DUAL_FREEZES):
        # every user free while the smoothing is wide (the prices still move far), then frozen by gap
        wide = tau > _tuning.DUAL_TAU_FREEZE * scale
        if not wide and best is None:
            best, gap = access.choices(y[:k], y[k:])
            stats["full_passes"] += 1
        margin = np.inf if wide else max(_tuning.DUAL_FREEZE * tau, quantile(gap, share))
        freeze = Freeze(c, access, y, best, gap, margin, tau, ranges)
        if len(freeze.rows) == n:
            dual = access.dual(lo, hi)
        else:
            dual = _in_memory(access.subset(freeze.rows), lo - freeze.taken, hi - freeze.taken)
        stats["freezes"] += 1
        stats["largest_active"] = max(stats["largest_active"], len(freeze.rows))
        dual.stride = _stride(min(unsettled, len(freeze.rows)))
        state = dual.evaluate(y, tau)
        done = False
        while True:
            if state is None:
                return None
            out = _stage(dual, y, tau, 1e-3 * tau * max(state[4], 1), _tuning.DUAL_ITERS, state, freeze.inside, wide)
            # every ETV is >= 0, so a dual value below 0 proves that no allocation meets the rules (the
            # restricted LPs then name the constraints); too many steps: likewise handed over
            if out is None or dual.passes + stats["passes"] > _tuning.DUAL_PASSES:
                return None
            size = scale * n + float(np.abs(out[0]) @ np.maximum(np.abs(lo), np.abs(hi)))  # of the dual's terms
            if not out[1][3] >= -1e-9 * size:
                return None
            y, state, cut = out
            stats["stages"] += 1
            if cut:  # a frozen user may have a new best option: freeze afresh, with twice the share free
                share = min(1.0, 2 * share)
                break
            # the users' smoothing adds state[5] to the bound at y: stop once that is negligible
            done = state[5] <= _tuning.DUAL_PRECISION * max(abs(state[3]), 1.0) or tau < 1e-9 * scale or (
                deadline is not None and time.perf_counter() > deadline)
            if done:
                break
            tau /= _tuning.DUAL_TAU_STEP
            if wide and tau <= _tuning.DUAL_TAU_FREEZE * scale:
                break
            state = dual.evaluate(y, tau)
        stats["passes"] += dual.passes
        unsettled = state[4]
        best, gap = access.choices(y[:k], y[k:])
        stats["full_passes"] += 1
        if done and freeze.kept(best):
            bound = float(state[3]) + freeze.value  # every frozen user is still at its option
            break
        if deadline is not None and time.perf_counter() > deadline:
            bound = None
            break
    else:
        return None  # the frozen users kept moving: the restricted LPs take over
    unclipped = y[k:].copy()
    y = np.r_[y[:k], _allowed_sign(unclipped, c)]
    if bound is None or not np.array_equal(y[k:], unclipped):
        state = access.dual(lo, hi).evaluate(y, tau)  # the dual value at y, read from every user
        if state is None:
            return None
        bound = float(state[3])
        stats["full_passes"] += 1
    stats.update(dual_s=time.perf_counter() - start, tau=tau / scale)
    return {"prices": y[:k].copy(), "multipliers": y[k:].copy(), "best": best, "gap": gap, "bound": bound,
            "stats": stats}


def _allowed_sign(mu: np.ndarray, c: CompiledProblem) -> np.ndarray:
    """Each multiplier on the side its constraint's declared bounds allow (>= 0 with only a maximum, <= 0
    with only a minimum): a rule at the edge of the users' reach is smoothed as an equality, whose
    multiplier may cross zero."""
    mu = mu.copy()
    for q, con in enumerate(c.constraints):
        if np.isinf(con.lo):
            mu[q] = max(mu[q], 0.0)
        if np.isinf(con.hi):
            mu[q] = min(mu[q], 0.0)
    return mu
