"""Scenarios: a problem from a scenario file (``build(**params)`` or ``problem``) or a saved problem; what
the command line, the benchmarks and notebooks share."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

from eoca.errors import ValidationError
from eoca.io import load_problem
from eoca.problem import AllocationProblem

__all__ = ["load_input", "load_scenario"]


def load_scenario(path: str | Path, **params: Any) -> AllocationProblem:
    """Load a scenario file: a Python file that defines ``build(**params) -> AllocationProblem``
    (preferred, so sizes can be set from the command line) or a module-level ``problem``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no scenario file at {path}")
    namespace = runpy.run_path(str(path))
    if "build" in namespace:
        problem = namespace["build"](**params)
    elif "problem" in namespace:
        if params:
            raise ValidationError("--param", f"{path} defines no build() function, so it takes no parameters")
        problem = namespace["problem"]
    else:
        raise ValidationError("scenario", f"{path} must define build(**params) or a `problem` variable")
    if not isinstance(problem, AllocationProblem):
        raise ValidationError("scenario", f"{path} produced {type(problem).__name__}, not an AllocationProblem")
    return problem


def load_input(path: str | Path, **params: Any) -> AllocationProblem:
    """A problem from the command line's argument: a saved problem (``.zarr`` store or ``.nc`` file,
    see :func:`eoca.io.load_problem`) or a scenario ``.py`` file (see :func:`load_scenario`)."""
    path = Path(path)
    if path.suffix in (".zarr", ".nc"):
        if params:
            raise ValidationError("--param", f"{path} is a saved problem; it takes no parameters")
        return load_problem(path)
    return load_scenario(path, **params)
