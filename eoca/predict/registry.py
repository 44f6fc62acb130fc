"""The ETV models eoca knows by name: architecture, default loss and how ETV is formed."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelSpec", "MODELS", "LOSSES", "available_models"]

LOSSES = ("esj", "esj-censored", "ziln", "mse", "bce")


@dataclass(frozen=True)
class ModelSpec:
    """What a named model is.

    Attributes
    ----------
    name : str
    head : {"mlp", "shared_bottom", "mmoe"}
    tasks : tuple of str
        Towers: ``ctr`` + ``cvr`` (ESMM, pCTCVR = pCTR · pCVR) or ``ctcvr`` (direct), ``mu``, ``sigma``.
    use_graph : bool
        Whether the consumption-graph GAT is part of the user side.
    loss : str
        Default loss, one of :data:`LOSSES`.
    etv : {"lognormal", "regression", "conversion"}
        ``lognormal``: eq. 13, ``p · (exp(mu + sigma^2/2) - 1)``; ``regression``: ``mu`` fits
        ``log(amount + 1)`` on the entire space, ETV = ``max(exp(mu) - 1, 0)``; ``conversion``: no
        amount task, ETV = ``p`` times the mean purchase amount seen in training (ranks like pCTCVR).
    description : str
    """

    name: str
    head: str
    tasks: tuple[str, ...]
    use_graph: bool
    loss: str
    etv: str
    description: str


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "esdpm",
            "mmoe",
            ("ctr", "cvr", "mu", "sigma"),
            True,
            "esj",
            "lognormal",
            "ESDPM: behaviour self-attention + consumption-graph GAT, MMoE, ESMM pCTCVR, mu/sigma towers, ESJ loss",
        ),
        ModelSpec(
            "esdpm-ncg",
            "mmoe",
            ("ctr", "cvr", "mu", "sigma"),
            False,
            "esj",
            "lognormal",
            "ESDPM without the consumption graph",
        ),
        ModelSpec(
            "mtl-ziln",
            "mmoe",
            ("ctr", "cvr", "mu", "sigma"),
            False,
            "ziln",
            "lognormal",
            "ESDPM-NCG structure trained with the ZILN loss",
        ),
        ModelSpec(
            "mtl-mse",
            "mmoe",
            ("ctr", "cvr", "mu"),
            False,
            "mse",
            "regression",
            "ESDPM-NCG structure without the sigma tower; MSE on log(amount + 1) over all samples",
        ),
        ModelSpec(
            "esmm",
            "mmoe",
            ("ctr", "cvr"),
            False,
            "bce",
            "conversion",
            "ESMM on an MMoE bottom: pCTR and hidden pCVR, no amount task",
        ),
        ModelSpec(
            "mmoe",
            "mmoe",
            ("ctcvr", "mu"),
            False,
            "mse",
            "regression",
            "MMoE: direct pCTCVR tower (cross-entropy) and a log-amount tower (MSE)",
        ),
        ModelSpec(
            "shared-bottom",
            "shared_bottom",
            ("ctcvr", "mu"),
            False,
            "mse",
            "regression",
            "Shared-Bottom: three shared layers, two-layer towers for pCTCVR and log amount",
        ),
        ModelSpec(
            "dnn-c", "mlp", ("ctcvr",), False, "bce", "conversion", "DNN-C: a single DNN predicting pCTCVR"
        ),
        ModelSpec(
            "dnn-v",
            "mlp",
            ("mu",),
            False,
            "mse",
            "regression",
            "DNN-V: a single DNN regressing log(amount + 1)",
        ),
    )
}

_LOSS_NEEDS = {"esj": {"p", "mu", "sigma"}, "esj-censored": {"p", "mu", "sigma"}, "ziln": {"p", "mu", "sigma"}, "mse": {"mu"}, "bce": {"p"}}


def outputs_of(spec: ModelSpec) -> set[str]:
    """The outputs (``p``, ``pctr``, ``mu``, ``sigma``) a spec's network produces."""
    out = set()
    if "ctr" in spec.tasks or "ctcvr" in spec.tasks:
        out.add("p")
    if "ctr" in spec.tasks:
        out.add("pctr")
    out |= {t for t in ("mu", "sigma") if t in spec.tasks}
    return out


def loss_fits(spec: ModelSpec, loss: str) -> bool:
    """Whether ``loss`` can train the outputs of ``spec``."""
    return _LOSS_NEEDS[loss] <= outputs_of(spec)


def available_models() -> list[str]:
    """Names accepted by ``ETVPredictor(model=...)``."""
    return list(MODELS)
