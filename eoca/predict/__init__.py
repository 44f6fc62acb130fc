"""ETV prediction: ESDPM with the ESJ loss, the paper's baselines, and their evaluation.

Needs the ``predict`` extra: ``pip install "eoca[predict]"``.
"""

from eoca.predict.errors import NotFittedError, PredictorSettingError, TrainingDivergedError
from eoca.predict.estimator import ETVPredictor, censored_lognormal_mean, etv_from_components
from eoca.predict.evaluate import EvaluationReport, evaluate
from eoca.predict.losses import bce_loss, esj_censored_loss, esj_loss, mse_loss, ziln_loss
from eoca.predict.registry import MODELS, ModelSpec, available_models

__all__ = [
    "ETVPredictor",
    "etv_from_components",
    "censored_lognormal_mean",
    "evaluate",
    "EvaluationReport",
    "esj_loss",
    "esj_censored_loss",
    "ziln_loss",
    "mse_loss",
    "bce_loss",
    "MODELS",
    "ModelSpec",
    "available_models",
    "NotFittedError",
    "PredictorSettingError",
    "TrainingDivergedError",
]
