"""Simulated deliveries, the A/B suite and the end-to-end demo, at toy sizes."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import xarray as xr

pytest.importorskip("torch")

import eoca  # noqa: E402
from eoca.data import synthetic_platform  # noqa: E402
from eoca.simulate import (  # noqa: E402
    allocation_value_ratio,
    contract_demands,
    delivery_problem,
    lift_table,
    simulate_delivery,
)


@pytest.fixture(scope="module")
def platform():
    return synthetic_platform(n_users=400, n_funds=8, seed=3)


def test_contract_demands_are_feasible_under_the_risk_rule(platform):
    users, funds = platform.data.users, platform.data.funds
    demand = contract_demands(users["risk_tolerance"].to_numpy(), funds["risk_level"].to_numpy(), seed=1)
    reachable = (users["risk_tolerance"] >= funds["risk_level"].min()).sum()
    assert demand.sum() == reachable
    problem = delivery_problem(platform, platform.true_etv, demand)
    assert problem.diagnose().feasible


def test_simulated_delivery_matches_its_expectation_on_average(platform):
    users, funds = platform.data.users, platform.data.funds
    demand = contract_demands(users["risk_tolerance"].to_numpy(), funds["risk_level"].to_numpy(), seed=1)
    result = eoca.solve(delivery_problem(platform, platform.true_etv, demand))
    draws = [simulate_delivery(platform, result.assignment, seed=s) for s in range(200)]
    mean_amount = np.mean([d.amount for d in draws])
    assert draws[0].deliveries == result.problem.n_users
    assert draws[0].expected_amount == pytest.approx(result.objective)  # the grid is the true ETV here
    assert mean_amount == pytest.approx(draws[0].expected_amount, rel=0.1)
    assert draws[0].tapmd == pytest.approx(1000 * draws[0].amount / draws[0].deliveries)


def test_optimal_allocation_of_true_etv_beats_the_manual_one_in_expectation(platform):
    users, funds = platform.data.users, platform.data.funds
    demand = contract_demands(users["risk_tolerance"].to_numpy(), funds["risk_level"].to_numpy(), seed=1)
    problem = delivery_problem(platform, platform.true_etv, demand)
    best = simulate_delivery(platform, eoca.solve(problem).assignment)
    manual = simulate_delivery(platform, eoca.solve(problem, solver="manual").assignment)
    assert best.expected_tapmd > manual.expected_tapmd


def test_undelivered_users_are_not_counted(platform):
    users = platform.data.users["user_id"].to_numpy()
    fund = platform.data.funds["fund_id"].iloc[0]
    assignment = xr.DataArray(np.array([fund] * 10 + [None] * (len(users) - 10), dtype=object),
                              dims="user", coords={"user": users})
    assert simulate_delivery(platform, assignment).deliveries == 10


def test_lift_table_is_paired_per_seed():
    rows = pd.DataFrame({
        "seed": [0, 0, 1, 1], "framework": ["base", "new", "base", "new"],
        "cpmd": [10.0, 11.0, 20.0, 24.0], "tapmd": [100.0, 100.0, 200.0, 220.0],
    })
    table = lift_table(rows, baseline="base").set_index("framework")
    assert table.loc["new", "cpmd_lift_%"] == pytest.approx(15.0)  # mean of +10% and +20%
    assert table.loc["new", "tapmd_lift_%"] == pytest.approx(5.0)
    assert table.loc["base", "cpmd_lift_%"] == 0.0


def test_ab_suite_and_demo_run_end_to_end(tmp_path):
    import torch

    from eoca.bench.abtest import ab_figure, ab_section, run_ab_test
    from eoca.demo import run_demo

    torch.set_num_threads(1)
    rows = run_ab_test([0, 1], n_users=300, epochs=1, progress=lambda m: None)
    assert set(rows["framework"]) == {"ESMM + manual", "ESMM + heuristic", "ESDPM-NCG + heuristic",
                                      "ESDPM + heuristic", "ESDPM + exact"}
    exact = rows[rows["framework"] == "ESDPM + exact"]
    assert (exact["status"] == "optimal").all() and (exact["risk_violations"] == 0).all()
    assert ((rows["value_ratio"] > 0) & (rows["value_ratio"] <= 1 + 1e-12)).all()
    # where both deliver every user, the value ratios' quotient is the expected-TAPMD lift
    base = rows[rows["framework"] == "ESDPM + heuristic"].set_index("seed")
    best = exact.set_index("seed")
    same = base["deliveries"] == best["deliveries"]
    assert same.any()
    np.testing.assert_allclose((best["value_ratio"] / base["value_ratio"])[same],
                               (best["expected_tapmd"] / base["expected_tapmd"])[same], rtol=1e-9)
    text = ab_section(rows, n_users=300, epochs=1, figure=ab_figure(rows, tmp_path).name)
    assert "%TAPMD lift" in text and "ab_lifts.png" in text and "value ratio" in text

    lines = []
    table = run_demo(n_users=500, epochs=1, progress=False, echo=lines.append)
    assert {"exact", "heuristic", "heuristic-paper", "manual"} <= set(table.index)
    assert table.loc["exact", "status"] == "optimal"
    assert table.loc["exact", "predicted ETV"] >= table.loc["heuristic", "predicted ETV"]
    assert any("simulated delivery" in line for line in lines)


def test_allocation_value_ratio_is_one_for_the_truth_and_lower_for_worse_grids():
    from functools import partial

    from eoca.predict import evaluate

    platform = synthetic_platform(n_users=2000, n_funds=4, seed=0)
    truth = platform.true_etv
    rng = np.random.default_rng(0)
    shuffled = truth.copy(data=rng.permutation(truth.values.ravel()).reshape(truth.shape))
    noisy = truth * np.exp(rng.normal(0.0, 0.5, truth.shape))
    ratios = [allocation_value_ratio(platform, grid) for grid in (truth, noisy, shuffled)]
    assert ratios[0] == pytest.approx(1.0, abs=1e-12)
    assert 0.9 < ratios[1] < 1.0 - 1e-4 and ratios[2] < ratios[1] and ratios[2] < 0.95, ratios
    # the value of the model's allocation, recounted: the truth at the pairs the exact solve of the noisy grid picks
    users, funds = platform.data.users, platform.data.funds
    demand = contract_demands(users["risk_tolerance"].to_numpy(), funds["risk_level"].to_numpy(), seed=0)
    chosen = eoca.solve(delivery_problem(platform, noisy, demand)).assignment.dropna("user")
    best = eoca.solve(delivery_problem(platform, truth, demand)).objective
    rows = pd.Index(truth["user"].values).get_indexer(chosen["user"].values)
    cols = pd.Index(truth["fund"].values).get_indexer(chosen.values)
    assert ratios[1] == pytest.approx(truth.values[rows, cols].sum() / best, rel=1e-12)
    _, _, test = platform.data.split()
    # evaluate(..., truth=platform) reports it by itself (the decision value eoca installs), and an explicit
    # allocation_value (another contract) takes its place
    assert evaluate(noisy, test, truth=platform)["allocation_value_ratio"] == pytest.approx(ratios[1], rel=1e-12)
    assert evaluate(truth, test, truth=platform)["allocation_value_ratio"] == pytest.approx(1.0, abs=1e-12)
    other = contract_demands(users["risk_tolerance"].to_numpy(), funds["risk_level"].to_numpy(), seed=1)
    report = evaluate(noisy, test, truth=platform,
                      allocation_value=partial(allocation_value_ratio, platform, demand=other))
    assert report["allocation_value_ratio"] == pytest.approx(allocation_value_ratio(platform, noisy, demand=other),
                                                             rel=1e-12)
    assert report["allocation_value_ratio"] != pytest.approx(ratios[1], rel=1e-6)
    # without the decision value (the predictor alone, as eoca.data sees it) the metric is absent, not made up
    from eoca.data import synthetic

    installed = synthetic.decision_value()
    synthetic.set_decision_value(None)
    try:
        assert "allocation_value_ratio" not in evaluate(noisy, test, truth=platform).metrics
    finally:
        synthetic.set_decision_value(installed)
    assert "allocation_value_ratio" not in evaluate(noisy, test, truth=truth).metrics  # a bare grid has no contract
    # a grid that does not price the whole platform (some users, a negative entry) has no value to report:
    # the other metrics come back, the decision value is left out rather than failing the evaluation
    half = users["user_id"].to_numpy()[: len(users) // 2]
    part = dataclasses.replace(test, **{name: getattr(test, name)[getattr(test, name)["user_id"].isin(half)]
                                        for name in ("users", "impressions", "behaviours", "payments")})
    assert "allocation_value_ratio" not in evaluate(noisy.sel(user=half), part, truth=platform).metrics
    broken = noisy.copy()
    broken[0, 0] = -1.0
    assert "allocation_value_ratio" not in evaluate(broken, test, truth=platform).metrics
