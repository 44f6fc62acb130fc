import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eoca.predict import bce_loss, esj_censored_loss, esj_loss, mse_loss, ziln_loss

T = torch.tensor


def test_esj_positive_by_hand():
    # p=0.2, mu=1, sigma=0.5, amount=e-1 -> v=1:
    # -(log 0.2 - log(sqrt(2 pi) * 0.5 * e) - 0) = 1.60944 + 0.22579 + 1 = 2.83523
    value = esj_loss(T([0.2]), T([1.0]), T([0.5]), T([math.e - 1]))
    assert float(value) == pytest.approx(2.835231, abs=1e-5)


def test_esj_negative_by_hand():
    # phi(0; 1, 0.5) = exp(-2) / (sqrt(2 pi) 0.5) = 0.107982; 1 - 0.2 + 0.2 * 0.107982 = 0.821596
    value = esj_loss(T([0.2]), T([1.0]), T([0.5]), T([0.0]))
    assert float(value) == pytest.approx(-math.log(0.8215965), abs=1e-6)


def test_esj_is_the_mean_over_samples():
    p, mu, s, a = T([0.2, 0.2]), T([1.0, 1.0]), T([0.5, 0.5]), T([math.e - 1, 0.0])
    assert float(esj_loss(p, mu, s, a)) == pytest.approx((2.835231 + 0.196504) / 2, abs=1e-5)


def test_esj_negative_term_is_stable_where_the_density_underflows():
    d = torch.float64
    p = T([1e-9, 0.5, 1 - 1e-9], dtype=d, requires_grad=True)
    mu = T([60.0, 60.0, 60.0], dtype=d, requires_grad=True)
    value = esj_loss(p, mu, T([0.4, 0.4, 0.4], dtype=d), T([0.0, 0.0, 0.0], dtype=d))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(p.grad).all() and torch.isfinite(mu.grad).all()
    # phi(0) ~ 0, so the term is -log(1 - p); p is kept below 1 - 1e-7
    expected = -(math.log1p(-1e-9) + math.log(0.5) + math.log(1e-7)) / 3
    assert float(value.detach()) == pytest.approx(expected, rel=1e-6)


def test_ziln_by_hand_and_no_amount_signal_from_negatives():
    # positive: -log 0.2 + [log(sqrt(2 pi) 0.5 e) + 0] = 1.60944 + 1.22579; negative: -log 0.8
    mu = T([1.0, 3.0], requires_grad=True)
    value = ziln_loss(T([0.2, 0.2]), mu, T([0.5, 0.5]), T([math.e - 1, 0.0]))
    assert float(value) == pytest.approx((1.609438 + 1.225791 - math.log(0.8)) / 2, abs=1e-5)
    value.backward()
    assert mu.grad[1] == 0
    mu2 = T([1.0, 3.0], requires_grad=True)
    esj_loss(T([0.2, 0.2]), mu2, T([0.5, 0.5]), T([math.e - 1, 0.0])).backward()
    assert mu2.grad[1] != 0  # ESJ supervises the amount of negatives too


def test_mse_and_bce_by_hand():
    # amounts 0 and e^2 - 1 -> v = 0, 2; mu = 1, 1 -> squared errors 1, 1
    value = mse_loss(T([0.5, 0.5]), T([1.0, 1.0]), T([0.0, math.e**2 - 1]))
    assert float(value) == pytest.approx(math.log(2) + 1.0, abs=1e-5)
    assert float(mse_loss(None, T([1.0, 1.0]), T([0.0, math.e**2 - 1]))) == pytest.approx(1.0, abs=1e-5)
    assert float(bce_loss(T([0.9, 0.1]), T([1.0, 0.0]))) == pytest.approx(-math.log(0.9), abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    p=st.floats(0.001, 0.999),
    mu=st.floats(-3, 12),
    sigma=st.floats(1 / math.sqrt(2 * math.pi), 4),
    amount=st.one_of(st.just(0.0), st.floats(0.01, 1e5)),
)
def test_esj_matches_the_likelihood_and_is_bounded_below(p, mu, sigma, amount):
    v = math.log1p(amount)
    if amount > 0:
        expected = -(
            math.log(p)
            - math.log(math.sqrt(2 * math.pi) * sigma * (amount + 1))
            - (v - mu) ** 2 / (2 * sigma**2)
        )
    else:
        phi0 = math.exp(-(mu**2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
        expected = -math.log(1 - p + p * phi0)
    got = float(
        esj_loss(
            T([p], dtype=torch.float64),
            T([mu], dtype=torch.float64),
            T([sigma], dtype=torch.float64),
            T([amount], dtype=torch.float64),
        )
    )
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-9)
    # with sigma >= 1/sqrt(2 pi) both terms are -log of a number <= 1
    assert got >= -1e-9
    assert np.isfinite(got)


def test_censored_esj_negative_is_the_probability_of_a_purchase_below_the_threshold():
    # p=0.2, mu=1, sigma=0.5, tau=0.5: Phi((log 1.5 - 1) / 0.5) = Phi(-1.189070) = 0.117199
    value = esj_censored_loss(T([0.2]), T([1.0]), T([0.5]), T([0.0]), threshold=0.5)
    phi = 0.5 * math.erfc((1 - math.log(1.5)) / 0.5 / math.sqrt(2))
    assert float(value) == pytest.approx(-math.log(0.8 + 0.2 * phi), abs=1e-6)
    # positives are eq. 12's, whatever the threshold
    a = T([math.e - 1, 3.0])
    assert float(esj_censored_loss(T([0.2, 0.7]), T([1.0, 2.0]), T([0.5, 1.5]), a, threshold=7.0)) == pytest.approx(
        float(esj_loss(T([0.2, 0.7]), T([1.0, 2.0]), T([0.5, 1.5]), a)), abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(p=st.floats(1e-9, 1 - 1e-9), mu=st.floats(-1e4, 1e4), log_sigma=st.floats(-8.0, 8.0),
       threshold=st.floats(1e-6, 1e6))
def test_censored_esj_negative_is_finite_and_a_probability_in_the_tails(p, mu, log_sigma, threshold):
    args = [torch.tensor([x], dtype=torch.float64) for x in (p, mu, math.exp(log_sigma), 0.0)]
    for a in args[1:3]:
        a.requires_grad_(True)
    value = esj_censored_loss(*args, threshold=threshold)
    assert math.isfinite(float(value)) and float(value) >= -1e-12  # -log of a probability
    value.backward()
    assert all(math.isfinite(float(a.grad)) for a in args[1:3])
