import numpy as np
import pytest
import torch
from fast_settings import FAST

from eoca.data import DataValidationError, PlatformData
from eoca.predict import ETVPredictor, NotFittedError, PredictorSettingError, TrainingDivergedError
from eoca.predict.train import load_checkpoint, train_network


def test_not_fitted_is_a_clear_error(tiny):
    _, (train, _, test) = tiny
    with pytest.raises(NotFittedError, match="not fitted yet"):
        ETVPredictor().predict(test)
    with pytest.raises(NotFittedError):
        ETVPredictor().quantiles(test, 0.5)


def test_bad_settings_name_the_parameter(tiny):
    _, (train, _, _) = tiny
    with pytest.raises(PredictorSettingError, match="'model'.*esdpm-ncg.*Got 'xgboost'"):
        ETVPredictor("xgboost").fit(train)
    with pytest.raises(PredictorSettingError, match="cannot train model 'mtl-mse'"):
        ETVPredictor("mtl-mse", loss="esj").fit(train)
    with pytest.raises(PredictorSettingError, match="'batch_size'"):
        ETVPredictor(batch_size=0).fit(train)
    with pytest.raises(DataValidationError, match="PlatformData"):
        ETVPredictor().fit(train.impressions)
    assert issubclass(PredictorSettingError, ValueError)


def test_graph_model_without_payments_says_what_to_do(tiny):
    _, (train, _, _) = tiny
    no_graph = PlatformData(train.users, train.funds, train.impressions, train.behaviours, None)
    with pytest.raises(DataValidationError, match="esdpm-ncg"):
        ETVPredictor("esdpm", **FAST).fit(no_graph)


def test_same_seed_same_model_different_seed_different_model(tiny):
    _, (train, valid, test) = tiny
    a = ETVPredictor("esdpm", seed=1, **FAST).fit(train, validation=valid).predict(test)
    b = ETVPredictor("esdpm", seed=1, **FAST).fit(train, validation=valid).predict(test)
    c = ETVPredictor("esdpm", seed=2, **FAST).fit(train, validation=valid).predict(test)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_save_and_load_round_trip(tiny, tmp_path):
    _, (train, valid, test) = tiny
    ckpt = tmp_path / "best.pt"
    model = ETVPredictor("esdpm", checkpoint_path=str(ckpt), **FAST).fit(train, validation=valid)
    assert ckpt.exists() and "state_dict" in load_checkpoint(ckpt)
    model.save(tmp_path / "model.pt")
    loaded = ETVPredictor.load(tmp_path / "model.pt")
    np.testing.assert_array_equal(model.predict(test), loaded.predict(test))
    assert loaded.get_params() == model.get_params()


def test_quantiles_follow_the_lognormal(tiny):
    _, (train, valid, test) = tiny
    model = ETVPredictor("esdpm-ncg", **FAST).fit(train, validation=valid)
    q = model.quantiles(test, [0.1, 0.5, 0.9])
    assert q.dims == ("quantile", "user", "fund")
    assert (q.sel(quantile=0.1) <= q.sel(quantile=0.5)).all() and (
        q.sel(quantile=0.5) <= q.sel(quantile=0.9)
    ).all()
    comps = model.predict_components(test)
    np.testing.assert_allclose(
        q.sel(quantile=0.5), model.amount_unit_ * np.maximum(np.expm1(comps["mu"].astype(float)), 0), rtol=1e-5
    )
    with pytest.raises(PredictorSettingError, match="sigma"):
        ETVPredictor("mtl-mse", **FAST).fit(train, validation=valid).quantiles(test, 0.5)
    with pytest.raises(PredictorSettingError, match=r"\(0, 1\)"):
        model.quantiles(test, 1.5)


def test_nan_loss_stops_training_with_a_typed_error(tiny):
    _, (train, valid, _) = tiny
    model = ETVPredictor("dnn-c", **FAST).fit(train, validation=valid)
    encoded = model.schema_.encode(train)

    def broken(out, labels):
        return out["p"].sum() * torch.tensor(float("nan"))

    with pytest.raises(TrainingDivergedError, match="epoch 0"):
        train_network(model.network_, broken, encoded, encoded, max_epochs=1, progress=False)


def test_early_stopping_keeps_the_best_epoch(tiny):
    _, (train, valid, _) = tiny
    model = ETVPredictor("dnn-c", max_epochs=30, patience=1, lr=0.05, hidden=16, progress=False).fit(
        train, validation=valid
    )
    h = model.history_
    assert h.val_loss[h.best_epoch] == min(h.val_loss)
    assert h.stopped_early and len(h.val_loss) == h.best_epoch + 2
