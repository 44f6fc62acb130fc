"""``ETVPredictor``: a scikit-learn-style estimator of the ETV grid."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from sklearn.base import BaseEstimator

from eoca.data import PlatformData
from eoca.data.errors import DataValidationError
from eoca.predict.calibration import CALIBRATION_DATA, CALIBRATIONS, FundCalibration
from eoca.predict.errors import NotFittedError, PredictorSettingError
from eoca.predict.features import FeatureSchema
from eoca.predict.inference import (
    MerchantPartials,
    finish_merchants,
    grid_etv,
    grid_outputs,
    impression_outputs,
    merchant_summary,
    merge_merchant_partials,
)
from eoca.predict.mixture import MAX_COMPONENTS, components, mixture_amount, mixture_quantiles, mixture_tasks
from eoca.predict.models import ETVNetwork
from eoca.predict.registry import LOSSES, MODELS, ModelSpec, loss_fits
from eoca.predict.train import TrainingHistory, load_checkpoint, objective, save_checkpoint, train_network

__all__ = ["ETVPredictor", "etv_from_components", "censored_lognormal_mean"]

#: The output layer's learnt bounds (absent from files of earlier releases).
_OUTPUT_BOUNDS = {"output.sigma_min", "output.sigma_max", "output.log_mean_cap"}

_INT_SETTINGS = (
    "embedding_dim",
    "hidden",
    "n_experts",
    "attention_heads",
    "graph_dim",
    "graph_heads",
    "batch_size",
    "max_epochs",
    "patience",
    "chunk_users",
)


def _positive(value: object) -> bool:
    """A positive finite real number (not a bool)."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool) and (
        0 < float(value) < math.inf)


