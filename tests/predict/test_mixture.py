"""A mixture of lognormals for the amount: its likelihoods, its ETV and quantiles against Monte-Carlo."""

import math

import numpy as np
import pytest
import torch
from fast_settings import FAST
from scipy import stats

from eoca.data import synthetic_platform
from eoca.predict import ETVPredictor, PredictorSettingError, esj_censored_loss, esj_loss, ziln_loss
from eoca.predict.mixture import mixture_quantiles

T = torch.tensor


@pytest.fixture(scope="module")
def mixture_model():
    platform = synthetic_platform(n_users=400, n_funds=4, seed=3, impressions_per_user=3)
    train, valid, test = platform.data.split()
    model = ETVPredictor("esdpm-ncg", n_components=2, **FAST).fit(train, validation=valid)
    return model, test


@pytest.mark.parametrize("loss", [esj_loss, ziln_loss, esj_censored_loss])
def test_a_mixture_of_identical_components_is_the_single_lognormal(loss):
    p, mu, sigma = T([0.3, 0.6, 0.2]), T([1.0, 4.0, -0.5]), T([0.7, 1.3, 0.9])
    amount = T([0.0, 40.0, 2.5])
    single = loss(p, mu, sigma, amount)
    twice = loss(p, mu[:, None].expand(3, 2), sigma[:, None].expand(3, 2), amount, weights=torch.full((3, 2), 0.5))
    assert float(twice) == pytest.approx(float(single), abs=1e-6)


def test_mixture_likelihoods_by_hand():
    w, mu, sigma = np.array([0.3, 0.7]), np.array([1.0, 3.0]), np.array([0.5, 1.2])
    args = (T([0.4]), T(mu[None]), T(sigma[None]))
    weights = T(w[None])
    # a positive: -(log p + log sum_c w_c N(v; mu_c, sigma_c) - v), v = log(1 + amount)
    amount = 6.0
    v = math.log1p(amount)
    positive = -(math.log(0.4) + math.log((w * stats.norm.pdf(v, mu, sigma)).sum()) - v)
    assert float(esj_loss(*args, T([amount]), weights=weights)) == pytest.approx(positive, rel=1e-5)
    # a negative: -log(1 - p + p sum_c w_c phi(0; mu_c, sigma_c)), and the censored form with Phi
    negative = -math.log(0.6 + 0.4 * (w * stats.norm.pdf(0.0, mu, sigma)).sum())
    assert float(esj_loss(*args, T([0.0]), weights=weights)) == pytest.approx(negative, rel=1e-5)
    below = (w * stats.norm.cdf((math.log1p(0.5) - mu) / sigma)).sum()
    assert float(esj_censored_loss(*args, T([0.0]), 0.5, weights=weights)) == pytest.approx(
        -math.log(0.6 + 0.4 * below), rel=1e-5)


def _samples(comps, user, fund, n, rng):
    """Monte-Carlo draws of v = log(1 + amount / unit) for one pair of a fitted mixture model."""
    pick = lambda name: float(comps[name].isel(user=user, fund=fund))  # noqa: E731
    w = np.array([pick("weight_0"), pick("weight_1")])
    mu, sigma = np.array([pick("mu"), pick("mu_1")]), np.array([pick("sigma"), pick("sigma_1")])
    c = rng.choice(2, size=n, p=w / w.sum())
    return rng.normal(mu[c], sigma[c]), pick("p")


def test_mixture_etv_and_quantiles_match_monte_carlo(mixture_model):
    model, test = mixture_model
    comps = model.predict_components(test)
    assert {"mu_1", "sigma_1", "weight_0", "weight_1"} <= set(comps.data_vars)
    np.testing.assert_allclose(comps["weight_0"] + comps["weight_1"], 1.0, rtol=1e-6)
    etv = model.predict(test)
    q = model.predict_quantiles(test, [0.1, 0.5, 0.9])
    rng = np.random.default_rng(0)
    for user, fund in [(0, 0), (5, 2), (17, 3)]:
        v, p = _samples(comps, user, fund, 400_000, rng)
        amounts = model.amount_unit_ * np.maximum(np.expm1(v), 0.0)
        assert float(etv.isel(user=user, fund=fund)) == pytest.approx(p * amounts.mean(), rel=0.02)
        np.testing.assert_allclose(q.isel(user=user, fund=fund), np.quantile(amounts, [0.1, 0.5, 0.9]), rtol=0.02)


def test_mixture_quantiles_invert_the_distribution_function():
    rng = np.random.default_rng(1)
    w = rng.dirichlet([1.0, 1.0, 1.0], size=50)
    mu, sigma = rng.normal(2.0, 2.0, (50, 3)), rng.uniform(0.3, 2.0, (50, 3))
    levels = np.array([0.01, 0.3, 0.5, 0.99])
    v = mixture_quantiles(w, mu, sigma, levels)
    cdf = (w[None] * stats.norm.cdf((v[..., None] - mu[None]) / sigma[None])).sum(axis=-1)
    np.testing.assert_allclose(cdf, np.broadcast_to(levels[:, None], cdf.shape), atol=1e-9)


def test_a_mixture_model_stays_within_its_bounds_and_survives_saving(mixture_model, tmp_path):
    model, test = mixture_model
    etv = model.predict(test).to_numpy()
    assert np.isfinite(etv).all() and (etv >= 0).all() and etv.max() <= model.amount_cap_ * (1 + 1e-6)
    model.save(tmp_path / "mixture.pt")
    np.testing.assert_array_equal(ETVPredictor.load(tmp_path / "mixture.pt").predict(test), model.predict(test))


@pytest.mark.parametrize("setting", [dict(n_components=0), dict(n_components=9), dict(n_components=True),
                                     dict(model="mtl-mse", n_components=2)])
def test_bad_component_settings_are_refused_by_name(mixture_model, setting):
    _, test = mixture_model
    with pytest.raises(PredictorSettingError, match="n_components"):
        ETVPredictor(**{"model": "esdpm-ncg", **setting}, **FAST).fit(test)
