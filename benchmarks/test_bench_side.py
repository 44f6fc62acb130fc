"""Side constraints at scale: the exact solve of a delivery with an eligibility mask and six business rules
against the same delivery without them, side by side in one run (run: ``python -m pytest benchmarks -k
side -s``).

Goals (issue 17), at 1M users x 8 funds with a 90% mask and 6 constraints (quotas at least / at most, a
per-user and a per-pair budget; ``eoca.instances.constrained_problem``):
- relative gap <= 1e-5, certified from the result's prices and multipliers by ``eoca.testing`` (plain
  numpy, no code shared with the solver or the library's checker);
- every constraint and the mask met, recounted the same way;
- time <= 30x the same solve without the side rules (the grid, demands and risk alone), each the median of
  three warm runs taken in turns.
Each test records the times, ratio, gap, rounds and working users in the benchmark's extra_info and
prints one line; docs/benchmarks/sections/side.md holds the figures of the last run.
"""

from __future__ import annotations

import numpy as np
import pytest

import eoca
from eoca.bench.side import plain_delivery, side_by_side
from eoca.instances import constrained_problem
from eoca.testing import dual_value, recount

TIME_RATIO = 30
GAP = 1e-5


@pytest.fixture(scope="module", autouse=True)
def warm():
    """Pay the one-off JIT compile (cached on disk afterwards) before anything is timed."""
    from eoca.solvers import _tuning

    eoca.solve(constrained_problem(20_000, 8, seed=1))  # the restricted LPs
    eoca.solve(constrained_problem(_tuning.DUAL_USERS, 8, seed=1))  # the smoothed dual
    eoca.solve(plain_delivery(constrained_problem(60_000, 8, seed=1)))


@pytest.mark.parametrize("n_users", [200_000, 1_000_000, 10_000_000], ids=["200k", "1M", "10M"])
def test_side_constraints_against_the_plain_solve(benchmark, n_users):
    problem = constrained_problem(n_users, 8, seed=0, eligible_share=0.9)
    plain = plain_delivery(problem)
    # three warm runs of each, in turns, so that the machine's drift weighs on both alike; the medians
    side_s, result, plain_s, free = benchmark.pedantic(side_by_side, args=(problem, plain), rounds=1, iterations=1)

    again = recount(problem, result.codes)  # every rule, the mask and the constraints, recounted
    assert again.ok, again
    certified = dual_value(problem, result.prices.values, result.multipliers)
    gap = (certified - again.objective) / abs(again.objective)
    ratio = side_s / plain_s
    info = dict(plain_s=plain_s, side_s=side_s, ratio=ratio, gap=gap, status=result.status.value,
                objective_lost=1 - again.objective / free.objective, method=result.stats["method"],
                **{key: result.stats[key] for key in ("rounds", "largest_lp_users", "passes", "full_passes",
                                                     "sample_passes", "largest_active", "settled_users", "settle_s")
                   if key in result.stats})
    benchmark.extra_info.update(info)
    print(f"\n{n_users:,} users: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in info.items()))
    assert np.isfinite(gap) and -1e-9 <= gap <= GAP, gap
    assert ratio <= TIME_RATIO, f"side rules {side_s:.2f}s against {plain_s:.3f}s plain: {ratio:.0f}x (goal {TIME_RATIO}x)"
