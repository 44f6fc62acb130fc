"""Benchmarks users can run and extend: solvers across scales and instance families, with a report."""

from eoca.bench.specs import BenchSpec, get_spec, register_spec, registered_specs, spec_from_scenario

__all__ = ["BenchSpec", "get_spec", "register_spec", "registered_specs", "spec_from_scenario"]
