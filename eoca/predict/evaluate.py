"""Evaluation of ETV predictions: conversion, amount, ranking, calibration and top-ETV assignment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from eoca.data import PlatformData, SyntheticPlatform
from eoca.data.errors import DataValidationError
from eoca.data.synthetic import decision_value

__all__ = ["evaluate", "EvaluationReport", "normalized_gini", "decile_calibration"]


@dataclass(frozen=True)
class EvaluationReport:
    """Metrics of one model on one platform.

    Attributes
    ----------
    metrics : dict of str to float
        ``auc``, ``logloss`` (pCTCVR vs conversion; NaN without pCTCVR or with one class),
        ``mse``, ``mae`` (ETV vs realised amount over impressions), ``gini`` (normalised), ``calibration_error``
        (count-weighted mean |mean ETV - mean amount| over deciles, relative to the mean amount),
        ``thc``, ``tha``, ``hits`` (eqs. 15–16: conversions and amount of the impressions whose fund is
        the user's top-ETV fund, and how many such impressions there are); with a truth also
        ``true_mse``, ``true_mae`` (ETV vs true ETV over the whole user × fund grid), ``true_thc``,
        ``true_tha`` (expected conversions / amount when every user gets the top-ETV fund),
        ``oracle_tha`` and ``tha_ratio = true_tha / oracle_tha``.
    calibration : pandas.DataFrame
        Per ETV decile: ``n``, ``mean_etv``, ``mean_amount``.
    calibration_by_fund : pandas.DataFrame
        Indexed by fund id: impressions ``n``, ``positives`` (impressions with a purchase), ``mean_etv``,
        ``mean_amount`` and ``ratio = mean_etv / mean_amount`` (NaN without a purchase). The allocation
        compares ETVs across funds: a ratio far from 1 for one fund moves users into or out of it.
    """

    metrics: dict[str, float]
    calibration: pd.DataFrame = field(repr=False)
    calibration_by_fund: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]

    def to_series(self) -> pd.Series:
        return pd.Series(self.metrics)


def normalized_gini(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Gini of ``actual`` ordered by ``predicted`` divided by the Gini of the perfect order (1 = perfect)."""

    def gini(a: np.ndarray, p: np.ndarray) -> float:
        order = np.lexsort((np.arange(len(p)), -p))
        cum = np.cumsum(a[order]) / a.sum()
        n = len(a)
        return float(cum.sum() / n - (n + 1) / (2 * n))

    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    if actual.sum() <= 0:
        return float("nan")
    return gini(actual, predicted) / gini(actual, actual)


def decile_calibration(actual: np.ndarray, predicted: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Mean prediction and mean outcome per quantile bin of the prediction (ties kept together)."""
    ranks = pd.Series(predicted).rank(method="average").to_numpy()
    bins = np.minimum((ranks - 1) * n_bins // len(ranks), n_bins - 1).astype(int) if len(ranks) else ranks
    frame = pd.DataFrame({"bin": bins, "etv": predicted, "amount": actual})
    out = frame.groupby("bin").agg(
        n=("etv", "size"), mean_etv=("etv", "mean"), mean_amount=("amount", "mean")
    )
    return out


def calibration_by_fund(funds: np.ndarray, fund: np.ndarray, amount: np.ndarray, etv: np.ndarray) -> pd.DataFrame:
    """Per fund (ids ``funds``; ``fund`` the row of each impression's fund): ``n``, ``positives``,
    ``mean_etv``, ``mean_amount``, ``ratio``."""
    k = len(funds)
    n = np.bincount(fund, minlength=k)
    positives = np.bincount(fund, weights=amount > 0, minlength=k).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_etv = np.bincount(fund, weights=etv, minlength=k) / n
        mean_amount = np.bincount(fund, weights=amount, minlength=k) / n
        ratio = np.where(mean_amount > 0, mean_etv / mean_amount, np.nan)
    return pd.DataFrame({"n": n, "positives": positives, "mean_etv": mean_etv, "mean_amount": mean_amount,
                         "ratio": ratio}, index=pd.Index(funds, name="fund"))


def _covers(grid: xr.DataArray, platform: SyntheticPlatform) -> bool:
    """Whether ``grid`` prices every (user, fund) pair of ``platform`` with a finite, non-negative ETV: what
    its delivery contract needs to be allocated from the grid."""
    truth = platform.true_etv
    users = grid.indexes["user"].get_indexer(truth.indexes["user"])
    funds = grid.indexes["fund"].get_indexer(truth.indexes["fund"])
    if (users < 0).any() or (funds < 0).any():
        return False
    values = np.asarray(grid.values, dtype=np.float64)[np.ix_(users, funds)]
    return bool(np.isfinite(values).all() and (values >= 0).all())


def _keeping_torch_threads(value: Callable[[xr.DataArray], float], grid: xr.DataArray) -> float:
    """``value(grid)`` with PyTorch's thread count as it was: the allocation's numba kernels run on the
    OpenMP runtime that PyTorch shares, and their first parallel call may set its thread count (a model
    trained on one thread afterwards trained on two: slower here, and no longer bit for bit the same)."""
    import torch

    threads = torch.get_num_threads()
    try:
        return float(value(grid))
    finally:
        torch.set_num_threads(threads)


def _aligned(grid: xr.DataArray, data: PlatformData, name: str) -> np.ndarray:
    if not isinstance(grid, xr.DataArray) or set(grid.dims) != {"user", "fund"}:
        raise DataValidationError(
            f"{name} must be an xarray.DataArray with dims ('user', 'fund'). Got "
            f"{getattr(grid, 'dims', type(grid).__name__)!r} instead."
        )
    users, funds = data.users["user_id"].to_numpy(), data.funds["fund_id"].to_numpy()
    missing_u = np.setdiff1d(users, grid["user"].to_numpy())
    missing_f = np.setdiff1d(funds, grid["fund"].to_numpy())
    if len(missing_u) or len(missing_f):
        raise DataValidationError(
            f"{name} lacks ids of the data: users {missing_u[:5].tolist()}, funds {missing_f[:5].tolist()}."
        )
    return grid.sel(user=users, fund=funds).transpose("user", "fund").to_numpy().astype(np.float64)


def evaluate(
    model: Any,
    data: PlatformData,
    *,
    truth: SyntheticPlatform | xr.DataArray | None = None,
    n_bins: int = 10,
    allocation_value: Callable[[xr.DataArray], float] | None = None,
) -> EvaluationReport:
    """Score an ETV model (or a ready ETV grid) on the impressions of ``data``.

    Parameters
    ----------
    model : ETVPredictor, any object with ``predict(data) -> DataArray``, or an ETV DataArray
        Objects with ``predict_components`` also give pCTCVR for AUC and logloss.
    data : PlatformData
        Evaluation platform, usually a test split.
    truth : SyntheticPlatform or DataArray, optional
        The true ETV (and pCTCVR, for a SyntheticPlatform) to score against the truth. With a
        SyntheticPlatform, and a grid that prices every user and fund of it with a finite, non-negative
        ETV (as ``predict`` on any split of it does), the report also has ``allocation_value_ratio``: the
        true value of the exact allocation computed from the model's grid under the platform's contract
        (demands, risk levels and tolerances, as the demo builds them), over the true optimum (1 for the
        true grid; :func:`eoca.simulate.allocation_value_ratio`; two exact solves of the platform).
    n_bins : int
        Bins of the calibration table.
    allocation_value : callable, optional
        Given the model's grid, the value of the decisions it leads to, reported as
        ``allocation_value_ratio`` in place of the platform's own: e.g. ``functools.partial(
        eoca.simulate.allocation_value_ratio, platform, demand=...)`` for another contract. (The predictor
        knows nothing of allocation: the default is the decision value ``eoca`` installs when it loads,
        :func:`eoca.data.synthetic.decision_value`.)

    Returns
    -------
    EvaluationReport
    """
    from sklearn.metrics import log_loss, roc_auc_score

    if not isinstance(data, PlatformData):
        raise DataValidationError(
            f"'data' must be an eoca.data.PlatformData. Got {type(data).__name__} instead."
        )
    p_grid = None
    if isinstance(model, xr.DataArray):
        grid = model
        etv_grid = _aligned(grid, data, "The ETV grid")
    elif hasattr(model, "predict_components"):
        comps = model.predict_components(data)
        grid = comps["etv"]
        etv_grid = _aligned(grid, data, "The predicted ETV")
        if "p" in comps:
            p_grid = _aligned(comps["p"], data, "The predicted pCTCVR")
    elif hasattr(model, "predict"):
        grid = model.predict(data)
        etv_grid = _aligned(grid, data, "The predicted ETV")
    else:
        raise DataValidationError(
            f"'model' must have a predict method or be a DataArray. Got {type(model).__name__}."
        )

    imps = data.impressions
    u = pd.Index(data.users["user_id"]).get_indexer(imps["user_id"])
    f = pd.Index(data.funds["fund_id"]).get_indexer(imps["fund_id"])
    amount = imps["amount"].to_numpy(dtype=float)
    conv = imps["conversion"].to_numpy(dtype=int)
    etv = etv_grid[u, f]
    m: dict[str, float] = {"auc": float("nan"), "logloss": float("nan")}
    if p_grid is not None and len(np.unique(conv)) == 2:
        p = np.clip(p_grid[u, f], 1e-7, 1 - 1e-7)
        m["auc"] = float(roc_auc_score(conv, p))
        m["logloss"] = float(log_loss(conv, p, labels=[0, 1]))
    m["mse"] = float(np.mean((etv - amount) ** 2))
    m["mae"] = float(np.mean(np.abs(etv - amount)))
    m["gini"] = normalized_gini(amount, etv)
    calibration = decile_calibration(amount, etv, n_bins)
    mean_amount = amount.mean() if amount.mean() > 0 else 1.0
    m["calibration_error"] = float(
        (calibration["n"] * (calibration["mean_etv"] - calibration["mean_amount"]).abs()).sum()
        / calibration["n"].sum()
        / mean_amount
    )
    top = etv_grid.argmax(axis=1)
    hit = f == top[u]
    m["thc"] = float(conv[hit].sum())
    m["tha"] = float(amount[hit].sum())
    m["hits"] = float(hit.sum())
    platform = truth if isinstance(truth, SyntheticPlatform) else None
    if truth is not None:
        true_pctcvr = None
        if isinstance(truth, SyntheticPlatform):
            true_pctcvr = _aligned(truth.true_pctcvr, data, "The true pCTCVR")
            truth = truth.true_etv
        true_etv = _aligned(truth, data, "The true ETV")
        rows = np.arange(len(true_etv))
        m["true_mse"] = float(np.mean((etv_grid - true_etv) ** 2))
        m["true_mae"] = float(np.mean(np.abs(etv_grid - true_etv)))
        m["true_tha"] = float(true_etv[rows, top].sum())
        m["oracle_tha"] = float(true_etv.max(axis=1).sum())
        m["tha_ratio"] = m["true_tha"] / m["oracle_tha"] if m["oracle_tha"] > 0 else float("nan")
        if true_pctcvr is not None:
            m["true_thc"] = float(true_pctcvr[rows, top].sum())
    if allocation_value is None and platform is not None and (value := decision_value()) is not None:
        if _covers(grid, platform):  # the contract is the whole platform's
            allocation_value = partial(value, platform)
    if allocation_value is not None:
        m["allocation_value_ratio"] = _keeping_torch_threads(allocation_value, grid)
    by_fund = calibration_by_fund(data.funds["fund_id"].to_numpy(), f, amount, etv)
    return EvaluationReport(metrics=m, calibration=calibration, calibration_by_fund=by_fund)
