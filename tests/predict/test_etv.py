"""The ETV of a log-normal model: the amount censored at zero, never negative."""

import numpy as np
import pytest
from fast_settings import FAST
from scipy import integrate, stats

from eoca.predict import ETVPredictor, PredictorSettingError, censored_lognormal_mean, etv_from_components


@pytest.mark.parametrize("mu, sigma", [(7.0, 1.0), (0.5, 2.0), (-0.5, 0.8), (-3.0, 1.0), (0.0, 0.4)])
def test_censored_mean_equals_a_monte_carlo_estimate(mu, sigma):
    rng = np.random.default_rng(0)
    y = np.maximum(np.expm1(rng.normal(mu, sigma, 2_000_000)), 0.0)
    got = float(censored_lognormal_mean(np.array([mu]), np.array([sigma]))[0])
    standard_error = y.std() / np.sqrt(len(y))
    assert abs(got - y.mean()) < 5 * standard_error + 1e-12


@pytest.mark.parametrize("mu, sigma", [(-8.0, 1.0), (-30.0, 2.0), (-25.0, 0.9)])
def test_censored_mean_far_below_zero_matches_the_integral(mu, sigma):
    """Where both closed-form terms underflow alike, the result still matches quadrature of the density."""
    density = stats.norm(mu, sigma)
    # the mass above 0 sits within a few sigma^2 / |mu| of 0
    width = 50 * sigma**2 / abs(mu)
    log_scale = density.logpdf(0.0)
    integral, _ = integrate.quad(
        lambda v: np.expm1(v) * np.exp(density.logpdf(v) - log_scale), 0.0, width, epsabs=0, epsrel=1e-10
    )
    scale = np.exp(log_scale)
    got = float(censored_lognormal_mean(np.array([mu]), np.array([sigma]))[0])
    np.testing.assert_allclose(got, integral * scale, rtol=1e-6)


def test_censored_mean_is_never_negative_and_finite():
    mu, sigma = np.meshgrid(np.linspace(-1000, 20, 2001), np.linspace(0.05, 5.0, 50))
    value = censored_lognormal_mean(mu, sigma)
    assert np.isfinite(value).all() and (value >= 0).all()
    # and it grows with mu at every sigma
    assert (np.diff(value, axis=1) >= 0).all()


def test_eq13_is_kept_for_comparison_and_goes_negative_where_the_censored_form_cannot():
    p = np.array([0.2, 0.2, 0.2])
    mu, sigma = np.array([8.0, -1.0, -5.0]), np.array([1.0, 0.5, 1.0])
    censored = etv_from_components("lognormal", p, mu, sigma)
    eq13 = etv_from_components("lognormal", p, mu, sigma, censored=False)
    np.testing.assert_allclose(eq13, p * np.expm1(mu + sigma**2 / 2))
    # far above 0 the censoring changes nothing; below, eq. 13 is negative
    np.testing.assert_allclose(censored[0], eq13[0], rtol=1e-9)
    assert (eq13[1:] < 0).all() and (censored[1:] > 0).all()


def test_predictor_uses_the_censored_etv_and_eq13_on_request(tiny):
    _, (train, valid, test) = tiny
    censored = ETVPredictor("esdpm-ncg", **FAST).fit(train, validation=valid)
    eq13 = ETVPredictor("esdpm-ncg", lognormal_etv="eq13", **FAST).fit(train, validation=valid)
    comps = censored.predict_components(test)
    p, mu, sigma = (comps[k].to_numpy() for k in ("p", "mu", "sigma"))
    unit = censored.amount_unit_  # mu and sigma describe the amount in the model's unit
    np.testing.assert_allclose(comps["etv"], p * censored_lognormal_mean(mu, sigma) * unit, rtol=1e-12)
    np.testing.assert_allclose(
        eq13.predict(test), p * np.expm1(mu.astype(float) + sigma.astype(float) ** 2 / 2) * unit, rtol=1e-6
    )
    with pytest.raises(PredictorSettingError, match="lognormal_etv"):
        ETVPredictor("esdpm", lognormal_etv="mean", **FAST).fit(train)
