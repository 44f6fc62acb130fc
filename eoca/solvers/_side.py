"""Side rules for the solvers: the allowed pairs, the side constraints' coefficients on them, the penalised
grid that carries an eligibility mask into the level-ordered kernels, and the LP relaxation's duals."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from eoca.problem import CompiledProblem

__all__ = ["allowed_pairs", "pair_coefficients", "penalised", "lp_relaxation", "infeasible_core", "core_message"]


def allowed_pairs(c: CompiledProblem, users: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positions (user, fund) of the pairs the risk rule and the mask allow, in user-major order (of the
    given users, or of all)."""
    rows = slice(None) if users is None else users
    u, f = np.nonzero(c.eligible(rows))
    if users is not None:
        u = np.asarray(users)[u]
    return u.astype(np.int64), f.astype(np.int64)


def pair_coefficients(c: CompiledProblem, users: np.ndarray, funds: np.ndarray) -> np.ndarray:
    """The side constraints' coefficients on the given pairs: float64 (n_constraints, n_pairs)."""
    out = np.empty((len(c.constraints), len(users)))
    for q, con in enumerate(c.constraints):
        if con.grid is not None:
            out[q] = con.grid[users, funds]
        else:
            out[q] = con.user_weight[users] * con.fund_weight[funds]
    return out


def forbidden_value(c: CompiledProblem, top: float | None = None) -> float:
    """A value so low that an allocation using one pair of it is worth less than any allocation using
    none (every ETV is >= 0, so ``-(n + 1) * (max ETV + 1)`` is below the worst feasible total). ``top``:
    the largest ETV where the caller knows it (read from the grid otherwise)."""
    if top is None:
        top = float(np.max(c.etv, initial=0.0)) if c.etv.size else 0.0
    return -float(c.n_users + 1) * (top + 1.0)


def penalised(c: CompiledProblem, etv: np.ndarray | None = None) -> CompiledProblem:
    """``c`` without its mask and constraints, the mask folded into a float64 copy of ``etv`` (default the
    grid): a forbidden pair gets :func:`forbidden_value`. When any allocation meets the demands within the
    mask, every optimum of the penalised problem uses no forbidden pair, and its optimal prices bound the
    masked problem (the checker evaluates the bound over the allowed pairs only). The copy costs one
    float64 grid for the length of the solve."""
    values = np.array(c.etv if etv is None else etv, dtype=np.float64, order="C")
    if c.mask is not None:
        values[~c.mask] = forbidden_value(c)
    values.flags.writeable = False
    return replace(c, etv=values, mask=None, constraints=())


#: HiGHS's interior point with crossover (a vertex, so exact duals), presolve off: HiGHS's presolve spends
#: its time on the n user rows, which it cannot reduce (measured, 3,000 users x 8 funds: 11.9 s with
#: presolve, 0.78 s dual simplex and 0.14 s interior point without).
LP_METHOD = "highs-ipm"
#: What a failed interior-point solve is tried again with: with costs that span many orders of magnitude
#: (an elastic bound's penalty against small weights) the interior point can report a feasible LP as
#: infeasible (seen: 1,000 users x 3 funds, a commission budget in tenths of a cent); the dual simplex
#: does not, at about 5x the time, paid only when the interior point fails.
LP_FALLBACK = "highs-ds"
#: How far a row without coefficients may miss its bound at zero (HiGHS's primal feasibility tolerance).
_ROW_TOL = 1e-7


