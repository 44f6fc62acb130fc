"""A Dask-backed grid with an eligibility mask is allocated chunk by chunk exactly as in memory, and checked
the same way; with side constraints the exact solver's smoothed-dual method runs each of its reads of every
user as one pass over the chunks, and every rule holds within a certified gap."""

from __future__ import annotations

import numpy as np
import pytest

import eoca
from eoca.instances import constrained_problem
from eoca.io import load_problem, save_problem
from eoca.testing import dual_value, recount

pytest.importorskip("dask")


def _masked(problem, etv=None):
    """The delivery of ``problem`` with its mask but without its side constraints."""
    return eoca.AllocationProblem(
        etv=problem.etv if etv is None else etv,
        demand={f: int(d) for f, d in problem.demand_min.to_series().items()},
        risk_level=problem.risk_level.to_series().to_dict(), risk_tolerance=problem.risk_tolerance,
        eligible=problem.eligible)


@pytest.fixture(scope="module")
def ruled():
    return constrained_problem(12_000, 6, seed=3, eligible_share=0.8)


def test_a_masked_dask_grid_is_allocated_as_in_memory(ruled):
    in_memory = _masked(ruled)
    lazy = _masked(ruled, ruled.etv.chunk({"user": 2_500}))
    assert lazy.compile().is_lazy
    a, b = eoca.solve(in_memory), eoca.solve(lazy)
    assert a.status is b.status is eoca.Status.OPTIMAL
    assert b.checks.ok and b.checks.ineligible == 0
    assert b.objective == pytest.approx(a.objective, rel=1e-12)
    assert b.bound == pytest.approx(a.bound, rel=1e-12)
    # the mask binds: the same delivery without it is worth more
    free = eoca.AllocationProblem(ruled.etv, {f: int(d) for f, d in ruled.demand_min.to_series().items()},
                                  ruled.risk_level.to_series().to_dict(), ruled.risk_tolerance)
    assert eoca.solve(free).objective > a.objective * (1 + 1e-6)


def test_a_masked_zarr_problem_opened_lazily_solves_the_same(ruled, tmp_path):
    problem = _masked(ruled)
    lazy = load_problem(save_problem(problem, tmp_path / "p.zarr"), chunks=3_000)
    assert lazy.compile().is_lazy and lazy.eligible is not None
    assert eoca.solve(lazy).objective == pytest.approx(eoca.solve(problem).objective, rel=1e-12)


def test_the_checker_counts_forbidden_pairs_on_a_dask_grid(ruled):
    lazy = _masked(ruled, ruled.etv.chunk({"user": 2_500}))
    codes = np.array(eoca.solve(lazy).codes)
    forbidden = np.argwhere(~ruled.compile().mask)[:3]
    codes[forbidden[:, 0]] = forbidden[:, 1]
    checks = eoca.check_allocation(lazy, codes)
    assert not checks.ok and checks.ineligible == len(np.unique(forbidden[:, 0]))
    assert "eligibility mask forbids" in checks.describe()


def _lazy(problem, chunk_users=2_500, constraints=None):
    return eoca.AllocationProblem(
        etv=problem.etv.chunk({"user": chunk_users}), demand={f: int(d) for f, d in problem.demand_min.to_series().items()},
        risk_level=problem.risk_level.to_series().to_dict(), risk_tolerance=problem.risk_tolerance,
        eligible=problem.eligible, constraints=list(problem.constraints) if constraints is None else constraints)


def _certified_gap(problem, result) -> float:
    again = recount(problem, result.codes)  # plain numpy from the declaration: every rule and the mask
    assert again.ok, again
    bound = dual_value(problem, result.prices.values, result.multipliers)
    assert result.bound == pytest.approx(bound, rel=1e-12)
    return (bound - again.objective) / abs(again.objective)


def test_side_constraints_on_a_dask_grid_hold_within_a_certified_gap(ruled):
    lazy = _lazy(ruled)
    assert lazy.compile().is_lazy
    result = eoca.solve(lazy)
    assert result.status in (eoca.Status.OPTIMAL, eoca.Status.FEASIBLE), result
    assert result.checks.ok and result.constraints["ok"].all(), result.checks.describe()
    assert result.stats["method"] == "smoothed dual"
    assert -1e-9 <= _certified_gap(ruled, result) <= 1e-5
    # the restricted LPs prove the LP optimum in memory: the same value within the gap
    proven = eoca.solve(ruled)
    assert abs(result.objective - proven.objective) <= 1e-5 * abs(proven.objective)
    assert result.bound >= proven.objective * (1 - 1e-9)


