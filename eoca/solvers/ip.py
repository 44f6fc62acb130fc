"""The ``ip`` solver: the allocation as a Pyomo binary model (paper eqs. 1-5) solved by HiGHS.

:func:`build_model` compiles an :class:`~eoca.problem.AllocationProblem` into a Pyomo ``ConcreteModel``
that users may extend with their own constraints; :func:`solve_model` solves such a model with HiGHS
through Pyomo's in-memory (persistent) interface and reads the allocation back as fund codes.
:class:`IPSolver` is the registered ``"ip"`` solver that does both for ``eoca.solve(problem, solver="ip")``.

Example: a user-added rule
--------------------------
>>> import pyomo.environ as pyo
>>> from eoca.solvers.ip import build_model, solve_model
>>> model = build_model(problem)                                   # doctest: +SKIP
>>> u = model.user_ids.get_loc("u1")                                # position of user "u1"
>>> b = model.fund_ids.get_loc("bond")                              # position of fund "bond"
>>> model.no_bond_for_u1 = pyo.Constraint(expr=model.assign[u, b] == 0)   # doctest: +SKIP
>>> out = solve_model(model, time_limit=60)                         # doctest: +SKIP
>>> eoca.check_allocation(problem, out.codes).ok                    # doctest: +SKIP

Pyomo and highspy are optional: ``pip install "eoca[ip]"``. They are imported when a model is built, never
when eoca is imported.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from eoca.errors import ValidationError
from eoca.problem import AllocationProblem, CompiledProblem
from eoca.solvers._side import allowed_pairs, core_message, infeasible_core, lp_relaxation, pair_coefficients
from eoca.solvers.base import FEATURES, Solver, SolverOutput, register_solver

if TYPE_CHECKING:
    import pyomo.environ as pyo

__all__ = ["IPSolver", "build_model", "solve_model", "fund_prices", "DEFAULT_HIGHS_OPTIONS"]

#: HiGHS options :func:`solve_model` sets unless told otherwise. HiGHS's MIP presolve builds a clique
#: table over the n one-fund rows whose cost grows faster than the model (measured at 25,000 users x 8:
#: 39 s with presolve, 13 s without); the model has nothing for presolve to remove.
DEFAULT_HIGHS_OPTIONS: dict[str, Any] = {"presolve": "off"}

# Values of a binary above this count as 1 when the allocation is read back (HiGHS returns binaries
# within its integrality tolerance of 0 or 1).
_ONE = 0.5


def _pair_lists(c: CompiledProblem) -> tuple[np.ndarray, np.ndarray]:
    """Positions (user, fund) of the pairs the risk rule and the eligibility mask allow, user-major."""
    return allowed_pairs(c)


def build_model(problem: AllocationProblem) -> pyo.ConcreteModel:
    """Compile an allocation problem into a Pyomo model of the paper's eqs. 1-5.

    Parameters
    ----------
    problem : AllocationProblem

    Returns
    -------
    pyomo.environ.ConcreteModel
        Indexed by *position*: user ``i`` is ``model.user_ids[i]``, fund ``j`` is ``model.fund_ids[j]``.
        Components:

        ``pairs`` : Set of (i, j)
            The (user, fund) pairs the risk rule allows (``risk_tolerance >= risk_level``, eq. 5) and the
            eligibility mask, if declared, does not forbid: a pair outside it has no variable, so no
            solution can break either rule.
        ``assign`` : Var over ``pairs``, binary
            ``assign[i, j] == 1`` iff user i is shown fund j (eq. 2).
        ``etv`` : Objective, maximise
            Total ETV ``sum ETV[i, j] * assign[i, j]`` (eq. 1).
        ``one_fund`` : Constraint over users 0..n-1
            ``sum_j assign[i, j] <= 1``: at most one fund per user (eq. 3).
        ``demand`` : Constraint over funds 0..k-1
            ``demand_min[j] <= sum_i assign[i, j] <= demand_max[j]`` (an equality for an exact demand,
            eq. 4).
        ``placed`` : Constraint (only when every user must be placed and demands are ranges)
            ``sum_ij assign[i, j] == n_users``.
        ``side`` : Constraint over the side constraints 0..m-1 (only when the problem has some)
            ``at_least <= sum_ij a[i, j] * assign[i, j] <= at_most`` for each :class:`eoca.Quota` /
            :class:`eoca.Linear`, in declaration order.

        Plain attributes: ``user_ids`` and ``fund_ids`` (pandas Index of the ids, position -> id;
        ``user_ids.get_loc(id)`` gives the position), ``holdout`` (bool).

    Notes
    -----
    Eq. 3 is written ``<= 1`` even when every user must be placed; placement is then implied by the
    demands: with exact demands they add up to the number of users (the problem checks this), with range
    demands the single row ``placed`` says it. Both forms allow exactly the same allocations. The reason
    is speed: HiGHS's presolve searches n user *equations* for linear dependence and spends minutes on it
    at 10,000 users (the rows *are* dependent: every user row and every demand row sum to the same total),
    while the ``<= 1`` form solves in about a second.

    Add constraints with ordinary Pyomo (``model.my_rule = pyo.Constraint(...)``) and solve with
    :func:`solve_model`; do not delete ``assign``, which is how the allocation is read back.
    """
    import pyomo.environ as pyo
    from pyomo.core.expr.numeric_expr import LinearExpression, MonomialTermExpression

    c = problem.compile()
    n, k = c.n_users, c.n_funds
    users, funds = _pair_lists(c)
    etv = c.etv[users, funds].tolist()

    model = pyo.ConcreteModel(name=problem.name or "eoca allocation")
    model.user_ids = problem.users
    model.fund_ids = problem.funds
    model.holdout = c.holdout
    model.pairs = pyo.Set(initialize=list(zip(users.tolist(), funds.tolist())), dimen=2, ordered=True)
    model.assign = pyo.Var(model.pairs, within=pyo.Binary)
    # The Var's data follow the ordered Set, so position p in this list is pair (users[p], funds[p]).
    x = list(model.assign.values())

    # LinearExpression built from its terms skips Pyomo's generic expression builder (sum() over
    # thousands of terms is quadratic-ish and dominated the build time at 10,000 users).
    model.etv = pyo.Objective(
        expr=LinearExpression([MonomialTermExpression((v, var)) for v, var in zip(etv, x)]),
        sense=pyo.maximize,
    )
    user_start = np.searchsorted(users, np.arange(n + 1)).tolist()

    def _one_fund(_m: Any, i: int) -> Any:
        return LinearExpression(x[user_start[i] : user_start[i + 1]]) <= 1

    model.one_fund = pyo.Constraint(range(n), rule=_one_fund)

    by_fund = np.argsort(funds, kind="stable")
    fund_start = np.searchsorted(funds[by_fund], np.arange(k + 1)).tolist()
    by_fund_list = by_fund.tolist()
    lo, hi = c.demand_min.tolist(), c.demand_max.tolist()

    def _demand(_m: Any, j: int) -> Any:
        expr = LinearExpression([x[p] for p in by_fund_list[fund_start[j] : fund_start[j + 1]]])
        if lo[j] == hi[j]:
            return expr == lo[j]
        return (lo[j], expr, hi[j])

    model.demand = pyo.Constraint(range(k), rule=_demand)
    if not c.holdout and not c.exact_demands:
        model.placed = pyo.Constraint(expr=LinearExpression(list(x)) == n)
    if c.constraints:
        coef = pair_coefficients(c, users, funds)

        def _side(_m: Any, q: int) -> Any:
            con = c.constraints[q]
            nz = np.flatnonzero(coef[q]).tolist()
            expr = LinearExpression([MonomialTermExpression((float(coef[q, p]), x[p])) for p in nz])
            lo = None if not np.isfinite(con.lo) else con.lo
            hi = None if not np.isfinite(con.hi) else con.hi
            if lo is not None and lo == hi:
                return expr == lo
            return (lo, expr, hi)

        model.side = pyo.Constraint(range(len(c.constraints)), rule=_side)
    return model


def _model_pairs(model: pyo.ConcreteModel) -> tuple[list[Any], np.ndarray, np.ndarray]:
    keys = list(model.assign.keys())
    pairs = np.array(keys, dtype=np.int64).reshape(-1, 2)
    return list(model.assign.values()), pairs[:, 0], pairs[:, 1]


def solve_model(
    model: pyo.ConcreteModel,
    *,
    time_limit: float | None = None,
    mip_gap: float | None = None,
    threads: int | None = None,
    tee: bool = False,
    highs_options: dict[str, Any] | None = None,
) -> SolverOutput:
    """Solve a model from :func:`build_model` (possibly with user-added constraints) with HiGHS.

    Parameters
    ----------
    model : pyomo.environ.ConcreteModel
        As returned by :func:`build_model`, with any extra constraints or variables added. It is not
        modified: the solution is read from HiGHS, not written into the model's variables.
    time_limit : float, optional
        Seconds HiGHS may run; the best allocation found by then is returned with status "time_limit".
    mip_gap : float, optional
        Relative optimality gap at which HiGHS stops (HiGHS's default, 1e-4, when None). "optimal" then
        means optimal within this gap; :func:`eoca.solve` reports "feasible" unless the allocation is
        certified optimal to 1e-9.
    threads : int, optional
        Threads HiGHS may use (HiGHS's default when None).
    tee : bool, default False
        Print HiGHS's log.
    highs_options : dict, optional
        Raw HiGHS options (name -> value), applied over :data:`DEFAULT_HIGHS_OPTIONS`.

    Returns
    -------
    SolverOutput
        ``codes``: int32 array of shape (n_users,), the fund position given to each user, -1 for none.
        ``status``: "optimal" (HiGHS proved optimality within ``mip_gap``), "time_limit" (best found; all
        -1 with a message when HiGHS found none) or "error" (HiGHS failed, or the model with the added
        constraints is infeasible; see ``message``). ``prices`` is None (added constraints change the
        duals). ``stats`` holds HiGHS's objective, bound and termination; ``timings["solve"]`` seconds.
        Check the allocation with ``eoca.check_allocation(problem, out.codes)``.
    """
    import sys

    from pyomo.contrib.solver.common.results import SolutionStatus, TerminationCondition
    from pyomo.contrib.solver.solvers.highs import Highs

    n = len(model.user_ids)
    none = np.full(n, -1, dtype=np.int32)
    start = time.perf_counter()
    if len(model.assign) == 0:
        # No user may take any fund: HiGHS reports an empty model as "unknown", so settle it here.
        import pyomo.environ as pyo

        ok = (n == 0 or model.holdout) and all(
            not con.has_lb() or pyo.value(con.lower) <= 0 for con in model.demand.values()
        )
        return SolverOutput(
            codes=none, status="optimal" if ok else "error",
            message="" if ok else "no user may take any fund, but the demands need users",
            timings={"solve": time.perf_counter() - start},
        )
    try:
        opt = Highs()
        if not opt.available():
            return SolverOutput(codes=none, status="error", message="HiGHS (highspy) is not available")
        opt.config.load_solutions = False
        opt.config.raise_exception_on_nonoptimal_result = False
        opt.config.time_limit = time_limit
        opt.config.rel_gap = mip_gap
        opt.config.threads = threads
        opt.config.solver_options = {**DEFAULT_HIGHS_OPTIONS, **(highs_options or {})}
        if threads is not None:
            # HiGHS keeps one process-wide thread pool; a new thread count needs a fresh one.
            import highspy

            highspy.Highs.resetGlobalScheduler(True)
        if tee:
            opt.config.tee = [sys.stdout]
        opt.set_instance(model)
        loaded = time.perf_counter()
        res = opt.solve(model)
        solved = time.perf_counter()
        term, sol = res.termination_condition, res.solution_status
        stats: dict[str, Any] = {
            "termination": str(getattr(term, "name", term)),
            "objective": res.incumbent_objective,
            "objective_bound": res.objective_bound,
            "highs_time": res.timing_info.value().get("highs_time") if hasattr(res.timing_info, "value") else None,
        }
        timings = {"load": loaded - start, "solve": solved - loaded}
        codes = none.copy()
        if sol in (SolutionStatus.optimal, SolutionStatus.feasible):
            variables, users, funds = _model_pairs(model)
            values = res.solution_loader.get_vars(vars_to_load=variables)
            x = np.fromiter((values[v] for v in variables), dtype=np.float64, count=len(variables))
            chosen = x > _ONE
            codes[users[chosen]] = funds[chosen]
            timings["read"] = time.perf_counter() - solved
        if term == TerminationCondition.convergenceCriteriaSatisfied and sol == SolutionStatus.optimal:
            return SolverOutput(codes=codes, status="optimal", stats=stats, timings=timings)
        if term == TerminationCondition.maxTimeLimit:
            if sol == SolutionStatus.noSolution:
                msg = f"HiGHS found no allocation within the time limit of {time_limit} s"
            else:
                msg = f"time limit of {time_limit} s reached; best allocation found (bound {res.objective_bound})"
            return SolverOutput(codes=codes, status="time_limit", stats=stats, timings=timings, message=msg)
        msg = f"HiGHS stopped with termination {stats['termination']} and solution status {sol.name}"
        if term in (TerminationCondition.provenInfeasible, TerminationCondition.infeasibleOrUnbounded):
            msg += " (the model, with any added constraints, has no feasible allocation)"
        return SolverOutput(codes=codes, status="error", stats=stats, timings=timings, message=msg)
    except Exception as exc:  # HiGHS or the Pyomo interface failed: a status, not a crash
        return SolverOutput(
            codes=none, status="error", message=f"HiGHS failed: {type(exc).__name__}: {exc}",
            timings={"solve": time.perf_counter() - start},
        )


_INFEASIBLE = ("provenInfeasible", "infeasibleOrUnbounded")


def fund_prices(c: CompiledProblem, codes: np.ndarray) -> np.ndarray | None:
    """Optimal fund prices certifying an allocation, or None when the allocation is not optimal.

    The demand rows' duals lambda_j (the ETV lost by one more contracted user of fund j) are any
    solution of the complementary-slackness conditions: every placed user sits at an argmax of
    ``ETV[i, j] - lambda_j`` over eligible funds (and at >= 0 with holdout, an unplaced user at <= 0),
    ``lambda_j <= 0`` where fund j is below its maximum and ``>= 0`` where it is above its minimum. These
    are difference constraints on the k funds plus a zero node, so longest paths (Bellman-Ford on k + 1
    nodes) solve them; a positive cycle means the allocation is not optimal. Cost: one pass over the grid.

    With these prices ``eoca.dual_bound(c, prices)`` equals the allocation's ETV.
    """
    k = c.n_funds
    z = k  # the zero node: lambda_z = 0
    w = np.full((k + 1, k + 1), -np.inf)  # w[a, b]: need lambda_b >= lambda_a + w[a, b]
    codes = np.asarray(codes)
    placed_count = np.bincount(codes[codes >= 0], minlength=k)
    for a in range(-1, k):
        members = np.flatnonzero(codes == a)
        if members.size == 0:
            continue
        etv = c.etv[members]
        eligible = c.eligible(members)
        own = etv[:, a] if a >= 0 else np.zeros(members.size)
        gain = np.where(eligible, etv - own[:, None], -np.inf).max(axis=0)
        src = a if a >= 0 else z
        w[src, :k] = np.maximum(w[src, :k], gain)
        if a >= 0 and c.holdout:
            w[a, z] = max(w[a, z], float(-own.min()))  # a placed user must not prefer no fund
    w[np.arange(k), np.arange(k)] = -np.inf
    below_max = placed_count < c.demand_max
    above_min = placed_count > c.demand_min
    w[np.flatnonzero(below_max), z] = np.maximum(w[np.flatnonzero(below_max), z], 0.0)  # lambda_j <= 0
    w[z, np.flatnonzero(above_min)] = np.maximum(w[z, np.flatnonzero(above_min)], 0.0)  # lambda_j >= 0

    scale = max(1.0, float(np.abs(c.etv).max(initial=0.0)))
    tol = 1e-12 * scale  # ties make zero-weight cycles whose float sums can come out at +1e-16
    dist = np.zeros(k + 1)
    finite = np.isfinite(w)
    for _ in range(k + 2):
        cand = np.where(finite, dist[:, None] + w, -np.inf).max(axis=0)
        better = cand > dist + tol
        if not better.any():
            break
        dist = np.where(better, cand, dist)
    else:
        return None  # a positive cycle: some users could trade funds for more ETV
    slack = np.where(finite, dist[None, :] - dist[:, None] - w, 0.0)
    if slack.min(initial=0.0) < -1e-9 * scale:
        return None
    prices = dist[:k] - dist[z]
    return prices


def _check_positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    if value is None:
        return
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = isinstance(value, kinds) and not isinstance(value, bool | np.bool_) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        what = "a positive integer" if integer else ("a non-negative number" if allow_zero else "a positive number")
        raise ValidationError(name, f"must be {what} or None; got {value!r}")


@register_solver
class IPSolver(Solver):
    """The allocation as a binary integer program (paper eqs. 1-5), built with Pyomo, solved by HiGHS.

    The constraint matrix is totally unimodular (a transportation problem), so HiGHS settles it at the
    root node; the model is exposed through :func:`build_model` for users who add their own rules.

    Options
    -------
    time_limit : float, optional
        Seconds HiGHS may run; the best allocation found by then comes back with status "time_limit"
        (no allocation, all users unplaced, when HiGHS found none).
    mip_gap : float, optional
        Relative gap at which HiGHS stops (its default 1e-4 when None).
    threads : int, optional
        Threads HiGHS may use (its default when None).

    Status "optimal" only when HiGHS proves optimality and :func:`fund_prices` finds prices that certify
    it (``result.bound`` then equals the ETV); an allocation HiGHS accepted within its gap that is not
    exactly optimal is "feasible", with a message.
    Timings: ``build`` (Pyomo model), ``load`` (model handed to HiGHS), ``solve`` (HiGHS), ``read``.
    """

    name = "ip"
    supports = FEATURES
    description = "Pyomo binary model of eqs. 1-5 solved by HiGHS; build_model() lets users add rules"
    options = {"time_limit": None, "mip_gap": None, "threads": None}
    requires = ("pyomo", "highspy")
    install_hint = 'pip install "eoca[ip]"'

    def validate_settings(self) -> None:
        _check_positive("time_limit", self.settings["time_limit"])
        _check_positive("mip_gap", self.settings["mip_gap"], allow_zero=True)
        _check_positive("threads", self.settings["threads"], integer=True)

    def run(self, problem: AllocationProblem) -> SolverOutput:
        c = problem.compile()
        start = time.perf_counter()
        try:
            model = build_model(problem)
        except Exception as exc:
            return SolverOutput(
                codes=np.full(c.n_users, -1, dtype=np.int32), status="error",
                message=f"building the Pyomo model failed: {type(exc).__name__}: {exc}",
            )
        built = time.perf_counter() - start
        out = solve_model(
            model,
            time_limit=self.settings["time_limit"],
            mip_gap=self.settings["mip_gap"],
            threads=self.settings["threads"],
        )
        out.timings = {"build": built, **out.timings}
        out.stats.update(variables=len(model.assign), constraints=c.n_users + c.n_funds + len(c.constraints))
        if out.status == "error" and c.constraints and out.stats.get("termination") in _INFEASIBLE:
            # the declared problem (not a user's added rows: run() builds the model itself) has no
            # allocation: name the side constraints that cannot hold together
            message = core_message(c, infeasible_core(c))
            if message is not None:
                out.status, out.message = "infeasible", message
        elif out.status == "optimal" and c.constraints:
            # side constraints: the duals of the LP relaxation bound the optimum (their gap, if any, is
            # the integrality gap the checker reports; HiGHS's own claim is not the certificate)
            start = time.perf_counter()
            lp = lp_relaxation(c)
            if lp is None:  # HiGHS accepted a model its own rows make infeasible (one without variables)
                out.status, out.message = "infeasible", core_message(c, infeasible_core(c)) or "no allocation"
            else:
                out.prices, out.multipliers = lp[1], lp[2]
                out.stats["lp_objective"] = lp[0]
                found, proven = out.stats.get("objective"), out.stats.get("objective_bound")
                if found is not None and proven is not None and lp[0] > found + 1e-9 * max(1.0, abs(lp[0])):
                    out.message = (f"HiGHS proves no integer allocation better (its bound {proven:.6g}); the "
                                   f"bound eoca certifies is the LP relaxation's, {lp[0]:.6g}")
            out.timings["prices"] = time.perf_counter() - start
        elif out.status == "optimal":
            start = time.perf_counter()
            out.prices = fund_prices(c, out.codes)
            out.timings["prices"] = time.perf_counter() - start
            if out.prices is None:
                out.status = "feasible"
                out.message = (
                    "HiGHS stopped within its optimality gap; the allocation is not exactly optimal"
                    + (f" (mip_gap={self.settings['mip_gap']})" if self.settings["mip_gap"] is not None else "")
                )
        return out