class _Rows:
    """The allocation LP over the given pairs as ``A_ub x <= b_ub``, ``A_eq x == b_eq``. Equalities are
    kept as such (every user placed, an exact demand or bound): written as two inequalities they make
    the simplex crawl through degenerate pivots (measured: 3,000 users x 8 funds, 15-20 s against 0.1 s).
    ``dual(ub, eq)`` maps the maximisation's duals back to (prices, multipliers)."""

    def __init__(self, users, funds, coef, n, k, lo_f, hi_f, lo_s, hi_s, holdout, elastic=False):
        from scipy.sparse import csr_matrix, hstack, identity, vstack

        p, m = len(users), len(lo_s)
        cols = np.arange(p)
        extra = 2 * m if elastic else 0  # per side constraint: a column above it and one below it
        user_rows = csr_matrix((np.ones(p), (users, cols)), shape=(n, p + extra))
        fund_rows = csr_matrix((np.ones(p), (funds, cols)), shape=(k, p + extra))
        side_rows = csr_matrix(coef) if m else csr_matrix((0, p))
        if extra:
            side_rows = hstack([side_rows, -identity(m), identity(m)]).tocsr()
        lo = np.concatenate([np.asarray(lo_f, dtype=np.float64), np.asarray(lo_s, dtype=np.float64)])
        hi = np.concatenate([np.asarray(hi_f, dtype=np.float64), np.asarray(hi_s, dtype=np.float64)])
        rows = vstack([fund_rows, side_rows]).tocsr()
        self.k, self.m = k, m
        self.eq_idx = np.flatnonzero(lo == hi)
        self.hi_idx = np.flatnonzero((lo != hi) & np.isfinite(hi))
        self.lo_idx = np.flatnonzero((lo != hi) & np.isfinite(lo))
        self.a_ub = vstack([rows[self.hi_idx], -rows[self.lo_idx]] + ([user_rows] if holdout else [])).tocsr()
        self.b_ub = np.concatenate([hi[self.hi_idx], -lo[self.lo_idx]] + ([np.ones(n)] if holdout else []))
        self.a_eq = vstack([rows[self.eq_idx]] + ([] if holdout else [user_rows])).tocsr()
        self.b_eq = np.concatenate([lo[self.eq_idx]] + ([] if holdout else [np.ones(n)]))

    def dual(self, ub_marginals, eq_marginals):
        y = np.zeros(self.k + self.m)  # the maximisation's duals: >= 0 on a maximum, <= 0 on a minimum
        h, lo = len(self.hi_idx), len(self.lo_idx)
        y[self.hi_idx] -= ub_marginals[:h]
        y[self.lo_idx] += ub_marginals[h:h + lo]
        y[self.eq_idx] -= eq_marginals[:len(self.eq_idx)]
        return y[:self.k], y[self.k:]

    def empty_rows_hold(self) -> bool:
        """Whether every row without a coefficient holds at zero, within HiGHS's feasibility tolerance
        (its interior point without presolve never ends on one that does not: seen 0 = 1, a rule whose
        users all sit outside the LP)."""
        for a, b, equal in ((self.a_ub, self.b_ub, False), (self.a_eq, self.b_eq, True)):
            if a.shape[0]:
                empty = np.asarray(abs(a).sum(axis=1)).ravel() == 0
                if ((np.abs(b[empty]) if equal else -b[empty]) > _ROW_TOL).any():
                    return False
        return True

    def holds_at_zero(self) -> bool:
        """Whether choosing nothing meets every row (the case of a model without pairs)."""
        return bool((self.b_ub >= 0).all() and (self.b_eq == 0).all())

    def args(self):
        out = {}
        if self.a_ub.shape[0]:
            out.update(A_ub=self.a_ub, b_ub=self.b_ub)
        if self.a_eq.shape[0]:
            out.update(A_eq=self.a_eq, b_eq=self.b_eq)
        return out


def solve_lp(values, users, funds, coef, n, k, lo_f, hi_f, lo_s, hi_s, holdout, penalty=None, box=None):
    """Maximise ``values . x`` over the pairs (``users`` numbered 0..n-1) subject to one fund per user,
    fund counts in [lo_f, hi_f] and side activities ``coef @ x`` in [lo_s, hi_s], with HiGHS (scipy).

    Returns ``(objective, x, prices, multipliers, excess)`` with the duals in the sign convention of
    :func:`eoca.dual_bound` (a fund's price >= 0 where its maximum binds, <= 0 where its minimum does; a
    constraint's multiplier likewise), or None when the LP is infeasible. With ``penalty`` (one per side
    constraint) the side bounds are elastic: a unit outside them costs its penalty, so the LP is feasible
    whenever the demands are, and ``excess`` (per constraint, signed: above its maximum > 0, below its
    minimum < 0) says by how much the bounds are missed; ``objective`` is then the ETV alone.

    ``box = (lower, upper)`` (one pair per side constraint, within +-penalty) generalises it: a unit above
    a constraint's bounds costs ``upper`` and a unit below earns ``lower``, which keeps each multiplier in
    [lower, upper] (a box step around earlier multipliers; where the box binds, ``excess`` is not zero).
    """
    from scipy.optimize import linprog

    p, m = len(users), len(lo_s)
    elastic = (penalty is not None or box is not None) and m > 0
    rows = _Rows(users, funds, coef, n, k, lo_f, hi_f, lo_s, hi_s, holdout, elastic=elastic)
    cost = np.asarray(values, dtype=np.float64)
    if elastic:
        lower, upper = box if box is not None else (-np.asarray(penalty), np.asarray(penalty))
        cost = np.concatenate([cost, -np.asarray(upper, dtype=np.float64), np.asarray(lower, dtype=np.float64)])
    if not len(cost):  # nothing to choose: feasible iff every row holds at zero
        if not rows.holds_at_zero():
            return None
        return 0.0, np.zeros(0), np.zeros(k), np.zeros(m), np.zeros(m)
    if not rows.empty_rows_hold():
        return None
    res = linprog(-cost, bounds=(0, None), method=LP_METHOD, options={"presolve": False}, **rows.args())
    if res.status != 0:
        res = linprog(-cost, bounds=(0, None), method=LP_FALLBACK, options={"presolve": False}, **rows.args())
    if res.status != 0:
        return None
    ub = res.ineqlin.marginals if rows.a_ub.shape[0] else np.zeros(0)
    eq = res.eqlin.marginals if rows.a_eq.shape[0] else np.zeros(0)
    prices, multipliers = rows.dual(ub, eq)
    x = res.x[:p]
    excess = res.x[p:p + m] - res.x[p + m:] if elastic else np.zeros(m)
    return float(np.dot(x, cost[:p])), x, prices, multipliers, excess


