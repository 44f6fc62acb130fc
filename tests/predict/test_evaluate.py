import numpy as np
import pandas as pd
import pytest
import xarray as xr

from eoca.data import PlatformData
from eoca.predict import evaluate
from eoca.predict.evaluate import normalized_gini


def _platform():
    users = pd.DataFrame({"user_id": ["a", "b", "c"], "x": [0.0, 1.0, 2.0]})
    funds = pd.DataFrame({"fund_id": ["f", "g"], "r": [1, 2]})
    imps = pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "c"],
            "fund_id": ["f", "g", "g", "f"],
            "click": [1, 1, 1, 0],
            "conversion": [1, 0, 1, 0],
            "amount": [100.0, 0.0, 40.0, 0.0],
        }
    )
    return PlatformData(users, funds, imps)


def _grid(values):
    return xr.DataArray(
        np.array(values, float), dims=("user", "fund"), coords={"user": ["a", "b", "c"], "fund": ["f", "g"]}
    )


def test_thc_tha_and_errors_by_hand():
    data = _platform()
    # top funds: a->f, b->g, c->g ; hits: (a,f) converted 100, (b,g) converted 40; (c,f) is not a hit
    report = evaluate(_grid([[90, 10], [5, 30], [1, 2]]), data)
    assert report["thc"] == 2 and report["tha"] == 140 and report["hits"] == 2
    # ETV at impressions: 90, 10, 30, 1 vs 100, 0, 40, 0
    assert report["mse"] == pytest.approx((100 + 100 + 100 + 1) / 4)
    assert report["mae"] == pytest.approx((10 + 10 + 10 + 1) / 4)
    assert np.isnan(report["auc"])  # a bare grid has no pCTCVR
    # a grid that puts a on g misses the 100
    assert evaluate(_grid([[1, 10], [5, 30], [1, 2]]), data)["tha"] == 40


def test_truth_metrics():
    data = _platform()
    truth = _grid([[50, 20], [10, 30], [3, 4]])
    report = evaluate(_grid([[50, 20], [30, 10], [3, 4]]), data, truth=truth)
    assert report["oracle_tha"] == 50 + 30 + 4
    assert report["true_tha"] == 50 + 10 + 4
    assert report["tha_ratio"] == pytest.approx(64 / 84)
    assert report["true_mae"] == pytest.approx(40 / 6)


def test_gini_and_calibration():
    y = np.array([0, 0, 5, 10, 0, 20.0])
    assert normalized_gini(y, y) == pytest.approx(1.0)
    assert normalized_gini(y, -y) < 0
    report = evaluate(_grid([[100, 0], [0, 40], [0, 0]]), _platform())
    cal = report.calibration
    assert cal["n"].sum() == 4
    assert (cal["mean_etv"] * cal["n"]).sum() == pytest.approx(140)


def test_misaligned_grid_is_rejected():
    bad = xr.DataArray(
        np.zeros((2, 2)), dims=("user", "fund"), coords={"user": ["a", "b"], "fund": ["f", "g"]}
    )
    with pytest.raises(ValueError, match="'c'"):
        evaluate(bad, _platform())


def test_the_decision_value_leaves_torchs_thread_count_as_it_was(tiny):
    """The allocation's numba kernels share PyTorch's OpenMP runtime and may set its thread count on their
    first parallel call; a model trained after evaluate() must train on the threads the user chose."""
    import torch

    platform, (_, _, test) = tiny
    before = torch.get_num_threads()

    def value(grid):
        torch.set_num_threads(before + 1)  # what the OpenMP runtime's first parallel region can do
        return 0.5

    report = evaluate(platform.true_etv, test, truth=platform, allocation_value=value)
    assert report["allocation_value_ratio"] == 0.5
    assert torch.get_num_threads() == before
    evaluate(platform.true_etv, test, truth=platform)  # the decision value eoca installs
    assert torch.get_num_threads() == before
