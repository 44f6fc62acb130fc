"""The exact allocation past one process: 50,000,000 users x 8 funds stored as Zarr, solved by two Dask
workers of 2 GiB each (the 3.2 GB grid fits in neither), against the in-memory solver at a size that
fits (run: ``python -m pytest benchmarks/test_bench_distributed.py -s``).

Settings (environment variables):

- ``EOCA_BENCH_DIR``: where the Zarr stores go (default ``/tmp/eoca-bench-distributed``; never the repo).
  A store whose size and seed match is reused, so a second run skips the generation.
- ``EOCA_BENCH_DIST_USERS`` (default 50,000,000), ``EOCA_BENCH_MEMORY_USERS`` (default 10,000,000: the
  in-memory comparison, also solved on the cluster), ``EOCA_BENCH_CHUNK_USERS`` (default 1,000,000).

Reported in ``extra_info`` and printed: seconds to generate, seconds to solve (with the shared checker
and dual bound), peak resident memory of the client process and of each worker process during the solve,
and the in-memory solver's seconds and peak memory at the comparison size (in a fresh process).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pytest.importorskip("zarr")

import distributed  # noqa: E402

import eoca  # noqa: E402
from eoca.distributed import open_problem, write_synthetic_problem  # noqa: E402
from eoca.solvers._tuning import GATHER_MIN  # noqa: E402

ROOT = Path(os.environ.get("EOCA_BENCH_DIR", "/tmp/eoca-bench-distributed"))
BIG = int(os.environ.get("EOCA_BENCH_DIST_USERS", 50_000_000))
SMALL = int(os.environ.get("EOCA_BENCH_MEMORY_USERS", 10_000_000))
CHUNK = int(os.environ.get("EOCA_BENCH_CHUNK_USERS", 1_000_000))
SEED = 11


class _Peak:
    """Highest resident memory of this process, sampled every 20 ms by a thread. (``ru_maxrss`` is no use
    here: Linux carries it over fork and exec, so every worker would report its parent's peak.)"""

    def __init__(self):
        import threading

        import psutil

        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.stop.wait(0.02)

    def finish(self) -> float:
        self.stop.set()
        self.thread.join()
        return max(self.peak, self.proc.memory_info().rss) / 2**20


def _worker_start(dask_worker=None):
    dask_worker._eoca_peak = _Peak()


def _worker_finish(dask_worker=None):
    return dask_worker._eoca_peak.finish()


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _store(n: int, client) -> tuple[eoca.AllocationProblem, float]:
    path = ROOT / f"synthetic-{n}-seed{SEED}-chunk{CHUNK}.zarr"
    if (path / "zarr.json").exists():
        try:
            return open_problem(path), 0.0
        except eoca.ValidationError:
            pass  # an unfinished store: write it again
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    problem = write_synthetic_problem(path, n, chunk_users=CHUNK, seed=SEED)
    return problem, time.perf_counter() - start


@contextlib.contextmanager
def _cluster():
    """Two fresh worker processes of 2 GiB each, and a client that ``eoca.solve`` finds as the default."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit="2GiB", dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as client:
        yield client


def _solve_on_cluster(problem) -> dict:
    # a cluster of its own: the workers' peak memory is this solve's alone (``client.restart()`` between
    # two solves timed out now and then, waiting 60 s for restarted workers to reconnect)
    with _cluster() as client:
        return _solve_with(client, problem)


def _solve_with(client, problem) -> dict:
    client.run(_worker_start)
    rss_before = _rss_mib()
    peak = _Peak()
    start = time.perf_counter()
    result = eoca.solve(problem, solver="exact")
    seconds = time.perf_counter() - start
    client_peak = peak.finish()
    assert result.status == "optimal", result
    workers = client.run(_worker_finish)
    # what the benchmark exists to show: a certified optimum, workers within their memory limit, a client
    # that never holds the grid, and only a few users gathered (most are settled on the workers)
    assert result.bound - result.objective <= 1e-9 * abs(result.objective), (result.bound, result.objective)
    assert max(workers.values()) < 2048, workers
    # the client keeps per-user vectors (codes, levels: tens of bytes a user), never a copy of the grid
    # plus a fixed part (task graphs, results in flight: about 30 MiB at 300k users); measured: +133 MiB for
    # a 183 MiB grid at 3M users, +0.68 GiB for 2.98 GiB at 50M
    grid_mib = problem.n_users * problem.n_funds * 8 / 2**20
    assert client_peak - rss_before < grid_mib + 128, (client_peak, rss_before, grid_mib)
    # a first gather takes at least GATHER_MIN users, so the share only says something on large platforms
    gathered = result.stats.get("gathered", 0)
    assert gathered <= max(0.1 * problem.n_users, 1.01 * GATHER_MIN), (gathered, problem.n_users)
    return {
        "users": problem.n_users,
        "solve_s": round(seconds, 2),
        "timings": {k: round(v, 2) for k, v in result.timings.items()},
        "objective": result.objective,
        "bound": result.bound,
        "gathered": result.stats.get("gathered"),
        "pre_gathered": result.stats.get("pre_gathered"),
        "first_gather_from_pass_a": bool(result.stats.get("rounds", [{}])[0].get("from_pass_a", False)),
        "rounds": len(result.stats.get("rounds", [])),
        "sample_s": round(result.stats["sample_s"], 2),
        "pass_a_s": round(result.stats["pass_a_s"], 2),
        "round_s": [{k: round(v, 2) for k, v in r.items() if k.endswith("_s")} for r in result.stats["rounds"]],
        "worker_peak_mib": {addr.rsplit(":", 1)[-1]: round(v) for addr, v in workers.items()},
        "client_rss_before_solve_mib": round(rss_before),
        "client_peak_during_solve_mib": round(client_peak),
    }


_IN_MEMORY = """
import json, sys, threading, time
import psutil
import eoca
from eoca.distributed import open_problem
from eoca.instances import synthetic_problem
eoca.solve(synthetic_problem(50_000))  # JIT warm-up
lazy = open_problem(sys.argv[1])
problem = eoca.AllocationProblem(lazy.etv.load(), lazy.demand, lazy.risk_level, lazy.risk_tolerance)
peak = [0]
def sample():
    while True:
        peak[0] = max(peak[0], psutil.Process().memory_info().rss)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
loaded = psutil.Process().memory_info().rss / 2**20
start = time.perf_counter()
result = eoca.solve(problem, solver="exact")
print(json.dumps({"users": problem.n_users, "solve_s": time.perf_counter() - start, "objective": result.objective,
                  "status": str(result.status), "rss_with_grid_loaded_mib": loaded, "peak_mib": peak[0] / 2**20}))
"""


def test_bench_distributed_exact(benchmark):
    with _cluster() as client:
        big, gen_big = _store(BIG, client)
        small, gen_small = _store(SMALL, client)
    report = benchmark.pedantic(_solve_on_cluster, args=(big,), rounds=1, iterations=1)
    report["generate_s"] = round(gen_big, 1)
    report_small = _solve_on_cluster(small)
    report_small["generate_s"] = round(gen_small, 1)

    store = ROOT / f"synthetic-{SMALL}-seed{SEED}-chunk{CHUNK}.zarr"
    out = subprocess.run([sys.executable, "-c", _IN_MEMORY, str(store)], capture_output=True, text=True, check=True)
    in_memory = json.loads(out.stdout.strip().splitlines()[-1])
    assert in_memory["objective"] == pytest.approx(report_small["objective"], rel=1e-12)
    figures = {"distributed_big": report, "distributed_comparison": report_small, "in_memory_comparison": in_memory}
    benchmark.extra_info.update(figures)
    print(json.dumps(figures, indent=2, default=str))
