"""The path from a grid to a delivered assignment, stage by stage, next to the warm solve (run with
``python -m pytest benchmarks -k pipeline``).

A predictor's grid or a database export carries string user ids as Python objects in pandas; the case here
is 1M and 10M users x 8 funds, float64 ETV, object string ids, risk tolerances as a Series over the same
ids. Each case runs in a fresh process: it pays the JIT compile (and every lazy import) on a small problem
of the same shape, then times every stage once and samples the resident memory every millisecond:

- ``build``: ``AllocationProblem(...)`` from the grid, the tolerance Series and the demands;
- ``solve``: ``eoca.solve`` (warm) as a whole, ``solver`` the solver's own share of it (the reference) and
  ``compile`` what it reports as JIT compile (kernels the warm-up size never reached);
- ``assignment``: ``result.assignment``; ``save_result``; ``save_problem``; ``load_problem``;
- ``overhead``: after the stages (and the memory sampling) end, the loaded problem is solved 7 more times;
  the median over those runs of ``eoca.solve`` as a whole, less its JIT compile, against the solver's own
  time (each run reports both). This is what the 1.25x target is checked on: one 20 ms solve at 1M moves
  by 10% when another process takes a slice of a core.

Peak memory is reported against the bytes of the inputs (grid + ids + tolerances): sampled from the
moment the inputs exist (the generator's temporaries freed and handed back with ``malloc_trim``) to the
end, less the resident memory before the inputs were made; the inputs themselves stay resident
throughout, so 1.0 means no overhead. ``added_ratio`` is the peak above the inputs as they sit in memory
(the allocator keeps some of the generator's freed memory, which is not the pipeline's).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("psutil")

_SCRIPT = r"""
import json, os, shutil, sys, tempfile, threading, time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import xarray as xr

import eoca
from eoca.io import load_problem, save_problem, save_result
from eoca.warmup import warmup
from eoca.instances import _fund_table, synthetic_grid

n, k, suffix, rounds = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
proc = psutil.Process()


def trim():
    # hand freed heap memory back to the system (glibc keeps it otherwise), so that the resident memory
    # measured is what the pipeline holds, not what the input generator left behind
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def inputs(n, k, seed=0):
    rng = np.random.default_rng(seed + 1)
    names, levels = _fund_table(k)
    ids = pd.Series([f"u{i:09d}" for i in range(n)], dtype=object)
    etv = synthetic_grid(n, k, seed=seed).values  # a model's output: probability times a heavy-tailed amount
    tol = rng.choice(np.arange(1, 6), size=n, p=[0.15, 0.3, 0.3, 0.15, 0.1])
    drawn = np.empty(n, np.int64)
    step = 1_000_000
    for s in range(0, n, step):  # demands of a drawn allocation within the risk rule, chunk by chunk
        e = min(n, s + step)
        score = np.where(rng.random((e - s, k)) < 0.75, etv[s:e], rng.random((e - s, k)) * etv[s:e].max())
        drawn[s:e] = np.argmax(np.where(tol[s:e, None] >= levels[None, :], score, -np.inf), axis=1)
    demand = dict(zip(names, np.bincount(drawn, minlength=k).tolist()))
    grid = xr.DataArray(etv, dims=("user", "fund"), coords={"user": ids.to_numpy(), "fund": names}, name="etv")
    tolerance = pd.Series(tol, index=pd.Index(ids.to_numpy(), dtype=object))
    return grid, demand, dict(zip(names, levels.tolist())), tolerance, ids


def pipeline(n, k, out, timings, measuring=None):
    grid, demand, risk, tolerance, ids = inputs(n, k)
    trim()
    timings["inputs_rss"] = proc.memory_info().rss  # the inputs as they sit in memory
    if measuring is not None:
        measuring[0] = "build"  # the generator's temporaries are gone; from here on the pipeline is measured

    def stage(name):
        if measuring is not None:
            measuring[0] = name

    input_bytes = grid.values.nbytes + int(ids.memory_usage(deep=True, index=False)) + tolerance.to_numpy().nbytes
    del ids
    t = time.perf_counter()
    problem = eoca.AllocationProblem(etv=grid, demand=demand, risk_level=risk, risk_tolerance=tolerance,
                                     name="pipeline")
    timings["build"] = time.perf_counter() - t
    del grid, tolerance
    stage("solve")
    t = time.perf_counter()
    result = eoca.solve(problem)
    timings["solve"] = time.perf_counter() - t
    timings["solver"] = result.timings["solve"]
    # a kernel the warm-up size never reached is loaded from numba's cache here: eoca reports it apart
    timings["compile"] = result.timings.get("compile", 0.0)
    stage("assignment")
    t = time.perf_counter()
    assignment = result.assignment
    timings["assignment"] = time.perf_counter() - t
    del assignment
    stage("save_result")
    t = time.perf_counter()
    save_result(result, out / "result")
    timings["save_result"] = time.perf_counter() - t
    stage("save_problem")
    t = time.perf_counter()
    save_problem(problem, out / f"problem{suffix}")
    timings["save_problem"] = time.perf_counter() - t
    del result, problem
    stage("load_problem")
    t = time.perf_counter()
    again = load_problem(out / f"problem{suffix}")
    timings["load_problem"] = time.perf_counter() - t
    return input_bytes, again


