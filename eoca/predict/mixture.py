"""A mixture of K lognormals for the purchase amount: the outputs it adds, its ETV and its quantiles.

With ``n_components = K > 1`` a log-normal model says that, given a purchase,
``v = log(1 + amount / unit)`` follows ``sum_c w_c Normal(mu_c, sigma_c)``: towers ``mu``, ``mu_1``, ...,
``mu_{K-1}``, ``sigma``, ``sigma_1``, ... and the weights' logits ``mix_0`` ... ``mix_{K-1}`` (the output
layer turns them into ``weight_0`` ... by a softmax). ``K = 1`` is the single lognormal (no extra towers).
The mean of a mixture is the weighted mean of its components', so the censored ETV stays in closed form;
its quantiles are found by bisection on the mixture's distribution function, which is increasing.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

__all__ = ["mixture_tasks", "n_components", "components", "mixture_amount", "mixture_quantiles", "MAX_COMPONENTS"]

#: Largest number of components a predictor accepts.
MAX_COMPONENTS = 8


def mixture_tasks(k: int) -> tuple[str, ...]:
    """The towers a K-component model adds to ``mu`` and ``sigma`` (none for K = 1)."""
    if k <= 1:
        return ()
    return (*(f"mu_{c}" for c in range(1, k)), *(f"sigma_{c}" for c in range(1, k)),
            *(f"mix_{c}" for c in range(k)))


def n_components(out: dict) -> int:
    """The number of lognormal components among a model's outputs."""
    return 1 + sum(1 for name in out if name.startswith("mu_"))


def components(out: dict, stack):
    """``(weights, mu, sigma)`` of a model's outputs, each stacked on a last axis of K by ``stack`` (e.g.
    ``torch.stack`` or ``np.stack`` with ``axis=-1``); ``weights`` is None for a single lognormal."""
    k = n_components(out)
    mu = stack([out["mu"], *(out[f"mu_{c}"] for c in range(1, k))])
    sigma = stack([out["sigma"], *(out[f"sigma_{c}"] for c in range(1, k))])
    weights = stack([out[f"weight_{c}"] for c in range(k)]) if k > 1 else None
    return weights, mu, sigma


def mixture_amount(weights: np.ndarray, mean_of_component) -> np.ndarray:
    """``sum_c weights[..., c] * mean_of_component(c)``: the mixture's mean from its components' means."""
    total = np.zeros(weights.shape[:-1])
    for c in range(weights.shape[-1]):
        total += weights[..., c] * mean_of_component(c)
    return total


def mixture_quantiles(weights: np.ndarray | None, mu: np.ndarray, sigma: np.ndarray, levels: np.ndarray,
                      iterations: int = 60) -> np.ndarray:
    """Quantiles of ``v`` under the mixture, for each level: shape ``(len(levels), *mu.shape[:-1])``.

    A single component (``weights`` None) is ``mu + sigma * Phi^{-1}(q)``; a mixture is bisected between
    its components' own quantiles (the mixture's lies between their smallest and largest), ``iterations``
    halvings (60: float64 resolution)."""
    from scipy.special import ndtr

    z = np.array([NormalDist().inv_cdf(float(q)) for q in levels])
    if weights is None:
        return mu[None, ..., 0] + sigma[None, ..., 0] * z.reshape((-1,) + (1,) * (mu.ndim - 1))
    out = np.empty((len(levels), *mu.shape[:-1]))
    for i, (q, zq) in enumerate(zip(levels, z)):
        lo = (mu + sigma * zq).min(axis=-1)
        hi = (mu + sigma * zq).max(axis=-1)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            below = (weights * ndtr((mid[..., None] - mu) / sigma)).sum(axis=-1) < q
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        out[i] = (lo + hi) / 2
    return out