def solve_mip(values, users, funds, coef, n, k, lo_f, hi_f, lo_s, hi_s, holdout, time_limit=None, abs_gap=None):
    """The same model as :func:`solve_lp` with binary x, by HiGHS's MIP (scipy.optimize.milp); returns
    the chosen pairs as a bool array over the pairs, or None when no integer allocation exists (or
    HiGHS found none in time). ``abs_gap``: the ETV by which HiGHS may stop short of the optimum."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    rows = _Rows(users, funds, coef, n, k, lo_f, hi_f, lo_s, hi_s, holdout)
    if not len(users):
        return np.zeros(0, dtype=bool) if rows.holds_at_zero() else None
    if not rows.empty_rows_hold():
        return None
    cons = []
    if rows.a_ub.shape[0]:
        cons.append(LinearConstraint(rows.a_ub, -np.inf, rows.b_ub))
    if rows.a_eq.shape[0]:
        cons.append(LinearConstraint(rows.a_eq, rows.b_eq, rows.b_eq))
    # a small model (the users left to settle): HiGHS's presolve and cuts help here; the gap it may stop
    # at is what the caller allows in absolute ETV
    scale = max(float(np.abs(values).sum()), 1.0)
    options = {"disp": False, "mip_rel_gap": 1e-9 if abs_gap is None else min(1e-4, max(abs_gap / scale, 1e-9))}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    res = milp(-np.asarray(values, dtype=np.float64), integrality=np.ones(len(users)), bounds=Bounds(0, 1),
               constraints=cons, options=options)
    if res.x is None:
        return None
    return res.x > 0.5


def side_bounds(c: CompiledProblem) -> tuple[np.ndarray, np.ndarray]:
    return np.array([con.lo for con in c.constraints]), np.array([con.hi for con in c.constraints])


def lp_relaxation(c: CompiledProblem):
    """The LP relaxation over every allowed pair: ``(objective, prices, multipliers)`` (see
    :func:`solve_lp`), or None when it is infeasible."""
    users, funds = allowed_pairs(c)
    lo_s, hi_s = side_bounds(c)
    out = solve_lp(np.asarray(c.etv[users, funds], dtype=np.float64), users, funds,
                   pair_coefficients(c, users, funds), c.n_users, c.n_funds, c.demand_min.astype(np.float64),
                   c.demand_max.astype(np.float64), lo_s, hi_s, c.holdout)
    return None if out is None else (out[0], out[2], out[3])


#: Most allowed pairs over which :func:`infeasible_core` runs its deletion filter (one LP per constraint).
CORE_PAIRS = 2_000_000


def infeasible_core(c: CompiledProblem) -> list[int] | None:
    """When the LP relaxation is infeasible: a set of side constraints that cannot hold together with the
    demands, the eligibility and the risk rule, and from which none can be left out (a deletion filter:
    each constraint is dropped in turn and kept out when the rest stays infeasible). ``[]`` when the
    demands alone are infeasible; None when the relaxation is feasible or the problem is too large to
    filter (more than :data:`CORE_PAIRS` allowed pairs)."""
    users, funds = allowed_pairs(c)
    if len(users) > CORE_PAIRS:
        return None
    coef = pair_coefficients(c, users, funds)
    lo_s, hi_s = side_bounds(c)
    zero = np.zeros(len(users))
    lo_f, hi_f = c.demand_min.astype(np.float64), c.demand_max.astype(np.float64)

    def feasible(keep: list[int]) -> bool:
        return solve_lp(zero, users, funds, coef[keep], c.n_users, c.n_funds, lo_f, hi_f, lo_s[keep], hi_s[keep],
                        c.holdout) is not None

    core = list(range(len(c.constraints)))
    if feasible(core):
        return None
    for q in list(core):
        rest = [p for p in core if p != q]
        if not feasible(rest):
            core = rest
    return core


def core_message(c: CompiledProblem, core: list[int] | None, fallback: str = "") -> str | None:
    """Why no allocation meets the side rules, from :func:`infeasible_core`'s answer; None when the LP
    relaxation is feasible (the caller then has no proof of infeasibility)."""
    if core is None:
        return f"the side constraints cannot all be met with the demands: {fallback}" if fallback else None
    if not core:
        return "the demands cannot be met within the eligibility and the risk rule"
    names = ", ".join(repr(c.constraints[q].name) for q in core)
    many = len(core) > 1
    return (f"no allocation, even a fractional one, meets the side constraint{'s' if many else ''} {names} "
            f"{'together ' if many else ''}with the demands, the eligibility and the risk rule: relax "
            f"{'one of them' if many else 'it'}")