def overhead(problem, rounds):
    # eoca.solve as a whole against its solver's own time, run by run (each run reports both), less the
    # JIT compile it reports apart; the median of the runs, so that one run the machine slowed is not the
    # figure (a 1M solve takes 20 ms: a slice of another process's time moves a single run by 10%)
    eoca.solve(problem)  # the diagnosis is kept with the problem on its first solve
    ratios = []
    for _ in range(rounds):
        t = time.perf_counter()
        result = eoca.solve(problem)
        total = time.perf_counter() - t
        ratios.append((total - result.timings.get("compile", 0.0)) / result.timings["solve"])
    return float(np.median(ratios)), [round(r, 3) for r in ratios]


out = Path(tempfile.mkdtemp(prefix="eoca-pipeline-"))
try:
    warmup(("float64",), echo=None)  # every kernel compiled or loaded, as `eoca warmup` in the README does
    pipeline(200_000, k, out / "warm", {})  # lazy imports and first file writes, paid before anything is timed
    trim()
    baseline = proc.memory_info().rss
    peaks = {}
    running, measuring = [True], [None]

    def sample():
        while running[0]:
            if measuring[0] is not None:
                peaks[measuring[0]] = max(peaks.get(measuring[0], baseline), proc.memory_info().rss)
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    timings = {}
    input_bytes, loaded = pipeline(n, k, out / "run", timings, measuring)
    running[0] = False
    thread.join()
    assert loaded.n_users == n
    timings["overhead"], timings["overhead_runs"] = overhead(loaded, rounds)
finally:
    shutil.rmtree(out, ignore_errors=True)
peak = max(peaks.values())
ready = timings.pop("inputs_rss")
print(json.dumps({"users": n, "funds": k, **timings, "input_mib": input_bytes / 2**20,
                  "inputs_resident_mib": (ready - baseline) / 2**20,
                  "peak_mib": (peak - baseline) / 2**20, "peak_ratio": (peak - baseline) / input_bytes,
                  "added_ratio": (peak - ready) / input_bytes,
                  "peak_mib_by_stage": {s: round((v - baseline) / 2**20) for s, v in peaks.items()}}))
"""

#: Seconds each stage may take at 10M x 8 on the reference machine (2 cores).
TARGETS_10M = {"build": 3.0, "assignment": 1.0, "save_result": 3.0, "save_problem": 5.0, "load_problem": 5.0}
#: ``eoca.solve`` as a whole against the solver's own time.
SOLVE_OVERHEAD = 1.25
#: Warm solves after the pipeline whose median ratio is compared with SOLVE_OVERHEAD.
OVERHEAD_ROUNDS = 7
#: Peak resident memory of the pipeline against the bytes of its inputs.
PEAK_RATIO = 1.5
#: The file the problem is saved to (its suffix chooses the format).
PROBLEM_SUFFIX = ".zarr"


def run_pipeline(n_users: int, n_funds: int = 8, suffix: str = PROBLEM_SUFFIX) -> dict:
    """Run the pipeline in a fresh process and return its figures (seconds per stage, memory)."""
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(n_users), str(n_funds), suffix, str(OVERHEAD_ROUNDS)],
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-4000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("n_users", [1_000_000, 10_000_000], ids=["1Mx8", "10Mx8"])
def test_pipeline_stages(benchmark, n_users):
    figures = benchmark.pedantic(run_pipeline, args=(n_users,), rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    print(json.dumps(figures))
    # the overhead of eoca.solve over its solver, less the JIT compile that it reports on its own
    assert figures["overhead"] <= SOLVE_OVERHEAD, figures
    if n_users >= 10_000_000:
        slow = {s: round(figures[s], 2) for s, limit in TARGETS_10M.items() if figures[s] > limit}
        assert not slow, f"stages over their target {TARGETS_10M}: {slow}"
        assert 1 + figures["added_ratio"] <= PEAK_RATIO, figures
