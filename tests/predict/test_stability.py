"""Predictions an allocation can trust: bounded lognormal heads and a model that does not depend on the
currency unit of the data."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from fast_settings import FAST

from eoca.data import synthetic_platform
from eoca.predict import ETVPredictor, PredictorSettingError, evaluate
from eoca.predict.calibration import MIN_POSITIVES, FundCalibration
from eoca.predict.models import OutputLayer


@pytest.fixture(scope="module")
def tiny():
    platform = synthetic_platform(n_users=400, n_funds=6, seed=3, impressions_per_user=3)
    return platform.data.split()


def _in_unit(data, factor):
    """The same platform with every amount multiplied by ``factor`` (e.g. dollars to cents)."""
    impressions = data.impressions.assign(amount=data.impressions["amount"] * factor)
    payments = data.payments.assign(amount=data.payments["amount"] * factor)
    return dataclasses.replace(data, impressions=impressions, payments=payments)


@pytest.mark.parametrize("with_sigma", [True, False], ids=["lognormal", "regression"])
def test_the_output_bounds_hold_on_adversarial_raw_outputs(with_sigma):
    layer = OutputLayer(sigma_min=0.4, sigma_max=5.0)
    cap = math.log1p(1000.0)
    layer.set_bounds(sigma_max=2.0, log_mean_cap=cap)
    cap = float(layer.log_mean_cap)  # as the network holds it (float32)
    extremes = torch.tensor([-1e6, -50.0, -1.0, 0.0, 1.0, 50.0, 1e6], dtype=torch.float64)
    raw_mu, raw_sigma = torch.meshgrid(extremes, extremes, indexing="ij")
    raw_mu = raw_mu.reshape(-1).clone().requires_grad_(True)
    raw = {"mu": raw_mu, "ctcvr": torch.zeros_like(raw_mu)}
    if with_sigma:
        raw["sigma"] = raw_sigma.reshape(-1)
    out = layer(raw)
    mean_log = out["mu"] + (out["sigma"] ** 2 / 2 if with_sigma else 0.0)
    assert torch.isfinite(mean_log).all()
    assert (mean_log <= cap).all(), float(mean_log.max())
    if with_sigma:
        assert ((out["sigma"] >= 0.4) & (out["sigma"] <= 2.0)).all()
    mean_log.sum().backward()
    assert torch.isfinite(raw_mu.grad).all()
    # well below the cap the tower's output passes through unchanged
    low = layer({"mu": torch.tensor([cap - 20.0], dtype=torch.float64), "sigma": torch.tensor([0.0], dtype=torch.float64)})
    assert float(low["mu"]) == pytest.approx(cap - 20.0, abs=1e-6)
    # without a cap (the earlier releases' network) mu is the raw output
    layer.set_bounds(sigma_max=5.0, log_mean_cap=math.inf)
    assert torch.equal(layer({"mu": raw_mu.detach()})["mu"], raw_mu.detach())


@pytest.mark.parametrize("model", ["esdpm-ncg", "mtl-mse"])
def test_no_prediction_exceeds_the_cap_for_users_unlike_any_in_training(tiny, model):
    train, valid, test = tiny
    predictor = ETVPredictor(model, **FAST).fit(train, validation=valid)
    purchases = train.impressions["amount"][train.impressions["amount"] > 0]
    assert predictor.amount_cap_ == pytest.approx(2 * np.quantile(purchases, 0.999), rel=1e-6)
    # users whose numeric features lie thousands of standard deviations outside the training data
    users = test.users.assign(age=test.users["age"] * 1e4, activity=test.users["activity"] * -1e4)
    far = dataclasses.replace(test, users=users)
    etv = predictor.predict(far).to_numpy()
    assert np.isfinite(etv).all() and (etv >= 0).all()
    assert etv.max() <= predictor.amount_cap_ * (1 + 1e-6), (etv.max(), predictor.amount_cap_)
    if model == "esdpm-ncg":
        comps = predictor.predict_components(far)
        assert float(comps["sigma"].max()) <= predictor.sigma_max_ + 1e-6


def test_sigma_bound_follows_the_spread_of_the_training_amounts(tiny):
    train, valid, _ = tiny
    predictor = ETVPredictor("esdpm-ncg", **FAST).fit(train, validation=valid)
    purchases = train.impressions["amount"][train.impressions["amount"] > 0].to_numpy()
    spread = np.log1p(purchases / np.median(purchases)).std()
    assert predictor.amount_unit_ == pytest.approx(np.median(purchases))
    assert predictor.sigma_max_ == pytest.approx(min(max(2 * spread, predictor.sigma_min + 0.5), 5.0))
    fixed = ETVPredictor("esdpm-ncg", sigma_max=3.0, amount_cap=None, amount_unit=1.0, **FAST).fit(train, validation=valid)
    assert (fixed.amount_unit_, fixed.sigma_max_, fixed.amount_cap_) == (1.0, 3.0, math.inf)
    assert not math.isfinite(float(fixed.network_.output.log_mean_cap))


def test_the_same_data_in_dollars_and_in_cents_gives_the_same_model(tiny):
    train, valid, test = tiny
    dollars = ETVPredictor("esdpm-ncg", **FAST).fit(train, validation=valid)
    cents = ETVPredictor("esdpm-ncg", **FAST).fit(_in_unit(train, 100), validation=_in_unit(valid, 100))
    assert cents.amount_unit_ == pytest.approx(100 * dollars.amount_unit_)
    in_dollars, in_cents = dollars.predict(test).to_numpy(), cents.predict(_in_unit(test, 100)).to_numpy() / 100
    np.testing.assert_allclose(in_cents, in_dollars, rtol=1e-3)
    gini = [evaluate(m, d)["gini"] for m, d in ((dollars, test), (cents, _in_unit(test, 100)))]
    assert abs(gini[0] - gini[1]) < 0.03


@pytest.mark.parametrize(
    "setting", [dict(amount_unit=0), dict(amount_unit="median"), dict(amount_cap=-1.0), dict(amount_cap=math.inf),
                dict(sigma_max="big"), dict(sigma_max=0.1), dict(amount_unit=True), dict(zero_threshold=0.0)],
)
def test_bad_amount_settings_are_refused_by_name(tiny, setting):
    train, valid, _ = tiny
    name = next(iter(setting))
    with pytest.raises(PredictorSettingError, match=name):
        ETVPredictor("esdpm-ncg", **setting, **FAST).fit(train, validation=valid)


def test_the_bounds_travel_with_a_saved_model(tiny, tmp_path):
    train, valid, test = tiny
    predictor = ETVPredictor("esdpm-ncg", **FAST).fit(train, validation=valid)
    predictor.save(tmp_path / "model.pt")
    loaded = ETVPredictor.load(tmp_path / "model.pt")
    assert (loaded.amount_unit_, loaded.sigma_max_, loaded.amount_cap_) == (
        predictor.amount_unit_, predictor.sigma_max_, predictor.amount_cap_)
    assert float(loaded.network_.output.log_mean_cap) == float(predictor.network_.output.log_mean_cap)
    np.testing.assert_array_equal(loaded.predict(test), predictor.predict(test))


def test_fund_calibration_recovers_a_known_per_fund_bias():
    rng = np.random.default_rng(0)
    funds, bias = np.array(["A", "B", "C", "D"]), np.array([1.0, 1.4, 0.6, 2.0])
    fund = rng.integers(0, 4, size=40_000)
    etv = rng.gamma(0.5, 20.0, size=fund.size)
    amount = bias[fund] * etv * rng.gamma(4.0, 0.25, size=fund.size)  # noise of mean 1
    factors = FundCalibration.fit("fund", funds, etv, amount, fund).factors
    np.testing.assert_allclose(factors, bias, rtol=0.03)
    # the isotonic map follows each fund's bias too, and is non-decreasing
    iso = FundCalibration.fit("isotonic", funds, etv, amount, fund)
    grid = np.tile(np.linspace(1.0, 30.0, 50)[:, None], (1, 4))
    mapped = iso.apply(grid.copy(), funds)
    assert (np.diff(mapped, axis=0) >= 0).all()
    np.testing.assert_allclose(mapped.mean(axis=0) / grid.mean(axis=0), bias, rtol=0.15)
    # columns follow the fund ids given, and a fund the calibration never saw is left as predicted
    shuffled = iso.apply(grid.copy(), np.array(["D", "Z", "A", "B"]))
    np.testing.assert_array_equal(shuffled[:, 0], mapped[:, 3])
    np.testing.assert_array_equal(shuffled[:, 1], grid[:, 1])


def test_fund_factors_pool_what_the_held_out_data_cannot_tell_apart():
    """Four funds with the same true bias (1.3) and heavy-tailed amounts: their raw held-out ratios differ
    by noise alone, and the pooled factors keep at most that share of each deviation from the common
    level; a fund with too few purchases takes the common level itself."""
    rng = np.random.default_rng(5)
    funds = np.array(["A", "B", "C", "D", "E"])
    fund = rng.integers(0, 4, size=8_000)
    fund[:40] = 4
    etv = rng.gamma(0.5, 20.0, size=fund.size)
    bought = rng.random(fund.size) < 0.2
    bought[:40] = np.arange(40) < MIN_POSITIVES - 1  # fund E: one purchase short of being fitted
    amount = np.where(bought, 1.3 * etv / 0.2 * rng.lognormal(-0.72, 1.2, size=fund.size), 0.0)
    factors = FundCalibration.fit("fund", funds, etv, amount, fund).factors
    ratio = np.array([amount[fund == j].sum() / etv[fund == j].sum() for j in range(4)])
    level = math.log(factors[4])
    common = np.log(ratio).mean()
    assert np.ptp(np.log(factors[:4])) < 0.5 * np.ptp(np.log(ratio))  # the noise is mostly pooled away
    assert abs(level - math.log(1.3)) < 0.2 and abs(level - common) < 0.1, (level, common)
    # one fund alone: its own log-ratio, shrunk towards 0 by its standard error
    one = fund == 0
    alone = FundCalibration.fit("fund", funds[:1], etv[one], amount[one], np.zeros(one.sum(), int)).factors
    r = ratio[0]
    var = ((amount[one] - r * etv[one]) ** 2).sum() / amount[one].sum() ** 2
    assert alone[0] == pytest.approx(math.exp(math.log(r) ** 3 / (math.log(r) ** 2 + var)), rel=1e-9)


@pytest.mark.parametrize("calibrate_on", ["all", "validation"])
def test_a_calibrated_predictor_scales_each_fund_to_its_held_out_amounts(tmp_path, calibrate_on):
    platform = synthetic_platform(n_users=3000, n_funds=4, seed=3, impressions_per_user=4)
    train, valid, test = platform.data.split()
    plain = ETVPredictor("mtl-mse", **FAST).fit(train, validation=valid)
    calibrated = ETVPredictor("mtl-mse", calibration="fund", calibrate_on=calibrate_on, **FAST).fit(
        train, validation=valid)
    # the factors pool the funds' log-ratios (amounts over the ETV of the same network, on the impressions
    # chosen): a precision-weighted mean, shrunk towards 0 by its standard error, plus each fund's own
    # deviation in the share the spread between funds has beyond their noise (recomputed here with pandas)
    frames = []
    for part in [valid, train] if calibrate_on == "all" else [valid]:
        imps = part.impressions
        grid = plain.predict(part)
        etv = grid.sel(user=xr.DataArray(imps["user_id"].to_numpy()),
                       fund=xr.DataArray(imps["fund_id"].to_numpy())).to_numpy()
        frames.append(pd.DataFrame({"fund": imps["fund_id"].to_numpy(), "etv": etv, "amount": imps["amount"].to_numpy()}))
    held = pd.concat(frames, ignore_index=True)
    funds = valid.funds["fund_id"].to_numpy()
    sums = held.groupby("fund").agg(etv=("etv", "sum"), amount=("amount", "sum"),
                                    positives=("amount", lambda a: int((a > 0).sum()))).reindex(funds)
    enough = (sums["positives"] >= MIN_POSITIVES).to_numpy()
    assert enough.sum() >= 2
    ratio = sums["amount"] / sums["etv"]
    resid2 = (held["amount"] - held["fund"].map(ratio) * held["etv"]) ** 2
    var = resid2.groupby(held["fund"]).sum().reindex(funds) / sums["amount"] ** 2
    lr, v = np.log(ratio[enough]), var[enough]
    fixed = (lr / v).sum() / (1 / v).sum()
    q = ((lr - fixed) ** 2 / v).sum()
    tau2 = max(0.0, (q - (len(lr) - 1)) / ((1 / v).sum() - (1 / v**2).sum() / (1 / v).sum()))
    m = (lr / (v + tau2)).sum() / (1 / (v + tau2)).sum()  # the random-effects mean
    level = m**3 / (m**2 + 1 / (1 / (v + tau2)).sum())
    expected = np.full(len(funds), np.exp(level))
    expected[enough] = np.exp(level + tau2 / (tau2 + v) * (lr - level))
    assert np.abs(expected - 1).max() > 0.01  # some fund is corrected
    np.testing.assert_allclose(calibrated.calibration_.factors, expected, rtol=1e-6)
    scale = calibrated.predict(test) / plain.predict(test)
    np.testing.assert_allclose(scale.max("user"), scale.min("user"), rtol=1e-9)
    np.testing.assert_allclose(scale.sel(fund=funds).isel(user=0), expected, rtol=1e-6)
    # on the impressions it was fitted on, what is left of each fund's log-ratio is its distance from the
    # common level shrunk by the fund's weight: never more than that distance
    after = np.log(ratio[enough] / expected[enough])
    assert (np.abs(after) <= np.abs(lr - level) + 1e-9).all(), (lr, after)
    calibrated.save(tmp_path / "calibrated.pt")
    np.testing.assert_array_equal(ETVPredictor.load(tmp_path / "calibrated.pt").predict(test), calibrated.predict(test))


def test_calibration_by_fund_counts_the_impressions_of_each_fund(tiny):
    train, valid, test = tiny
    predictor = ETVPredictor("mtl-mse", **FAST).fit(train, validation=valid)
    table = evaluate(predictor, test).calibration_by_fund
    grid = predictor.predict(test)
    imps = test.impressions.assign(
        etv=grid.sel(user=xr.DataArray(test.impressions["user_id"].to_numpy()),
                     fund=xr.DataArray(test.impressions["fund_id"].to_numpy())).to_numpy())
    expected = imps.groupby("fund_id").agg(n=("amount", "size"), positives=("amount", lambda a: int((a > 0).sum())),
                                           mean_etv=("etv", "mean"), mean_amount=("amount", "mean"))
    expected = expected.reindex(test.funds["fund_id"].to_numpy())
    np.testing.assert_array_equal(table["n"], expected["n"])
    np.testing.assert_array_equal(table["positives"], expected["positives"])
    np.testing.assert_allclose(table["mean_etv"], expected["mean_etv"], rtol=1e-9)
    bought = expected["mean_amount"] > 0
    assert (~bought).any() and bought.any()  # a fund without a purchase has no ratio
    np.testing.assert_allclose(table["ratio"][bought], (expected["mean_etv"] / expected["mean_amount"])[bought], rtol=1e-9)
    assert table["ratio"][~bought].isna().all()
    with pytest.raises(PredictorSettingError, match="calibration"):
        ETVPredictor("mtl-mse", calibration="per-fund", **FAST).fit(train, validation=valid)
    with pytest.raises(PredictorSettingError, match="calibrate_on.*'training'"):
        ETVPredictor("mtl-mse", calibration="fund", calibrate_on="training", **FAST).fit(train, validation=valid)


def test_the_censored_esj_trains_a_lognormal_model_within_the_bounds(tiny):
    train, valid, test = tiny
    model = ETVPredictor("esdpm-ncg", loss="esj-censored", **FAST).fit(train, validation=valid)
    assert model.loss_ == "esj-censored" and np.isfinite(model.history_.train_loss).all()
    etv = model.predict(test).to_numpy()
    assert np.isfinite(etv).all() and (etv >= 0).all() and etv.max() <= model.amount_cap_ * (1 + 1e-6)


def test_a_platform_without_behaviours_trains_a_sequence_model():
    from eoca.data import load_randhie

    train, valid, test = load_randhie(n_users=400).split((0.7, 0.1, 0.2), seed=0)
    assert train.behaviours is None
    model = ETVPredictor("esdpm-ncg", loss="esj-censored", **FAST).fit(train, validation=valid)
    etv = model.predict(test).to_numpy()
    assert np.isfinite(etv).all() and (etv >= 0).all() and etv.max() <= model.amount_cap_ * (1 + 1e-6)
