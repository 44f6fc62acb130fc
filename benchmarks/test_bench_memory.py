"""Memory that ``solve(problem, solver="exact")`` adds on top of the grid it is given (target: at most
half the grid's bytes, at 10M users x 8 funds and at 1M users x 50 funds), run with
``python -m pytest benchmarks -k memory``.

Each case runs in a fresh process (so that nothing a previous case allocated is reused): it builds the
problem, pays the JIT compile on a small one, then samples the resident memory every millisecond during the
solve. Added memory = peak during the solve - resident memory just before it (grid, user ids, levels and
the compiled problem already loaded). The whole ``solve`` is measured: diagnosis, solver, the shared
checker and bound, and the Result with its labelled assignment.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("psutil")

_SCRIPT = """
import json, sys, threading, time
import psutil
import eoca
from eoca.instances import synthetic_problem

n, k, family = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
eoca.solve(synthetic_problem(20_000, k, family=family))  # JIT compile (cached on disk after the first run)
problem = synthetic_problem(n, k, family=family, seed=0)
grid_bytes = problem.compile().etv.nbytes
proc = psutil.Process()
peak = [0]
running = [True]

def sample():
    while running[0]:
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.001)

before = proc.memory_info().rss
thread = threading.Thread(target=sample, daemon=True)
thread.start()
start = time.perf_counter()
result = eoca.solve(problem, solver="exact")
seconds = time.perf_counter() - start
running[0] = False
thread.join()
peak[0] = max(peak[0], proc.memory_info().rss)
print(json.dumps({"users": n, "funds": k, "family": family, "status": result.status.value,
                  "grid_mib": grid_bytes / 2**20, "before_mib": before / 2**20,
                  "added_mib": (peak[0] - before) / 2**20, "ratio": (peak[0] - before) / grid_bytes,
                  "seconds": seconds}))
"""

CASES = [(10_000_000, 8, "matching"), (10_000_000, 8, "zeros"), (1_000_000, 50, "matching"), (1_000_000, 50, "zeros")]


@pytest.mark.parametrize(("n_users", "n_funds", "family"), CASES,
                         ids=[f"{n // 1_000_000}Mx{k}-{f}" for n, k, f in CASES])
def test_exact_adds_at_most_half_the_grid(benchmark, n_users, n_funds, family):
    def run():
        out = subprocess.run([sys.executable, "-c", _SCRIPT, str(n_users), str(n_funds), family],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    figures = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    print(json.dumps(figures))
    assert figures["status"] == "optimal"
    assert figures["ratio"] <= 0.5, (
        f"solve added {figures['added_mib']:.0f} MiB on top of a {figures['grid_mib']:.0f} MiB grid "
        f"({figures['ratio']:.2f}x)"
    )
