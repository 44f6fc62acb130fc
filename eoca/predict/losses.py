"""Losses for ETV prediction: ESJ (eq. 12 of the EOCA paper), its censored-zero form, ZILN, MSE and
cross-entropy.

All losses take probabilities ``p`` (pCTCVR), the parameters ``mu``/``sigma`` of the normal law of
``v = log(amount + 1)`` and the raw purchase ``amount`` (0 for impressions without a purchase); a
sample is a positive when ``amount > 0``. They return the mean over samples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["esj_loss", "esj_censored_loss", "ziln_loss", "mse_loss", "bce_loss", "LOG_SQRT_2PI"]

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_EPS = 1e-7


def _log_p(p: Tensor) -> tuple[Tensor, Tensor]:
    """``log p`` and ``log(1 - p)`` with p kept inside (eps, 1 - eps)."""
    p = p.clamp(_EPS, 1 - _EPS)
    return torch.log(p), torch.log1p(-p)


def _log_mix(terms: Tensor, weights: Tensor | None) -> Tensor:
    """``log sum_c weights[..., c] exp(terms[..., c])`` over a mixture's components (the last axis); with
    ``weights=None`` a single component, ``terms[..., 0]``."""
    if weights is None:
        return terms[..., 0]
    return torch.logsumexp(torch.log(weights.clamp_min(1e-30)) + terms, dim=-1)


def _components(mu: Tensor, sigma: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """``mu``/``sigma`` with a last axis of components (added for a single lognormal)."""
    return (mu, sigma) if weights is not None else (mu[..., None], sigma[..., None])


def _log_density(v: Tensor, mu: Tensor, sigma: Tensor, weights: Tensor | None) -> Tensor:
    """``log sum_c w_c Normal(v; mu_c, sigma_c)`` (components on the last axis of ``mu``/``sigma``)."""
    return _log_mix(-LOG_SQRT_2PI - torch.log(sigma) - (v[..., None] - mu) ** 2 / (2 * sigma**2), weights)


def bce_loss(p: Tensor, label: Tensor) -> Tensor:
    """Mean binary cross-entropy of probabilities ``p`` against 0/1 ``label``."""
    log_p, log_1mp = _log_p(p)
    label = label.to(p.dtype)
    return -(label * log_p + (1 - label) * log_1mp).mean()


def esj_loss(p: Tensor, mu: Tensor, sigma: Tensor, amount: Tensor, weights: Tensor | None = None) -> Tensor:
    """Entire-space multi-task joint loss: the mean negative log-likelihood of eq. 12.

    For a positive (``amount > 0``), with ``v = log(amount + 1)``::

        -[log p - log(sqrt(2 pi) sigma (amount + 1)) - (v - mu)^2 / (2 sigma^2)]

    and for a negative::

        -log(1 - p + p * phi(0; mu, sigma)),   phi(0; mu, sigma) = exp(-mu^2 / (2 sigma^2)) / (sqrt(2 pi) sigma)

    The negative term is computed as ``logaddexp(log(1 - p), log p + log phi(0))`` so it stays finite
    when ``phi(0)`` underflows (large ``mu``) or ``p`` is near 0 or 1.

    Note that ``phi(0)`` is a density: when ``sigma < 1/sqrt(2 pi)`` it can exceed 1 and the negative
    term then rewards a *larger* p. eoca's models keep ``sigma >= 1/sqrt(2 pi)`` by default for this
    reason (see :class:`eoca.predict.ETVPredictor`, ``sigma_min``).

    For a mixture of lognormals (``mu``, ``sigma`` and ``weights`` of shape ``(n, K)``, see
    :mod:`eoca.predict.mixture`) the density and ``phi(0)`` are the mixture's, ``sum_c w_c (...)``.

    Parameters
    ----------
    p, mu, sigma, amount : Tensor
        Same shape ``(n,)``; ``0 < p < 1``, ``sigma > 0``, ``amount >= 0``.
    weights : Tensor, optional
        ``(n, K)`` mixture weights (rows summing to 1), with ``mu`` and ``sigma`` of shape ``(n, K)``.

    Returns
    -------
    Tensor
        Scalar mean loss.
    """
    v = torch.log1p(amount)
    pos = amount > 0
    log_p, log_1mp = _log_p(p)
    mu, sigma = _components(mu, sigma, weights)
    log_phi0 = _log_density(torch.zeros_like(v), mu, sigma, weights)
    neg_ll = torch.logaddexp(log_1mp, log_p + log_phi0)
    pos_ll = log_p + _log_density(v, mu, sigma, weights) - v
    return -torch.where(pos, pos_ll, neg_ll).mean()


def esj_censored_loss(p: Tensor, mu: Tensor, sigma: Tensor, amount: Tensor, threshold: float = 0.01,
                      weights: Tensor | None = None) -> Tensor:
    """ESJ with a non-conversion read as an amount below ``threshold``: a probability, not a density.

    Positives as in :func:`esj_loss`; for a negative::

        -log(1 - p + p * Phi((log(1 + threshold) - mu) / sigma))

    the probability that no purchase happened or that it was below ``threshold`` (in the unit of
    ``amount``). Every term is ``-log`` of a probability or of a proper density of the amount, whatever
    ``sigma`` is, so the loss never rewards a density at zero and does not depend on where zero sits on
    the ``log(1 + amount)`` scale beyond the threshold itself. Computed as
    ``logaddexp(log(1 - p), log p + log Phi(z))`` with :func:`torch.special.log_ndtr`: finite in both tails.
    A mixture (``weights``) as in :func:`esj_loss`.
    """
    v = torch.log1p(amount)
    pos = amount > 0
    log_p, log_1mp = _log_p(p)
    mu, sigma = _components(mu, sigma, weights)
    log_below = _log_mix(torch.special.log_ndtr((math.log1p(threshold) - mu) / sigma), weights)
    neg_ll = torch.logaddexp(log_1mp, log_p + log_below)
    pos_ll = log_p + _log_density(v, mu, sigma, weights) - v
    return -torch.where(pos, pos_ll, neg_ll).mean()


def ziln_loss(p: Tensor, mu: Tensor, sigma: Tensor, amount: Tensor, weights: Tensor | None = None) -> Tensor:
    """Zero-inflated log-normal loss (Wang et al. 2019).

    Cross-entropy of ``p`` against ``amount > 0`` on every sample, plus the negative log-normal
    log-density of ``amount + 1`` on positives only (averaged over *all* samples, as in the original)::

        BCE(p, y) + mean(y * [log(sqrt(2 pi) sigma (amount + 1)) + (v - mu)^2 / (2 sigma^2)])

    Negatives give ``mu`` and ``sigma`` no signal: that is the difference from :func:`esj_loss`. A mixture
    (``weights``) as in :func:`esj_loss`.
    """
    y = (amount > 0).to(p.dtype)
    v = torch.log1p(amount)
    mu, sigma = _components(mu, sigma, weights)
    nll = v - _log_density(v, mu, sigma, weights)
    return bce_loss(p, y) + (y * nll).mean()


def mse_loss(p: Tensor | None, mu: Tensor, amount: Tensor) -> Tensor:
    """Cross-entropy on conversion plus squared error of ``mu`` against ``v = log(amount + 1)``.

    The regression runs on the entire space (``v = 0`` for negatives), so ``mu`` estimates the
    unconditional log amount. With ``p=None`` only the squared error is returned (a pure regressor).
    """
    v = torch.log1p(amount)
    reg = ((mu - v) ** 2).mean()
    if p is None:
        return reg
    return bce_loss(p, (amount > 0).to(p.dtype)) + reg
