"""Per-fund calibration of a predictor's ETV, fitted on held-out impressions.

The allocation compares ETVs across funds, so a model that over-predicts one fund by 40% moves users
into it even when it ranks users well within every fund. A calibration maps each fund's predicted ETV
to the amount actually seen on held-out impressions of that fund:

- ``"fund"``: one factor per fund: the ratio ``r = sum(amount) / sum(etv)`` over its held-out impressions
  (which would make the fund's mean ETV its mean amount), shrunk towards 1 by how sure it is,
  ``factor = 1 + w (r - 1)`` with ``w = (r - 1)^2 / ((r - 1)^2 + se^2)`` and ``se`` the standard error of
  the ratio estimate (``sqrt(sum (amount - r etv)^2) / sum(etv)``). Purchase amounts are heavy-tailed: a
  fund with a few dozen held-out purchases has a ratio that is mostly noise (se of 0.3 and more), and
  scaling by it would move the allocation for nothing; a bias well measured is corrected almost fully.
  The ranking within a fund is unchanged;
- ``"isotonic"``: a non-decreasing step function per fund (:class:`sklearn.isotonic.IsotonicRegression`
  from ETV to amount), which also corrects a bias that depends on the ETV's size; a fund with fewer than
  :data:`ISOTONIC_MIN` held-out impressions gets its factor instead, as a step function fitted on a
  handful of points is noise.

A fund with fewer than :data:`MIN_POSITIVES` held-out purchases keeps factor 1 (a ratio of sums over a few
purchases is mostly noise, and a fund without any would get factor 0), as does one whose predicted ETV
sums to zero there; a fund the calibration has never seen is left as predicted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FundCalibration", "CALIBRATIONS", "ISOTONIC_MIN", "MIN_POSITIVES"]

CALIBRATIONS = ("fund", "isotonic")
#: Fewest held-out purchases of a fund for its factor to be fitted (else 1).
MIN_POSITIVES = 10
#: Fewest held-out impressions of a fund (with at least MIN_POSITIVES purchases) for an isotonic map.
ISOTONIC_MIN = 50


@dataclass(frozen=True)
class FundCalibration:
    """A fitted per-fund calibration: ``kind``, the fund ids, a factor per fund and, for ``"isotonic"``,
    the breakpoints ``(x, y)`` of each fund's step function (empty where the factor is used)."""

    kind: str
    funds: tuple
    factors: np.ndarray
    steps: tuple[tuple[np.ndarray, np.ndarray], ...]

    @classmethod
    def fit(cls, kind: str, funds, etv: np.ndarray, amount: np.ndarray, fund: np.ndarray) -> FundCalibration:
        """Fit on held-out impressions: predicted ``etv``, realised ``amount`` and the row of each
        impression's fund in ``funds``."""
        from sklearn.isotonic import IsotonicRegression

        etv, amount = np.asarray(etv, np.float64), np.asarray(amount, np.float64)
        factors, steps = np.ones(len(funds)), []
        for j in range(len(funds)):
            here = fund == j
            predicted, seen = etv[here].sum(), amount[here].sum()
            enough = (amount[here] > 0).sum() >= MIN_POSITIVES
            if enough and predicted > 0:
                ratio = seen / predicted
                se2 = float(((amount[here] - ratio * etv[here]) ** 2).sum()) / predicted**2
                gap2 = (ratio - 1.0) ** 2
                factors[j] = 1.0 + (ratio - 1.0) * (gap2 / (gap2 + se2) if gap2 + se2 > 0 else 0.0)
            if kind == "isotonic" and enough and here.sum() >= ISOTONIC_MIN:
                iso = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(etv[here], amount[here])
                steps.append((np.asarray(iso.X_thresholds_, np.float64), np.asarray(iso.y_thresholds_, np.float64)))
            else:
                steps.append((np.zeros(0), np.zeros(0)))
        return cls(kind, tuple(funds), factors, tuple(steps))

    def apply(self, etv: np.ndarray, funds) -> np.ndarray:
        """Calibrate a ``(users, funds)`` grid whose columns are the fund ids ``funds`` (in place)."""
        where = {f: j for j, f in enumerate(self.funds)}
        for col, f in enumerate(funds):
            j = where.get(f)
            if j is None:
                continue
            x, y = self.steps[j]
            if len(x):
                etv[:, col] = np.interp(etv[:, col], x, y)
            else:
                etv[:, col] *= self.factors[j]
        return etv

    def to_dict(self) -> dict:
        """Plain containers (lists of numbers and strings), as :meth:`ETVPredictor.save` stores them."""
        return {"kind": self.kind, "funds": [f.item() if hasattr(f, "item") else f for f in self.funds],
                "factors": self.factors.tolist(), "steps": [[x.tolist(), y.tolist()] for x, y in self.steps]}

    @classmethod
    def from_dict(cls, d: dict) -> FundCalibration:
        return cls(d["kind"], tuple(d["funds"]), np.asarray(d["factors"], np.float64),
                   tuple((np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in d["steps"]))
