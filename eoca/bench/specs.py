"""A registry of benchmark specs: a name, an instance builder and the sizes to run it at.

A user adds their own scenario with :func:`spec_from_scenario` (a file from ``problems/`` whose ``build``
takes ``n_users``) or :func:`register_spec` with any builder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from eoca.errors import ValidationError
from eoca.instances import FAMILIES, synthetic_problem
from eoca.problem import AllocationProblem
from eoca.scenarios import load_scenario

__all__ = ["BenchSpec", "register_spec", "get_spec", "registered_specs", "spec_from_scenario", "SOLVER_REACH"]

#: The largest number of users each solver is run at, and why not beyond (reported, never silent).
SOLVER_REACH: dict[str, tuple[int, str]] = {
    "ip": (50_000, "a generic MIP through Pyomo takes minutes beyond 50k users (paper §5.1.2, docs/design.md)"),
    "manual": (10_000_000, ""),
    "heuristic": (10_000_000, ""),
    "exact": (50_000_000, ""),
}


@dataclass(frozen=True)
class BenchSpec:
    """One benchmark: ``build(size)`` returns the problem at a size; ``axis`` says what size means."""

    name: str
    build: Callable[[int], AllocationProblem]
    sizes: tuple[int, ...]
    quick_sizes: tuple[int, ...]
    axis: str = "n_users"
    description: str = ""
    tags: frozenset[str] = field(default_factory=frozenset)


_SPECS: dict[str, BenchSpec] = {}


def register_spec(spec: BenchSpec) -> BenchSpec:
    if not isinstance(spec, BenchSpec):
        raise ValidationError("spec", f"expected a BenchSpec; got {type(spec).__name__}")
    _SPECS[spec.name] = spec
    return spec


def registered_specs() -> dict[str, BenchSpec]:
    return dict(_SPECS)


def get_spec(name: str) -> BenchSpec:
    if name not in _SPECS:
        raise ValidationError("spec", f"unknown benchmark {name!r}; registered: {sorted(_SPECS)}")
    return _SPECS[name]


def spec_from_scenario(path: str | Path, sizes: tuple[int, ...], quick_sizes: tuple[int, ...] | None = None,
                       name: str | None = None) -> BenchSpec:
    """Turn a scenario file whose ``build(n_users=...)`` sizes the problem into a registered spec."""

    path = Path(path)
    spec = BenchSpec(
        name=name or f"scenario-{path.stem}",
        build=lambda n: load_scenario(path, n_users=n),
        sizes=tuple(sizes),
        quick_sizes=tuple(quick_sizes or sizes[:1]),
        description=f"scenario {path.name}",
        tags=frozenset({"scenario"}),
    )
    return register_spec(spec)


def _family_builder(family: str) -> Callable[[int], AllocationProblem]:
    return lambda n: synthetic_problem(n, 8, family=family, seed=0)


SCALES = (1_000, 10_000, 50_000, 200_000, 1_000_000, 10_000_000)
QUICK_SCALES = (1_000, 10_000, 100_000)

for _family, _text in FAMILIES.items():
    register_spec(BenchSpec(
        name=f"scale-{_family}",
        build=_family_builder(_family),
        sizes=SCALES,
        quick_sizes=QUICK_SCALES,
        description=f"8 funds, {_text}",
        tags=frozenset({"scale", _family}),
    ))

register_spec(BenchSpec(
    name="funds-sweep",
    build=lambda k: synthetic_problem(200_000, k, family="matching", seed=0),
    sizes=(2, 4, 8, 16, 32, 50),
    quick_sizes=(2, 8, 16),
    axis="n_funds",
    description="200,000 users, 2 to 50 funds, demands matching preferences",
    tags=frozenset({"funds"}),
))
