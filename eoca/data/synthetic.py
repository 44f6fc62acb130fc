"""A synthetic fund-distribution platform with known ground truth.

Every quantity the ETV models try to learn is drawn from an explicit law here, so a trained model's
ETV grid can be compared with the *true* ETV rather than only with noisy realised amounts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from eoca.data.errors import DataValidationError
from eoca.data.platform import PlatformData

__all__ = ["SyntheticPlatform", "synthetic_platform", "decision_value", "set_decision_value"]

# How a model's grid is valued by the decisions it leads to on a synthetic platform: ``value(platform,
# grid) -> float``. The allocation lives outside the data and predictor rooms, so ``eoca`` installs it when
# it loads (:func:`eoca.simulate.allocation_value_ratio`) and :func:`eoca.predict.evaluate` asks for it.
_DECISION_VALUE: list[Callable] = []


def set_decision_value(value: Callable | None) -> None:
    """Install ``value(platform, grid) -> float`` as the decision value of a grid on a synthetic platform
    (None removes it)."""
    _DECISION_VALUE[:] = [] if value is None else [value]


def decision_value() -> Callable | None:
    """The installed decision value (see :func:`set_decision_value`), or None."""
    return _DECISION_VALUE[0] if _DECISION_VALUE else None

_FUND_TYPES = ("money", "bond", "index", "mixed", "equity", "qdii", "gold", "reit")
_ACTIONS = np.array(["click", "favourite", "purchase", "sell"])


@dataclass(frozen=True, eq=False)
class SyntheticPlatform:
    """A generated platform and the truth behind it.

    Attributes
    ----------
    data : PlatformData
        The observable tables (what a model may use).
    true_etv : xarray.DataArray
        dims ``("user", "fund")``, name ``"etv"``: P(click) · P(conversion | click) ·
        E[amount | conversion] for every user and fund.
    true_pctcvr : xarray.DataArray
        dims ``("user", "fund")``: P(click and conversion).
    true_mu, true_sigma : xarray.DataArray
        dims ``("user", "fund")``: ``log(amount + 1) ~ Normal(mu, sigma)`` given conversion.
    capital : xarray.DataArray
        dims ``("user",)``: the users' latent (log) available capital. It moves the amounts and the
        merchants a user pays; it is not a user feature unless ``capital_in_graph_only=False``.
    """

    data: PlatformData
    true_etv: xr.DataArray
    true_pctcvr: xr.DataArray
    true_mu: xr.DataArray
    true_sigma: xr.DataArray
    capital: xr.DataArray


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def _ids(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    """``prefix`` + zero-padded ``numbers`` as an object array of str (vectorised in Arrow)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    digits = pc.utf8_lpad(pa.array(np.asarray(numbers, dtype=np.int64)).cast(pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "").to_numpy(zero_copy_only=False)


def _check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise DataValidationError(
            f"The {name!r} parameter of synthetic_platform must be an int >= {minimum}. Got {value!r} instead."
        )


def synthetic_platform(
    n_users: int = 2000,
    n_funds: int = 8,
    seed: int = 0,
    *,
    impressions_per_user: int = 4,
    behaviours_per_user: float = 8.0,
    n_merchants: int = 40,
    payments_per_user: float = 8.0,
    base_ctr: float = 0.25,
    base_cvr: float = 0.3,
    amount_log_mean: float = 7.0,
    capital_effect: float = 0.8,
    capital_in_graph_only: bool = True,
    latent_dim: int = 4,
) -> SyntheticPlatform:
    """Generate a platform whose click, conversion and amount laws are known.

    The generative story, per user *u* and fund *f*:

    * a latent taste ``z_u`` (partly revealed by the categorical ``region`` feature, the rest only
      by the behaviour sequence) and fund loadings ``w_f`` give an affinity ``a = z_u·w_f / sqrt(d)``;
    * ``P(click) = sigmoid(logit(base_ctr) + 0.8 a + 0.3 activity)``;
      ``P(conversion | click) = sigmoid(logit(base_cvr) + 0.8 a - 0.7 max(0, risk_f - tolerance_u)
      + 0.2 return_f)``;
    * given a conversion, ``log(amount + 1) ~ Normal(mu_uf, sigma_u)`` with
      ``mu_uf = amount_log_mean + capital_effect · capital_u + 0.3 a + 0.15 (risk_f - 3)`` and a
      user-dependent spread ``sigma_u = 0.3 + 0.9 sigmoid(1.5 age_std + 0.5 noise)``
      (heteroscedastic);
    * ``capital_u ~ Normal(0, 1)`` is not a feature: each user pays merchants whose price tier is
      close to the user's capital, so it is visible only through the consumption graph;
    * behaviours (click, favourite, purchase, sell) pick funds with probability increasing in the
      affinity, at times in [0, 1); impressions of distinct random funds happen at times in [1, 2).

    Parameters
    ----------
    n_users, n_funds : int
        Sizes; ``n_funds >= impressions_per_user``.
    seed : int
        Seed of every draw; the same arguments give the same platform.
    impressions_per_user : int
        Distinct funds shown to each user in the impression log.
    behaviours_per_user, payments_per_user : float
        Poisson means of the history length and of the number of payments (each user has >= 1).
    n_merchants : int
        Merchants in the consumption graph.
    base_ctr, base_cvr : float
        Click and post-click conversion rates at zero affinity, in (0, 1).
    amount_log_mean : float
        Average ``log(amount + 1)`` of a purchase.
    capital_effect : float
        How strongly capital moves ``mu``; 0 makes the graph carry no amount information.
    capital_in_graph_only : bool
        When False a noisy ``balance`` user feature reveals the capital too.
    latent_dim : int
        Dimension of tastes and fund loadings.

    Returns
    -------
    SyntheticPlatform
        Observable data plus the true ETV, pCTCVR, mu, sigma and capital.
    """
    _check_positive_int("n_users", n_users)
    _check_positive_int("n_funds", n_funds)
    _check_positive_int("impressions_per_user", impressions_per_user)
    _check_positive_int("n_merchants", n_merchants)
    _check_positive_int("latent_dim", latent_dim)
    if impressions_per_user > n_funds:
        raise DataValidationError(
            f"The 'impressions_per_user' parameter of synthetic_platform must be <= n_funds ({n_funds}). "
            f"Got {impressions_per_user!r} instead."
        )
    for name, value in (("base_ctr", base_ctr), ("base_cvr", base_cvr)):
        if not 0 < value < 1:
            raise DataValidationError(
                f"The {name!r} parameter of synthetic_platform must be in (0, 1). Got {value!r} instead."
            )
    rng = np.random.default_rng(seed)
    n, k, d = n_users, n_funds, latent_dim

    # ---- users
    n_regions = 5
    region = rng.integers(0, n_regions, n)
    region_taste = rng.normal(0, 1, (n_regions, d))
    taste = 0.6 * region_taste[region] + 0.8 * rng.normal(0, 1, (n, d))
    age = rng.uniform(20, 70, n).round()
    age_std = (age - 45) / 14.4
    activity = rng.exponential(1.0, n)
    activity_std = activity - 1.0
    tolerance = np.clip(np.round(3 + 1.2 * taste[:, 0] - 0.6 * age_std + rng.normal(0, 0.5, n)), 1, 5).astype(
        int
    )
    capital = rng.normal(0, 1, n)
    sigma_u = 0.3 + 0.9 * _sigmoid(1.5 * age_std + 0.5 * rng.normal(0, 1, n))
    user_ids = _ids("u", np.arange(n), 7)
    users = pd.DataFrame(
        {
            "user_id": user_ids,
            "age": age,
            "activity": activity.round(3),
            "region": pd.Categorical.from_codes(
                np.searchsorted(np.unique(region), region), [f"r{r}" for r in np.unique(region)]
            ),
            "risk_tolerance": tolerance,
        }
    )
    if not capital_in_graph_only:
        users["balance"] = (capital + rng.normal(0, 0.3, n)).round(3)

    # ---- funds
    loadings = rng.normal(0, 1, (k, d))
    risk = np.clip(np.sort(rng.integers(1, 6, k)), 1, 5)
    ret = rng.normal(0.04 + 0.01 * risk, 0.03, k).round(4)
    names = [(_FUND_TYPES[j] if j < len(_FUND_TYPES) else f"fund_{j}") for j in range(k)]
    fund_ids = np.array([f"f{j:02d}" for j in range(k)])
    funds = pd.DataFrame(
        {"fund_id": fund_ids, "risk_level": risk, "return_1y": ret, "fund_type": pd.Categorical(names)}
    )

    # ---- truth on the whole grid
    aff = taste @ loadings.T / np.sqrt(d)
    ret_std = (ret - ret.mean()) / (ret.std() + 1e-9)
    ctr = _sigmoid(_logit(base_ctr) + 0.8 * aff + 0.3 * activity_std[:, None])
    gap = np.maximum(0, risk[None, :] - tolerance[:, None])
    cvr = _sigmoid(_logit(base_cvr) + 0.8 * aff - 0.7 * gap + 0.2 * ret_std[None, :])
    mu = amount_log_mean + capital_effect * capital[:, None] + 0.3 * aff + 0.15 * (risk[None, :] - 3)
    sigma = np.broadcast_to(sigma_u[:, None], (n, k)).copy()
    pctcvr = ctr * cvr
    etv = pctcvr * np.expm1(mu + sigma**2 / 2)

    # ---- consumption graph: merchants whose tier is near the user's capital
    tier = np.sort(rng.normal(0, 1.2, n_merchants))
    n_pay = 1 + rng.poisson(max(payments_per_user - 1, 0), n)
    pay_user = np.repeat(np.arange(n), n_pay)
    logits = -((tier[None, :] - capital[:, None]) ** 2) / (2 * 0.5**2)
    prob = np.exp(logits - logits.max(1, keepdims=True))
    cdf = np.cumsum(prob / prob.sum(1, keepdims=True), axis=1)
    pay_merchant = (rng.random(len(pay_user))[:, None] > cdf[pay_user]).sum(1).clip(0, n_merchants - 1)
    pay_amount = np.exp(3 + tier[pay_merchant] + rng.normal(0, 0.3, len(pay_user))).round(2)
    payments = pd.DataFrame(
        {
            "user_id": user_ids[pay_user],
            "merchant_id": _ids("m", np.arange(n_merchants), 4)[pay_merchant],
            "amount": pay_amount,
        }
    )

    # ---- behaviour history carrying fund affinity
    n_beh = rng.poisson(behaviours_per_user, n)
    beh_user = np.repeat(np.arange(n), n_beh)
    bl = 1.5 * aff
    bp = np.exp(bl - bl.max(1, keepdims=True))
    bcdf = np.cumsum(bp / bp.sum(1, keepdims=True), axis=1)
    beh_fund = (rng.random(len(beh_user))[:, None] > bcdf[beh_user]).sum(1).clip(0, k - 1)
    beh_action = _ACTIONS[rng.choice(4, len(beh_user), p=[0.55, 0.2, 0.15, 0.1])]
    beh_time = rng.uniform(0, 1, len(beh_user)).round(6)
    by_user = np.lexsort((beh_time, beh_user))  # user ids sort as their numbers: by user, then time
    behaviours = pd.DataFrame(
        {
            "user_id": user_ids[beh_user[by_user]],
            "fund_id": fund_ids[beh_fund[by_user]],
            "action": beh_action[by_user],
            "time": beh_time[by_user],
        }
    )

    # ---- impressions of distinct random funds
    m = impressions_per_user
    shown = np.argsort(rng.random((n, k)), axis=1)[:, :m]
    imp_user = np.repeat(np.arange(n), m)
    imp_fund = shown.ravel()
    p_click = ctr[imp_user, imp_fund]
    p_conv = cvr[imp_user, imp_fund]
    click = (rng.random(len(imp_user)) < p_click).astype(int)
    conv = click * (rng.random(len(imp_user)) < p_conv).astype(int)
    draw = np.expm1(rng.normal(mu[imp_user, imp_fund], sigma[imp_user, imp_fund]))
    amount = np.where(conv == 1, np.maximum(np.round(draw, 2), 0.01), 0.0)
    impressions = pd.DataFrame(
        {
            "user_id": user_ids[imp_user],
            "fund_id": fund_ids[imp_fund],
            "click": click,
            "conversion": conv,
            "amount": amount,
            "time": (1 + rng.uniform(0, 1, len(imp_user))).round(6),
        }
    )

    data = PlatformData(users, funds, impressions, behaviours, payments)
    coords = {"user": user_ids, "fund": fund_ids}

    def grid(values: np.ndarray, name: str) -> xr.DataArray:
        return xr.DataArray(values, dims=("user", "fund"), coords=coords, name=name)

    return SyntheticPlatform(
        data=data,
        true_etv=grid(etv, "etv"),
        true_pctcvr=grid(pctcvr, "pctcvr"),
        true_mu=grid(mu, "mu"),
        true_sigma=grid(sigma, "sigma"),
        capital=xr.DataArray(capital, dims=("user",), coords={"user": user_ids}, name="capital"),
    )
