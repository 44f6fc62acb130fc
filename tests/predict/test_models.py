import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from fast_settings import FAST

from eoca.predict import MODELS, ETVPredictor, available_models
from eoca.predict.inference import grid_outputs, pairwise_outputs

PAPER_MODELS = [
    "esdpm",
    "esdpm-ncg",
    "dnn-c",
    "dnn-v",
    "shared-bottom",
    "mmoe",
    "esmm",
    "mtl-ziln",
    "mtl-mse",
]


def test_all_paper_models_are_registered():
    assert sorted(available_models()) == sorted(PAPER_MODELS)


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_every_model_fits_and_scores_the_entire_space(name, tiny):
    platform, (train, valid, test) = tiny
    predictor = ETVPredictor(name, **FAST).fit(train, validation=valid)
    grid = predictor.predict(test)
    assert isinstance(grid, xr.DataArray) and grid.name == "etv" and grid.dims == ("user", "fund")
    # every user and fund, not only pairs with impressions
    assert grid.shape == (len(test.users), len(test.funds))
    assert list(grid["user"].values) == list(test.users["user_id"]) and list(grid["fund"].values) == list(
        test.funds["fund_id"]
    )
    assert np.isfinite(grid).all() and (grid >= 0).all()
    comps = predictor.predict_components(test)
    spec = MODELS[name]
    assert ("sigma" in comps) == ("sigma" in spec.tasks)
    assert ("pctr" in comps) == ("ctr" in spec.tasks)
    if "p" in comps:
        assert float(comps["p"].min()) > 0 and float(comps["p"].max()) < 1
    if "pctr" in comps:  # ESMM: pCTCVR = pCTR * pCVR <= pCTR
        assert (comps["p"] <= comps["pctr"] + 1e-7).all()


@pytest.mark.parametrize("name", ["esdpm", "esdpm-ncg", "mmoe", "shared-bottom", "dnn-v"])
def test_batched_inference_equals_per_pair_inference(name, tiny):
    _, (train, valid, test) = tiny
    predictor = ETVPredictor(name, **FAST).fit(train, validation=valid)
    encoded = predictor.schema_.encode(test)
    fast = grid_outputs(predictor.network_, encoded, chunk_users=37)
    slow = pairwise_outputs(predictor.network_, encoded, batch_pairs=101)
    assert fast.keys() == slow.keys()
    for key in fast:
        np.testing.assert_allclose(fast[key], slow[key], rtol=1e-4, atol=1e-5)


def test_graph_model_reads_the_payments_and_the_ncg_model_does_not(tiny):
    _, (train, valid, test) = tiny
    pay = test.payments
    rng = np.random.default_rng(0)
    shuffled = pay.assign(merchant_id=rng.permutation(pay["merchant_id"].to_numpy()))
    other = type(test)(test.users, test.funds, test.impressions, test.behaviours, shuffled)
    with_graph = ETVPredictor("esdpm", **FAST).fit(train, validation=valid)
    without = ETVPredictor("esdpm-ncg", **FAST).fit(train, validation=valid)
    assert not np.allclose(with_graph.predict(test), with_graph.predict(other))
    np.testing.assert_array_equal(without.predict(test), without.predict(other))


def test_esdpm_learns_the_synthetic_truth():
    torch.manual_seed(0)
    from eoca.data import synthetic_platform
    from eoca.predict import evaluate

    platform = synthetic_platform(2000, 6, seed=5)
    train, valid, test = platform.data.split()
    predictor = ETVPredictor("esdpm-ncg", max_epochs=15, progress=False).fit(train, validation=valid)
    report = evaluate(predictor, test, truth=platform)
    assert report["auc"] > 0.6
    # ranking of users by predicted ETV follows the true ETV
    pred = predictor.predict(test).to_numpy().ravel()
    truth = platform.true_etv.sel(user=test.users["user_id"].to_numpy()).to_numpy().ravel()
    assert pd.Series(pred).corr(pd.Series(truth), method="spearman") > 0.45
    assert report["tha_ratio"] > 0.7


def test_a_batch_whose_users_have_no_history_gets_the_start_token_embedding():
    import torch

    from eoca.predict.models import SequenceEncoder

    encoder = SequenceEncoder(n_funds=5, n_actions=3, dim=4, heads=2)
    empty = torch.zeros((3, 0), dtype=torch.int64)  # a platform without behaviours
    padded = torch.zeros((3, 6), dtype=torch.int64)  # users without history among users with some
    out = encoder(empty, empty)
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    torch.testing.assert_close(out, encoder(padded, padded))
