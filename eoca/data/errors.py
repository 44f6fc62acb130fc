"""Errors raised when platform data do not meet eoca's data contract."""

from __future__ import annotations

try:  # the library-wide hierarchy, when present
    from eoca.errors import ValidationError as _Base
except ImportError:  # pragma: no cover - depends on the rest of the package
    _Base = ValueError  # type: ignore[misc,assignment]

__all__ = ["DataValidationError"]


class DataValidationError(_Base):  # type: ignore[misc,valid-type]
    """A platform table or setting is invalid: missing column, unknown ids, inconsistent labels.

    The message names the table or parameter, the column and (some of) the offending values;
    ``field`` holds the table or parameter name where known.
    """

    def __init__(self, message: str, *, field: str = "data") -> None:
        self.field = field
        Exception.__init__(self, message)
