"""Errors of the ETV prediction part."""

from __future__ import annotations

from eoca.data.errors import DataValidationError

__all__ = ["NotFittedError", "TrainingDivergedError", "PredictorSettingError", "DataValidationError"]


class NotFittedError(ValueError, AttributeError):
    """A predictor was asked to predict before ``fit`` was called (like scikit-learn's)."""


class PredictorSettingError(DataValidationError):
    """A predictor setting (model name, loss, size) is not allowed; the message lists what is."""


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite; the message says when and what to try."""
