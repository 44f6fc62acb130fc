"""Business rules at scale: the exact solve of a delivery with an eligibility mask and six side constraints
against the same delivery without them, side by side in one run, with the gap certified and every rule
recounted by :mod:`eoca.testing` (plain numpy, no code shared with the solver or the library's checker).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["run_side", "side_by_side", "side_figure", "side_section", "plain_delivery", "timed_solve", "SIDE_INTRO"]

SIDE_INTRO = (
    "The delivery is `eoca.instances.constrained_problem(n, 8)`: a 90% eligibility mask and six rules that bind "
    "or nearly (new users in the two low-risk funds at least, high-value users in the first fund at most, a "
    "group in the riskiest funds at most, a group in the third fund at least, a commission budget per user on "
    "the four middle funds, a cost budget per (user, fund) pair). *Plain* is the same grid, demands and risk "
    "without mask and rules, solved by the same `exact` solver in the same run; each is run three times, in turns, and its median "
    "run is the one shown; "
    "times are the whole `eoca.solve`, checker included. The certified gap is the dual value of the result's "
    "prices and multipliers over the allocation's ETV, both computed by `eoca.testing`, which also recounts "
    "every rule. Under 100,000 users `exact` proves the LP optimum with restricted LPs over the users near the "
    "price boundary; from there on its prices come from Newton's method on the smoothed dual (docs/guide.md, "
    "section 6), and the users nearest a tie are settled by an LP and a small MIP."
)


def plain_delivery(problem):
    """The same delivery without the mask and the side constraints."""
    import eoca

    return eoca.AllocationProblem(
        etv=problem.etv, demand={f: int(d) for f, d in problem.demand_min.to_series().items()},
        risk_level=problem.risk_level.to_series().to_dict(), risk_tolerance=problem.risk_tolerance)


def timed_solve(problem):
    """``eoca.solve`` and its seconds, less any JIT compile it paid."""
    import eoca

    start = time.perf_counter()
    result = eoca.solve(problem)
    return time.perf_counter() - start - result.timings.get("compile", 0.0), result


def side_by_side(problem, plain, rounds: int = 3) -> tuple:
    """The ruled and the plain solve, ``rounds`` times each in turns (plain, ruled, plain, ...), so that a
    shared machine's drift weighs on both alike: ``(side_s, result, plain_s, plain_result)`` of each one's
    median run."""
    side, free = [], []
    for _ in range(rounds):
        free.append(timed_solve(plain))
        side.append(timed_solve(problem))
    (side_s, result), (plain_s, plain_result) = (sorted(runs, key=lambda run: run[0])[len(runs) // 2]
                                                 for runs in (side, free))
    return side_s, result, plain_s, plain_result


def run_side(sizes: Sequence[int], *, n_funds: int = 8, seed: int = 0,
             progress: Callable[[str], None] = print) -> pd.DataFrame:
    """One row per size: plain and ruled seconds and their ratio, the certified gap, whether every rule
    holds, the share of ETV the rules cost, and how the exact method got there."""
    import eoca
    from eoca.instances import constrained_problem
    from eoca.solvers import _tuning
    from eoca.testing import dual_value, recount

    # the one-off JIT compile of both methods (restricted LPs below DUAL_USERS users, the smoothed dual from
    # there on), before timing
    for n in (2_000, _tuning.DUAL_USERS):
        eoca.solve(constrained_problem(n, n_funds, seed=seed + 1))
    rows = []
    for n in sizes:
        progress(f"side rules, {n:,} users")
        problem = constrained_problem(n, n_funds, seed=seed)
        plain = plain_delivery(problem)
        side_s, result, plain_s, free = side_by_side(problem, plain)
        again = recount(problem, result.codes)
        certified = dual_value(problem, result.prices.values, result.multipliers)
        stats = result.stats
        rows.append({
            "n_users": n, "n_funds": n_funds, "plain_seconds": plain_s, "side_seconds": side_s,
            "ratio": side_s / plain_s, "certified_gap": (certified - again.objective) / abs(again.objective),
            "rules_met": bool(again.ok), "etv_lost": 1 - again.objective / free.objective,
            "status": result.status.value, "method": stats.get("method", ""),
            "passes": stats.get("passes", np.nan), "lp_rounds": stats.get("rounds", np.nan),
            "settled_users": stats.get("settled_users", np.nan),
        })
        del problem, plain, result, free
    return pd.DataFrame(rows)


def side_figure(rows: pd.DataFrame, out_dir: str | Path) -> Path:
    """``side.png``: seconds with and without the rules against the number of users (and 30x the plain
    solve, the goal), and the certified gap and the ETV the rules cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    n = rows["n_users"]
    left.plot(n, rows["plain_seconds"], marker="o", label="plain")
    left.plot(n, rows["side_seconds"], marker="o", label="mask + 6 rules")
    left.plot(n, 30 * rows["plain_seconds"], ls="--", color="grey", label="30x plain (goal)")
    left.set_ylabel("eoca.solve seconds")
    right.plot(n, rows["certified_gap"].clip(lower=1e-16), marker="o", label="certified gap")
    right.plot(n, rows["etv_lost"], marker="s", label="ETV lost to the rules")
    right.axhline(1e-5, ls="--", color="grey", label="gap goal 1e-5")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("users (8 funds)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out_dir) / "side.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def side_section(rows: pd.DataFrame, figure: str) -> str:
    table = pd.DataFrame({
        "users": rows["n_users"].map("{:,}".format),
        "plain": rows["plain_seconds"].map("{:.3f} s".format),
        "with the rules": rows["side_seconds"].map("{:.2f} s".format),
        "ratio (goal <= 30x)": rows["ratio"].map("{:.0f}x".format),
        "certified gap (goal <= 1e-5)": rows["certified_gap"].map("{:.1e}".format),
        "rules met": rows["rules_met"].map({True: "all", False: "NO"}),
        "ETV lost to the rules": rows["etv_lost"].map("{:.2%}".format),
        "status": rows["status"],
        "method": rows["method"],
        "settled by MIP": rows["settled_users"].map(lambda v: "" if pd.isna(v) else f"{int(v):,} users"),
    })
    return f"{SIDE_INTRO}\n\n![side]({figure})\n\n{table.to_markdown(index=False)}\n"
