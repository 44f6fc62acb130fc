"""The engine survives losing a worker: the per-user vectors are data Dask holds with a task each, so a
worker's loss costs a recomputation of its chunks and the solve still ends at the same optimum."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import eoca

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
pytest.importorskip("zarr")

from eoca.distributed import WorkerLostError, open_problem, write_synthetic_problem  # noqa: E402
from eoca.distributed.blocks import map_user_blocks  # noqa: E402


def _rows(block, levels):
    return len(block), int(levels.sum())


def test_killing_a_worker_mid_solve_gives_the_same_optimum(tmp_path, monkeypatch, caplog):
    """One worker process of three is killed (SIGKILL) during the solve's first pass over the grid after
    the per-user vectors were sent, the worker that holds most of them: Dask computes the lost chunks
    again from their tasks (nothing lives only in scattered data), no pass has to be retried, no task
    graph is large enough for Dask to warn, and the solve ends optimal at the same allocation. The kill is
    tied to that pass, not to a clock, so it lands mid-solve on any machine."""
    import logging
    import warnings

    from eoca.distributed import blocks

    with dask.config.set({"distributed.worker.memory.pause": False}), distributed.LocalCluster(
        n_workers=3, threads_per_worker=1, processes=True, memory_limit="2GiB", dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        write_synthetic_problem(tmp_path / "p.zarr", 600_000, 8, chunk_users=50_000, seed=3)
        problem = open_problem(tmp_path / "p.zarr")
        held, killed, passes = [], [], {"reference": 0, "killed": 0}
        real_hold, real_compute = blocks.hold, blocks._compute
        run = "reference"

        def hold(client_, items):
            out = real_hold(client_, items)
            held.append(out)
            return out

        def compute(tasks, progress=None):
            passes[run] += 1
            if run == "killed" and held and not killed:  # the first pass that reads the per-user vectors
                distributed.wait(client.futures_of(held[0]))
                counts: dict = {}
                for addresses in client.who_has(held[0]).values():
                    for address in addresses:
                        counts[address] = counts.get(address, 0) + 1
                victim = max(counts, key=counts.get)
                os.kill(client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
                killed.append((victim, counts[victim]))
                deadline = time.monotonic() + 30
                while victim in client.scheduler_info()["workers"] and time.monotonic() < deadline:
                    time.sleep(0.05)
            return real_compute(tasks, progress)

        monkeypatch.setattr(blocks, "hold", hold)
        monkeypatch.setattr(blocks, "_compute", compute)
        reference = eoca.solve(problem)  # also compiles the kernels on every worker
        assert reference.status == "optimal"
        run = "killed"
        held.clear()
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            result = eoca.solve(problem)
        assert killed and killed[0][1] > 0, "the killed worker held none of the per-user vectors"
        assert result.status == "optimal" and result.checks.ok
        assert result.objective == pytest.approx(reference.objective, rel=1e-12)
        np.testing.assert_array_equal(result.codes, reference.codes)
        said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
        assert not [m for m in said if "scattered data" in m or "large graph" in m], said
        assert passes["killed"] == passes["reference"], passes  # no pass was run again


def test_a_loss_that_keeps_happening_is_named(monkeypatch):
    """Where a loss cannot be recovered the error is eoca's, names the pass and says to retry."""
    from eoca.distributed import blocks

    def lost(tasks, progress=None):
        raise distributed.client.FutureCancelledError("x", reason="lost")

    monkeypatch.setattr(blocks, "_compute", lost)
    grid = dask.array.ones((100, 3), chunks=(50, 3))
    with pytest.raises(WorkerLostError, match=r"'_rows' over the grid's 2 chunks lost data with a worker 4 times.*retry"):
        map_user_blocks(_rows, grid, [np.zeros(100, np.int32)])