def censored_lognormal_mean(mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """``E[max(Y, 0)]`` for ``Y = exp(V) - 1``, ``V ~ Normal(mu, sigma)``: the amount censored at zero.

    In closed form ``exp(mu + sigma^2 / 2) Phi((mu + sigma^2) / sigma) - Phi(mu / sigma)``, computed
    as ``Phi(a) * expm1(mu + sigma^2 / 2 + log Phi(a + sigma) - log Phi(a))`` with ``a = mu / sigma``
    and ``log Phi`` from :func:`scipy.special.log_ndtr`: finite where both terms underflow (``mu``
    far below 0), never negative. Float64.
    """
    from scipy.special import log_ndtr

    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    a = mu / sigma
    log_tail = log_ndtr(a)
    gap = np.maximum(mu + sigma**2 / 2 + log_ndtr(a + sigma) - log_tail, 0.0)
    return np.exp(log_tail) * np.expm1(gap)


def etv_from_components(
    kind: str,
    p: np.ndarray | None,
    mu: np.ndarray | None,
    sigma: np.ndarray | None,
    amount_scale: float = 1.0,
    *,
    censored: bool = True,
) -> np.ndarray:
    """ETV from model outputs, in float64.

    ``kind="lognormal"``: ``p`` times the mean amount given a purchase under
    ``log(1 + amount) ~ Normal(mu, sigma)``; with ``censored=True`` (default) the amount is censored
    at zero, ``p * (exp(mu + sigma^2/2) Phi((mu + sigma^2)/sigma) - Phi(mu/sigma))`` (see
    :func:`censored_lognormal_mean`, never negative), with ``censored=False`` eq. 13,
    ``p * (exp(mu + sigma^2 / 2) - 1)``, which is negative where ``mu + sigma^2 / 2 < 0``.
    ``"regression"``: ``max(exp(mu) - 1, 0)``; ``"conversion"``: ``p * amount_scale``.
    """
    if kind == "lognormal":
        mu64, s64 = mu.astype(np.float64), sigma.astype(np.float64)
        amount = censored_lognormal_mean(mu64, s64) if censored else np.expm1(mu64 + s64**2 / 2)
        return p.astype(np.float64) * amount
    if kind == "regression":
        return np.maximum(np.expm1(mu.astype(np.float64)), 0.0)
    return p.astype(np.float64) * amount_scale


class ETVPredictor(BaseEstimator):
    """Predict the expected transaction value of showing each fund to each user.

    Parameters
    ----------
    model : str
        One of ``"esdpm"``, ``"esdpm-ncg"``, ``"mtl-ziln"``, ``"mtl-mse"``, ``"esmm"``, ``"mmoe"``,
        ``"shared-bottom"``, ``"dnn-c"``, ``"dnn-v"`` (see :data:`eoca.predict.MODELS`).
    loss : str, optional
        Override the model's loss: ``"esj"``, ``"esj-censored"``, ``"ziln"``, ``"mse"`` or ``"bce"``
        (must fit the model's outputs; ``esj``, ``esj-censored`` and ``ziln`` need ``mu`` and ``sigma``).
        ``"esj-censored"`` reads a non-conversion as a purchase below ``zero_threshold``
        (:func:`eoca.predict.esj_censored_loss`), a probability instead of eq. 12's density at zero.
    zero_threshold : float
        ``esj-censored`` only: the amount, in units of ``amount_unit``, below which a purchase counts as
        none (default 0.01: a hundredth of the median purchase with ``amount_unit="auto"``).
    embedding_dim, hidden, n_experts, attention_heads, graph_dim, graph_heads : int
        Network sizes.
    seq_len : int
        Most recent behaviours per user fed to the self-attention (0 disables it).
    sigma_min : float
        Lower bound of sigma. The default ``1/sqrt(2 pi)`` keeps ``phi(0; mu, sigma) <= 1`` so the
        negatives' term of the ESJ loss is a log-probability; a smaller bound lets the model make
        that density arbitrarily large and drive the loss to minus infinity.
    sigma_max : float or "auto"
        Upper bound of sigma. ``"auto"`` (default): twice the spread (standard deviation) of the log
        amounts of the training purchases, within ``[sigma_min + 0.5, 5]``: a sigma far above the data's
        own spread only ever comes from a user unlike any in training, and ``exp(sigma^2 / 2)``
        multiplies that user's ETV (5.0 was the fixed bound of earlier releases: a factor e^12.5).
    amount_cap : float, "auto" or None
        Largest mean purchase amount a lognormal or regression model may predict for one pair, in the
        data's currency: ``mu + sigma^2 / 2`` is bounded smoothly by ``log(amount_cap / unit)``, so
        the mean of ``1 + amount / unit``, and with it every ETV, stays below ``amount_cap`` (the bound
        is part of the network, so it holds in training and in prediction). ``"auto"``
        (default): twice the 99.9th percentile of the training purchases; ``None``: no cap.
    amount_unit : float or "auto"
        Amounts are divided by this before the loss and predictions multiplied by it after, so that
        the model does not depend on the currency unit the data is in (the ESJ loss of eq. 12 is not
        unit-free: its negative term is a density at zero on the ``log(1 + amount)`` scale; it is
        kept in its published form, in this unit). ``"auto"`` (default): the median training purchase.
        ``amount_unit=1.0, sigma_max=5.0, amount_cap=None`` train the model of earlier releases.
    lognormal_etv : {"censored", "eq13"}
        How models with ``mu`` and ``sigma`` towers turn them into an ETV. ``"censored"``: ``p`` times
        the mean of the amount censored at zero under ``log(1 + amount) ~ Normal(mu, sigma)``, never
        negative; ``"eq13"``: the paper's ``p * (exp(mu + sigma^2 / 2) - 1)``, negative where
        ``mu + sigma^2 / 2 < 0`` (kept for comparison).
    n_components : int
        Models with ``mu`` and ``sigma`` towers: the amount given a purchase is a mixture of this many
        lognormals (:mod:`eoca.predict.mixture`), trained with the matching likelihood of the model's loss;
        ETV and quantiles stay exact. 1 (default): the single lognormal of the paper.
    calibration : {None, "fund", "isotonic"}
        Per-fund calibration of the ETV, fitted after training and applied to every prediction (see
        :mod:`eoca.predict.calibration`): ``"fund"`` scales each fund by the ratio of its mean amount to
        its mean ETV, as far as the data tell the funds apart (the funds' log-ratios pooled towards their
        common level by their standard errors), ``"isotonic"`` maps each fund's ETV through a
        non-decreasing step function. ``None`` (default): the model's own ETV. Saved with the model.
    calibrate_on : {"all", "validation"}
        The impressions the calibration is fitted on: ``"all"`` (default) the training and validation
        impressions (nine times the purchases of the validation split alone with an 80/10/10 split: on
        20,000-user synthetic platforms the funds' ratios to their true ETV came out within 1.17-1.26 of
        one another against 1.31-1.50 on validation alone), ``"validation"`` the held-out ones only (where the platform drifts
        between the training period and the validation one).
    lr, weight_decay : float
        Adam settings.
    batch_size, max_epochs, patience : int
        Mini-batch size (512 as in the paper), epoch limit and early-stopping patience on the
        validation loss.
    validation_fraction : float
        Share of training impressions held out for early stopping when ``fit`` gets no validation data.
    graph_fanout : tuple of two int, or None
        Graph models: each training batch runs the graph attention on a sampled neighbourhood, at most
        ``graph_fanout[0]`` payments per user of the batch and ``graph_fanout[1]`` payers per merchant
        they reach, so a batch costs the same on any platform size. ``None`` attends over the whole
        graph in every batch (exact, but an epoch then grows with the square of the platform). The
        validation loss and predictions always attend over every payment.
    seed : int
        Seeds initialisation, the validation hold-out, shuffling and the graph sampling: same data, same
        settings, same model.
    progress : bool
        Show progress bars while training (impressions per second) and predicting (users per second).
    checkpoint_path : str, optional
        Where to write the best weights during training.
    chunk_users : int
        Users per inference chunk.

    Attributes
    ----------
    network_ : ETVNetwork
    schema_ : FeatureSchema
    spec_ : ModelSpec
    loss_ : str
    history_ : TrainingHistory
    amount_scale_ : float
        Mean purchase amount of training conversions (scales pCTCVR-only models' ETV).
    calibration_ : FundCalibration or None
        The fitted calibration, when ``calibration`` is set.
    amount_unit_, sigma_max_, amount_cap_ : float
        The unit, sigma bound and mean-amount cap (``inf`` for none) the model was trained with.

    Examples
    --------
    >>> from eoca.data import synthetic_platform
    >>> platform = synthetic_platform(n_users=500, seed=0)
    >>> train, valid, test = platform.data.split()
    >>> predictor = ETVPredictor("esdpm", max_epochs=2, progress=False).fit(train, validation=valid)
    >>> predictor.predict(test).dims
    ('user', 'fund')
    """

    def __init__(
        self,
        model: str = "esdpm",
        *,
        loss: str | None = None,
        zero_threshold: float = 0.01,
        embedding_dim: int = 8,
        hidden: int = 64,
        n_experts: int = 4,
        seq_len: int = 20,
        attention_heads: int = 2,
        graph_dim: int = 16,
        graph_heads: int = 2,
        sigma_min: float = 1 / math.sqrt(2 * math.pi),
        sigma_max: float | str = "auto",
        amount_cap: float | str | None = "auto",
        amount_unit: float | str = "auto",
        lognormal_etv: str = "censored",
        n_components: int = 1,
        calibration: str | None = None,
        calibrate_on: str = "all",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 512,
        graph_fanout: tuple[int, int] | None = (10, 10),
        max_epochs: int = 50,
        patience: int = 5,
        validation_fraction: float = 0.1,
        seed: int = 0,
        progress: bool = True,
        checkpoint_path: str | None = None,
        chunk_users: int = 8192,
    ) -> None:
        self.model = model
        self.loss = loss
        self.zero_threshold = zero_threshold
        self.embedding_dim = embedding_dim
        self.hidden = hidden
        self.n_experts = n_experts
        self.seq_len = seq_len
        self.attention_heads = attention_heads
        self.graph_dim = graph_dim
        self.graph_heads = graph_heads
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.amount_cap = amount_cap
        self.amount_unit = amount_unit
        self.lognormal_etv = lognormal_etv
        self.n_components = n_components
        self.calibration = calibration
        self.calibrate_on = calibrate_on
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.graph_fanout = graph_fanout
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.seed = seed
        self.progress = progress
        self.checkpoint_path = checkpoint_path
        self.chunk_users = chunk_users

    # ------------------------------------------------------------------ checks
    def _check_settings(self) -> tuple[ModelSpec, str]:
        if self.model not in MODELS:
            raise PredictorSettingError(
                f"The 'model' parameter of ETVPredictor must be one of {list(MODELS)}. Got {self.model!r} instead."
            )
        spec = MODELS[self.model]
        loss = spec.loss if self.loss is None else self.loss
        if loss not in LOSSES:
            raise PredictorSettingError(
                f"The 'loss' parameter of ETVPredictor must be one of {list(LOSSES)} or None. Got {self.loss!r} instead."
            )
        if not loss_fits(spec, loss):
            raise PredictorSettingError(
                f"The loss {loss!r} cannot train model {self.model!r} (towers {list(spec.tasks)}); "
                f"'esj' and 'ziln' need mu and sigma towers, 'mse' a mu tower, 'bce' a conversion tower."
            )
        for name in _INT_SETTINGS:
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise PredictorSettingError(
                    f"The {name!r} parameter of ETVPredictor must be an int >= 1. Got {value!r} instead."
                )
        if not isinstance(self.seq_len, int) or self.seq_len < 0:
            raise PredictorSettingError(
                f"The 'seq_len' parameter of ETVPredictor must be an int >= 0. Got {self.seq_len!r} instead."
            )
        if (2 * self.embedding_dim) % self.attention_heads:
            raise PredictorSettingError(
                f"The 'attention_heads' parameter of ETVPredictor must divide 2 * embedding_dim = "
                f"{2 * self.embedding_dim}. Got {self.attention_heads!r} instead."
            )
        if not (_positive(self.sigma_min) and (self.sigma_max == "auto" or (
                _positive(self.sigma_max) and self.sigma_min < self.sigma_max))):
            raise PredictorSettingError(
                "ETVPredictor needs 0 < sigma_min < sigma_max (or sigma_max='auto'). "
                f"Got sigma_min={self.sigma_min!r}, sigma_max={self.sigma_max!r}."
            )
        if not _positive(self.zero_threshold):
            raise PredictorSettingError(
                f"The 'zero_threshold' parameter of ETVPredictor must be a positive finite number. "
                f"Got {self.zero_threshold!r} instead."
            )
        for name, allowed in (("amount_unit", ("auto",)), ("amount_cap", ("auto", None))):
            value = getattr(self, name)
            if not (any(value is a or value == a for a in allowed) or _positive(value)):
                raise PredictorSettingError(
                    f"The {name!r} parameter of ETVPredictor must be a positive finite number or one of "
                    f"{list(allowed)}. Got {value!r} instead."
                )
        if not (isinstance(self.lr, float | int) and self.lr > 0):
            raise PredictorSettingError(
                f"The 'lr' parameter of ETVPredictor must be > 0. Got {self.lr!r} instead."
            )
        if self.lognormal_etv not in ("censored", "eq13"):
            raise PredictorSettingError(
                "The 'lognormal_etv' parameter of ETVPredictor must be one of ['censored', 'eq13']. "
                f"Got {self.lognormal_etv!r} instead."
            )
        k = self.n_components
        if not (isinstance(k, int | np.integer) and not isinstance(k, bool) and 1 <= k <= MAX_COMPONENTS):
            raise PredictorSettingError(
                f"The 'n_components' parameter of ETVPredictor must be an int in [1, {MAX_COMPONENTS}]. "
                f"Got {k!r} instead."
            )
        if k > 1 and "sigma" not in spec.tasks:
            raise PredictorSettingError(
                f"The 'n_components' parameter needs a model with mu and sigma towers; {self.model!r} has "
                f"{list(spec.tasks)}. Use 'esdpm', 'esdpm-ncg' or 'mtl-ziln'."
            )
        if self.calibrate_on not in CALIBRATION_DATA:
            raise PredictorSettingError(
                f"The 'calibrate_on' parameter of ETVPredictor must be one of {list(CALIBRATION_DATA)}. "
                f"Got {self.calibrate_on!r} instead."
            )
        if self.calibration is not None and self.calibration not in CALIBRATIONS:
            raise PredictorSettingError(
                f"The 'calibration' parameter of ETVPredictor must be None or one of {list(CALIBRATIONS)}. "
                f"Got {self.calibration!r} instead."
            )
        fanout = self.graph_fanout
        if fanout is not None and not (
            isinstance(fanout, tuple | list)
            and len(fanout) == 2
            and all(isinstance(f, int | np.integer) and not isinstance(f, bool) and f >= 1 for f in fanout)
        ):
            raise PredictorSettingError(
                "The 'graph_fanout' parameter of ETVPredictor must be None or two ints >= 1 "
                f"(payments per user, payers per merchant). Got {fanout!r} instead."
            )
        if not 0 < self.validation_fraction < 1:
            raise PredictorSettingError(
                f"The 'validation_fraction' parameter of ETVPredictor must be in (0, 1). Got {self.validation_fraction!r} instead."
            )
        return spec, loss

    @staticmethod
    def _check_data(data: object, name: str = "data") -> PlatformData:
        if not isinstance(data, PlatformData):
            raise DataValidationError(
                f"The {name!r} argument must be an eoca.data.PlatformData. Got {type(data).__name__} instead."
            )
        return data

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with appropriate arguments "
                "before using this estimator."
            )

    def _amount_bounds(self, amount: np.ndarray) -> tuple[float, float, float]:
        """The unit, the sigma bound and the log mean-amount cap (in that unit) for training amounts
        ``amount`` (float64, in the data's currency), from the settings."""
        positive = amount[amount > 0]
        if self.amount_unit == "auto":
            unit = float(np.median(positive)) if len(positive) else 1.0
        else:
            unit = float(self.amount_unit)
        if self.sigma_max == "auto":
            spread = float(np.log1p(positive / unit).std()) if len(positive) > 1 else 1.0
            sigma_max = min(max(2.0 * spread, self.sigma_min + 0.5), max(5.0, self.sigma_min + 0.5))
        else:
            sigma_max = float(self.sigma_max)
        if self.amount_cap is None or not len(positive):
            cap = math.inf
        else:
            top = 2.0 * float(np.quantile(positive, 0.999)) if self.amount_cap == "auto" else float(self.amount_cap)
            cap = math.log(top / unit)
        return unit, sigma_max, cap

    def _build_network(self, schema: FeatureSchema, spec: ModelSpec) -> ETVNetwork:
        return ETVNetwork(
            user_numeric=len(schema.user_numeric),
            user_cardinalities=schema.cardinalities("user"),
            fund_numeric=len(schema.fund_numeric),
            fund_cardinalities=schema.cardinalities("fund"),
            n_fund_ids=schema.size("fund_id"),
            n_actions=schema.size("action"),
            n_merchants=schema.size("merchant"),
            head=spec.head,
            tasks=spec.tasks + (mixture_tasks(int(self.n_components)) if "sigma" in spec.tasks else ()),
            use_sequence=self.seq_len > 0,
            use_graph=spec.use_graph,
            embedding_dim=self.embedding_dim,
            hidden=self.hidden,
            n_experts=self.n_experts,
            attention_heads=self.attention_heads,
            graph_dim=self.graph_dim,
            graph_heads=self.graph_heads,
            sigma_min=self.sigma_min,
            sigma_max=5.0 if self.sigma_max == "auto" else self.sigma_max,
        )

    def _start_at_the_data(self, network: ETVNetwork, amount: torch.Tensor, spec: ModelSpec) -> None:
        """Set the output biases of the amount towers to the data's log-amount level and spread.

        Log amounts sit far from 0 (e.g. 7 for ~1,000); starting ``mu`` at 0 makes the first epochs
        inflate ``sigma`` instead of moving ``mu``, and eq. 13 then explodes.
        """
        v = torch.log1p(amount.double())
        target = v[amount > 0] if spec.etv == "lognormal" else v
        if len(target) == 0:
            return
        with torch.no_grad():
            towers = network.head.towers

            def last(tower: torch.nn.Module) -> torch.nn.Linear:
                return tower if isinstance(tower, torch.nn.Linear) else tower[-1]

            if "mu" in towers:
                last(towers["mu"]).bias.fill_(float(target.mean()))
            if "sigma" in towers:
                spread = (
                    max(float(target.std()) if len(target) > 1 else 1.0, self.sigma_min + 0.05)
                    - self.sigma_min
                )
                last(towers["sigma"]).bias.fill_(math.log(math.expm1(spread)))
            k = sum(1 for name in towers if name.startswith("mix_"))
            if k > 1 and len(target) > 1:
                # components start spread over the data's quantiles, each with a share of its spread
                levels = torch.tensor([(c + 0.5) / k for c in range(k)], dtype=target.dtype)
                centres = torch.quantile(target, levels)
                width = max(float(target.std()) / k, self.sigma_min + 0.05) - self.sigma_min
                for c in range(k):
                    suffix = "" if c == 0 else f"_{c}"
                    last(towers["mu" + suffix]).bias.fill_(float(centres[c]))
                    last(towers["sigma" + suffix]).bias.fill_(math.log(math.expm1(width)))

    # ------------------------------------------------------------------ fit
    def fit(self, data: PlatformData, validation: PlatformData | None = None) -> ETVPredictor:
        """Train on the impressions of ``data``.

        Parameters
        ----------
        data : PlatformData
            Training platform; its users, funds, behaviours and payments define the vocabularies.
        validation : PlatformData, optional
            Impressions for early stopping. Without it, ``validation_fraction`` of the training
            impressions (chosen with ``seed``) are held out.

        Returns
        -------
        ETVPredictor
            ``self``, fitted.

        Raises
        ------
        PredictorSettingError
            On an unknown model or loss, or a size out of range.
        DataValidationError
            When ``data`` is not a PlatformData, has no impressions or no conversions, or a graph model
            gets no payments.
        """
        spec, loss = self._check_settings()
        data = self._check_data(data)
        if validation is not None:
            validation = self._check_data(validation, "validation")
        if len(data.impressions) < 2:
            raise DataValidationError(
                "Table 'impressions' of the training data needs at least 2 rows to fit."
            )
        if spec.use_graph and (data.payments is None or len(data.payments) == 0):
            raise DataValidationError(
                f"Model {self.model!r} uses the consumption graph but table 'payments' is empty or missing. "
                "Provide payments or use model='esdpm-ncg'."
            )
        if float(data.impressions["amount"].sum()) <= 0 and loss != "bce":
            raise DataValidationError(
                "Table 'impressions' column 'amount' has no purchase to learn amounts from."
            )
        torch.manual_seed(self.seed)
        schema = FeatureSchema.learn(data, self.seq_len)
        encoded = schema.encode(data)
        generator = torch.Generator().manual_seed(self.seed)
        if validation is None:
            order = torch.randperm(len(encoded.amount), generator=generator)
            n_val = max(1, int(round(self.validation_fraction * len(order))))
            val_enc, val_rows, train_rows = encoded, order[:n_val], order[n_val:]
        else:
            val_enc, val_rows, train_rows = schema.encode(validation), None, None
        amounts = data.impressions["amount"].to_numpy(dtype=np.float64)  # the rows of encoded.amount
        unit, sigma_max, cap = self._amount_bounds(amounts)
        positive = encoded.amount[encoded.amount > 0]
        amount_scale = float(positive.double().mean()) if len(positive) else 1.0

        def in_unit(part: PlatformData, enc):
            # divided in float64 before the float32 cast: the same data in cents or dollars gives the
            # same float32 amounts, and so the same model
            scaled = part.impressions["amount"].to_numpy(dtype=np.float64) / unit
            return dataclasses.replace(enc, amount=torch.from_numpy(scaled.astype(np.float32)))

        # the model sees amounts in the unit; predictions are multiplied back (see _etv)
        scaled = in_unit(data, encoded)
        val_enc = scaled if val_enc is encoded else in_unit(validation, val_enc)
        encoded = scaled
        network = self._build_network(schema, spec)
        network.output.set_bounds(sigma_max, cap)
        self._start_at_the_data(network, encoded.amount, spec)
        history = train_network(
            network,
            objective(loss, float(self.zero_threshold)),
            encoded,
            val_enc,
            train_rows=train_rows,
            val_rows=val_rows,
            graph=spec.use_graph,
            graph_fanout=None if self.graph_fanout is None else (int(self.graph_fanout[0]), int(self.graph_fanout[1])),
            lr=float(self.lr),
            weight_decay=float(self.weight_decay),
            batch_size=self.batch_size,
            max_epochs=self.max_epochs,
            patience=self.patience,
            seed=self.seed,
            progress=self.progress,
            checkpoint_path=self.checkpoint_path,
        )
        self.amount_scale_ = amount_scale
        # the cap as the network holds it (float32), so that no prediction exceeds amount_cap_
        self.amount_unit_, self.sigma_max_ = unit, sigma_max
        self.amount_cap_ = unit * math.exp(float(network.output.log_mean_cap))
        self.schema_, self.spec_, self.loss_, self.history_ = schema, spec, loss, history
        self.network_ = network
        self.calibration_ = None
        if self.calibration is not None:  # in the data's currency
            parts = [(val_enc, val_rows, data if validation is None else validation)]
            if self.calibrate_on == "all":
                parts.append((encoded, train_rows, data))
            self.calibration_ = self._fit_calibration(parts, unit)
        return self

    def _fit_calibration(self, parts: list, unit: float) -> FundCalibration:
        """:class:`FundCalibration` on the impressions of ``parts``: (encoded platform, its rows or None for
        all, the platform whose funds table the encoded fund codes index)."""
        etv, amount, ids = [], [], []
        for enc, rows, part in parts:
            rows = torch.arange(len(enc.amount)) if rows is None else rows
            etv.append(self._etv(impression_outputs(self.network_, enc, rows)))
            amount.append((enc.amount[rows] * unit).double().numpy())
            ids.append(part.funds["fund_id"].to_numpy()[enc.imp_fund[rows].numpy()])
        funds = pd.Index(np.concatenate([part.funds["fund_id"].to_numpy() for _, _, part in parts])).unique()
        return FundCalibration.fit(self.calibration, funds.to_numpy(), np.concatenate(etv), np.concatenate(amount),
                                   funds.get_indexer(np.concatenate(ids)))

    # ------------------------------------------------------------------ predict
    def _check_predict_data(self, data: object) -> PlatformData:
        self._check_fitted()
        data = self._check_data(data)
        if self.spec_.use_graph and data.payments is None:
            raise DataValidationError(
                f"Model {self.model!r} needs table 'payments' to predict; it is missing."
            )
        return data

    def _outputs(self, data: PlatformData) -> dict[str, np.ndarray]:
        data = self._check_predict_data(data)
        return grid_outputs(
            self.network_, self.schema_.encode(data, impressions=False), chunk_users=self.chunk_users,
            progress=self.progress,
        )

    def _etv(self, out: dict[str, np.ndarray], funds: np.ndarray | None = None) -> np.ndarray:
        """ETV from the network's outputs; a grid whose columns are the fund ids ``funds`` is calibrated."""
        censored = self.lognormal_etv == "censored"
        if "weight_0" in out:  # a mixture: the weighted mean of its components' means
            weights, mu, sigma = components(out, lambda parts: np.stack(parts, axis=-1))
            ones = np.ones(weights.shape[:-1])
            etv = out["p"].astype(np.float64) * mixture_amount(
                weights.astype(np.float64),
                lambda c: etv_from_components("lognormal", ones, mu[..., c], sigma[..., c], censored=censored),
            )
        else:
            etv = etv_from_components(
                self.spec_.etv, out.get("p"), out.get("mu"), out.get("sigma"), self.amount_scale_, censored=censored,
            )
        if self.spec_.etv != "conversion":  # amounts were modelled in the unit
            etv *= self.amount_unit_
        if funds is not None and getattr(self, "calibration_", None) is not None:
            etv = self.calibration_.apply(etv, funds)
        return etv

    # Scoring a platform in pieces of users (eoca.distributed.predict_to_zarr). The graph's merchant
    # layer attends over every payer of a merchant, so the pieces first summarise their payments
    # (``_merchant_partials``), the summaries are merged and finished once (``_merchant_embeddings``),
    # and each piece is then predicted with those whole-platform merchant embeddings (``_predict``).
    def _merchant_partials(self, data: PlatformData) -> MerchantPartials | None:
        """The merchant-attention summary of the payments in ``data``; None for models without the graph."""
        data = self._check_predict_data(data)
        if not self.spec_.use_graph:
            return None
        return merchant_summary(self.network_, self.schema_.encode(data, impressions=False), chunk_users=self.chunk_users)

    def _merchant_embeddings(self, *partials: MerchantPartials) -> torch.Tensor:
        """Merchant embeddings from the summaries of disjoint pieces covering every user."""
        return finish_merchants(self.network_, merge_merchant_partials(*partials))

    @staticmethod
    def _grid(values: np.ndarray, data: PlatformData, name: str) -> xr.DataArray:
        return xr.DataArray(
            values,
            dims=("user", "fund"),
            coords={"user": data.users["user_id"].to_numpy(), "fund": data.funds["fund_id"].to_numpy()},
            name=name,
        )

    def _predict(
        self, data: PlatformData, merchant_h: torch.Tensor | None = None, progress: bool = False
    ) -> xr.DataArray:
        """:meth:`predict`, optionally with merchant embeddings of a larger platform ``data`` is part of."""
        data = self._check_predict_data(data)
        funds = data.funds["fund_id"].to_numpy()
        etv = grid_etv(
            self.network_,
            self.schema_.encode(data, impressions=False),
            lambda out: self._etv(out, funds),
            chunk_users=self.chunk_users,
            merchant_h=merchant_h,
            progress=progress,
        )
        return self._grid(etv, data, "etv")

    def predict(self, data: PlatformData) -> xr.DataArray:
        """The ETV grid over every user and fund of ``data`` (not only pairs with impressions).

        Returns
        -------
        xarray.DataArray
            dims ``("user", "fund")``, coordinates the ids of ``data.users`` and ``data.funds``,
            name ``"etv"``, float64, >= 0.
        """
        return self._predict(data, progress=self.progress)

    def predict_components(self, data: PlatformData) -> xr.Dataset:
        """pCTCVR ``p``, and where the model has them ``pctr``, ``mu`` and ``sigma``, over users × funds.

        ``mu``/``sigma`` parametrise ``log(1 + amount / amount_unit_) ~ Normal(mu, sigma)`` given a purchase
        (models trained with ESJ or ZILN); for MSE-trained models ``mu`` is the unconditional mean log
        amount. The dataset also holds ``etv``.
        """
        out = self._outputs(data)
        etv = self._etv(out, data.funds["fund_id"].to_numpy())
        variables = {name: self._grid(value, data, name) for name, value in out.items()}
        variables["etv"] = self._grid(etv, data, "etv")
        return xr.Dataset(variables)

    def quantiles(self, data: PlatformData, q: float | list[float] | np.ndarray) -> xr.DataArray:
        """Quantiles of the purchase amount *given a purchase*, from the log-normal ``(mu, sigma)``.

        ``amount_q = amount_unit_ * max(exp(mu + sigma * Phi^{-1}(q)) - 1, 0)``; for a mixture
        (``n_components > 1``) ``exp`` of the mixture's quantile of ``v``, found by bisection
        (:func:`eoca.predict.mixture.mixture_quantiles`). Also available as :meth:`predict_quantiles`.

        Parameters
        ----------
        data : PlatformData
        q : float or sequence of float
            Levels in (0, 1).

        Returns
        -------
        xarray.DataArray
            dims ``("quantile", "user", "fund")``, name ``"amount_quantile"``.
        """
        self._check_fitted()
        levels = np.atleast_1d(np.asarray(q, dtype=float))
        if levels.ndim != 1 or not ((levels > 0) & (levels < 1)).all():
            raise PredictorSettingError(f"Quantile levels must be in (0, 1). Got {q!r} instead.")
        if "sigma" not in self.spec_.tasks:
            raise PredictorSettingError(
                f"Model {self.model!r} has no sigma tower, so it has no amount distribution; "
                "use a log-normal model ('esdpm', 'esdpm-ncg', 'mtl-ziln')."
            )
        out = self._outputs(data)
        weights, mu, sigma = components(out, lambda parts: np.stack(parts, axis=-1).astype(np.float64))
        values = self.amount_unit_ * np.maximum(np.expm1(mixture_quantiles(weights, mu, sigma, levels)), 0.0)
        grid = self._grid(values[0], data, "amount_quantile")
        return xr.concat([grid.copy(data=v) for v in values], dim="quantile").assign_coords(quantile=levels)

    def predict_quantiles(self, data: PlatformData, q: float | list[float] | np.ndarray) -> xr.DataArray:
        """The same as :meth:`quantiles`."""
        return self.quantiles(data, q)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write settings, feature schema and weights to ``path`` (a ``torch.save`` file)."""
        self._check_fitted()
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.get_params().items()}
        save_checkpoint(
            path,
            {
                "settings": settings,
                "schema": self.schema_.to_dict(),
                "state_dict": self.network_.state_dict(),
                "amount_scale": self.amount_scale_,
                "amount_bounds": [self.amount_unit_, self.sigma_max_, self.amount_cap_],
                "calibration": None if self.calibration_ is None else self.calibration_.to_dict(),
                "loss": self.loss_,
                "history": {
                    "train_loss": self.history_.train_loss,
                    "val_loss": self.history_.val_loss,
                    "best_epoch": self.history_.best_epoch,
                    "stopped_early": self.history_.stopped_early,
                },
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> ETVPredictor:
        """Read a predictor written by :meth:`save` (with ``torch.load(weights_only=True)``)."""
        payload: dict[str, Any] = load_checkpoint(path)
        # files of earlier releases fitted their calibration on the validation impressions
        predictor = cls(**{"calibrate_on": "validation", **payload["settings"]})
        spec, _ = predictor._check_settings()
        schema = FeatureSchema.from_dict(payload["schema"])
        network = predictor._build_network(schema, spec)
        # files of earlier releases have no learnt bounds: the network keeps its defaults (no cap)
        missing, unexpected = network.load_state_dict(payload["state_dict"], strict=False)
        if unexpected or set(missing) - _OUTPUT_BOUNDS:
            raise DataValidationError(
                f"The model file {str(path)!r} does not match its settings: missing weights {sorted(missing)}, "
                f"unexpected {sorted(unexpected)}."
            )
        network.eval()
        predictor.schema_, predictor.spec_, predictor.loss_ = schema, spec, payload["loss"]
        predictor.amount_scale_ = float(payload["amount_scale"])
        bounds = payload.get("amount_bounds", [1.0, float(network.output.sigma_max), math.inf])
        predictor.amount_unit_, predictor.sigma_max_, predictor.amount_cap_ = map(float, bounds)
        predictor.history_ = TrainingHistory(**payload["history"])
        stored = payload.get("calibration")
        predictor.calibration_ = None if stored is None else FundCalibration.from_dict(stored)
        predictor.network_ = network
        return predictor