def test_a_zarr_problem_with_rules_opened_lazily_solves_within_the_gap(ruled, tmp_path):
    lazy = load_problem(save_problem(ruled, tmp_path / "rules.zarr"), chunks=3_000)
    assert lazy.compile().is_lazy and len(lazy.constraints) == len(ruled.constraints)
    result = eoca.solve(lazy)
    assert result.checks.ok, result.checks.describe()
    assert -1e-9 <= _certified_gap(ruled, result) <= 1e-5


def test_the_checker_recounts_rules_on_a_dask_grid(ruled):
    lazy = _lazy(ruled)
    result = eoca.solve(lazy)
    codes = np.array(result.codes)
    # move users of the "high value" quota (at most) into its fund until it breaks
    quota = ruled.compile().constraints[1]
    fund = int(np.flatnonzero(quota.fund_weight)[0])
    allowed = ruled.compile().eligible()[:, fund]
    movers = np.flatnonzero((quota.user_weight > 0) & allowed & (codes != fund))[:50]
    codes[movers] = fund
    checks = eoca.check_allocation(lazy, codes)
    assert not checks.ok and quota.name in checks.describe()
    # the dual bound of the certificate is computed chunk by chunk, equal to the one in memory
    assert eoca.dual_bound(lazy.compile(), result.prices.values, result.multipliers) == pytest.approx(
        eoca.dual_bound(ruled.compile(), result.prices.values, result.multipliers), rel=1e-12)


def test_rules_no_allocation_meets_on_a_dask_grid_say_to_load_it(ruled):
    new = ruled.constraints[0]
    impossible = eoca.Quota(users=new.users, funds=new.funds, at_least=10**6, name="too many new users")
    result = eoca.solve(_lazy(ruled, constraints=[impossible]))
    assert not result.ok and result.status is eoca.Status.ERROR
    assert "load the grid into memory" in result.message


def test_side_constraints_on_a_local_cluster(ruled):
    distributed = pytest.importorskip("distributed")
    import dask

    with dask.config.set({"distributed.worker.memory.pause": False}), distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, memory_limit="2GiB", dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        result = eoca.solve(_lazy(ruled))
    assert result.checks.ok, result.checks.describe()
    assert -1e-9 <= _certified_gap(ruled, result) <= 1e-5


def test_the_dask_path_reads_users_in_place_and_meets_a_rule_at_its_extreme(ruled, monkeypatch):
    # holdout, demand ranges and a rule declared at the edge of what users can reach; the users the method
    # gathers into the client (a sample, the users near a tie) stay a minority of the grid
    from eoca.distributed import rules
    from eoca.solvers import _tuning

    gathered = []
    subset = rules.Chunked.subset
    monkeypatch.setattr(rules.Chunked, "subset", lambda self, rows: gathered.append(len(rows)) or subset(self, rows))
    high = ruled.constraints[1]
    problem = eoca.AllocationProblem(
        etv=ruled.etv.chunk({"user": 2_500}), demand={f: (0, 2 * int(d)) for f, d in ruled.demand_min.to_series().items()},
        risk_level=ruled.risk_level.to_series().to_dict(), risk_tolerance=ruled.risk_tolerance, holdout=True,
        eligible=ruled.eligible,
        constraints=[eoca.Quota(users=high.users, funds=high.funds, at_most=0, name="none in the first fund"),
                     *ruled.constraints[2:]])
    result = eoca.solve(problem)
    assert result.ok and result.checks.ok, (result.status, result.message, result.checks.describe())
    assert result.constraints.loc["none in the first fund", "activity"] == 0
    in_memory = eoca.AllocationProblem(
        etv=ruled.etv, demand=problem.demand, risk_level=problem.risk_level.to_series().to_dict(),
        risk_tolerance=ruled.risk_tolerance, holdout=True, eligible=ruled.eligible, constraints=list(problem.constraints))
    assert -1e-9 <= _certified_gap(in_memory, result) <= 1e-5
    assert abs(result.objective - eoca.solve(in_memory).objective) <= 1e-5 * abs(result.objective)
    assert gathered and max(gathered) <= _tuning.DUAL_GATHER * ruled.n_users, gathered
