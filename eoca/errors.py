"""Typed errors raised by eoca.

Every error that comes from bad input is a :class:`ValueError` subclass, names the offending field and
shows (a sample of) the offending values, so that a data scientist can find the row in their table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = [
    "EocaError",
    "ValidationError",
    "ETVError",
    "IdError",
    "DemandError",
    "RiskError",
    "ConstraintError",
    "UnknownSolverError",
    "SolverNotAvailableError",
    "UnsupportedFeatureError",
    "FileFormatError",
    "show_values",
]


class EocaError(Exception):
    """Base class of every error eoca raises on purpose."""


class ValidationError(EocaError, ValueError):
    """Input to eoca is invalid. ``field`` names the argument or column at fault."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class ETVError(ValidationError):
    """The ETV grid has the wrong shape, dims, dtype or values (NaN, infinite, negative)."""


class IdError(ValidationError):
    """User or fund ids are duplicated, missing or do not line up between inputs."""


class DemandError(ValidationError):
    """A fund demand is not a non-negative integer (or range) or the demands cannot add up."""


class RiskError(ValidationError):
    """Risk levels or tolerances are missing, not comparable or not finite."""


class ConstraintError(ValidationError):
    """An eligibility mask or a side constraint (:class:`eoca.Quota`, :class:`eoca.Linear`) is invalid;
    ``field`` names the constraint (``constraints['name']``) or ``eligible``."""


class UnknownSolverError(EocaError, ValueError):
    """A solver name is not registered."""


class SolverNotAvailableError(EocaError, ImportError):
    """A registered solver cannot run here because an optional dependency is missing."""


class UnsupportedFeatureError(EocaError, ValueError):
    """A solver was asked for something it declares it does not support."""


class FileFormatError(EocaError, ValueError):
    """A file is corrupt, truncated or was not written by eoca."""


def show_values(values: Iterable[Any], limit: int = 5) -> str:
    """Return a short, readable listing of offending values: at most ``limit`` and a count of the rest."""
    values = list(values)
    shown = ", ".join(repr(v.item() if hasattr(v, "item") else v) for v in values[:limit])
    if len(values) > limit:
        shown += f", ... ({len(values) - limit} more)"
    return f"[{shown}]"
