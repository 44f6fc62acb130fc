"""Data files that ship inside an installed wheel, located without importing the package."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

__all__ = ["wheel_file"]


def wheel_file(distribution: str, relative: str, what: str) -> Path:
    """The file ``relative`` inside the installed ``distribution``; ``what`` names the data in messages.

    Raises
    ------
    ModuleNotFoundError
        When the distribution is not installed, with the install hint.
    FileNotFoundError
        When it is installed without the file.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModuleNotFoundError(
            f"The {what} data ship inside the {distribution!r} wheel, which is not installed. "
            'Install it with: pip install "eoca[predict]"'
        ) from exc
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise FileNotFoundError(f"The installed {distribution!r} distribution has no {relative} (looked at {path}).")
    return path
