"""The engine survives losing a worker: a pass that finds a worker's data gone scatters it again from the
client's copy and runs again, so the solve still ends at the same optimum."""

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


def test_killing_a_worker_mid_solve_gives_the_same_optimum(tmp_path, monkeypatch):
    """One worker process of three is killed (SIGKILL) during the solve's first pass over the grid after
    the per-user vectors were scattered: the scheduler reports the scattered data lost, and the solve
    still ends optimal at the same objective. The kill is tied to that pass, not to a clock, so it lands
    mid-solve on any machine."""
    from eoca.distributed import blocks

    with dask.config.set({"distributed.worker.memory.pause": False}), distributed.LocalCluster(
        n_workers=3, threads_per_worker=1, processes=True, memory_limit="2GiB", dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        write_synthetic_problem(tmp_path / "p.zarr", 600_000, 8, chunk_users=50_000, seed=3)
        problem = open_problem(tmp_path / "p.zarr")
        reference = eoca.solve(problem)  # also compiles the kernels on every worker
        assert reference.status == "optimal"

        scattered, rescattered, killed = [], [], []
        real_init, real_rescatter, real_compute = (
            blocks.ScatteredParts.__init__, blocks.ScatteredParts.rescatter, blocks._compute
        )

        def init(self, *args, **kwargs):
            real_init(self, *args, **kwargs)
            scattered.append(self)

        def rescatter(self):
            rescattered.append(self)
            real_rescatter(self)

        def compute(tasks, progress=None):
            if scattered and not killed:  # the first pass that reads scattered vectors
                holders = client.who_has(list(scattered[0]))
                counts = {}
                for addresses in holders.values():
                    for address in addresses:
                        counts[address] = counts.get(address, 0) + 1
                victim = max(counts, key=counts.get)
                os.kill(client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
                killed.append(victim)
                deadline = time.monotonic() + 30
                while victim in client.scheduler_info()["workers"] and time.monotonic() < deadline:
                    time.sleep(0.05)
            return real_compute(tasks, progress)

        monkeypatch.setattr(blocks.ScatteredParts, "__init__", init)
        monkeypatch.setattr(blocks.ScatteredParts, "rescatter", rescatter)
        monkeypatch.setattr(blocks, "_compute", compute)
        result = eoca.solve(problem)
        assert killed, "no pass read scattered vectors"
        assert rescattered, "the lost worker's data was never needed again: the test did not test a loss"
        assert result.status == "optimal" and result.checks.ok
        assert result.objective == pytest.approx(reference.objective, rel=1e-12)
        np.testing.assert_array_equal(result.codes, reference.codes)


def test_a_loss_that_keeps_happening_is_named(monkeypatch):
    """Where a loss cannot be recovered the error is eoca's, names the pass and says to retry."""
    from eoca.distributed import blocks

    def lost(tasks, progress=None):
        raise distributed.client.FutureCancelledError("x", reason="lost")

    monkeypatch.setattr(blocks, "_compute", lost)
    grid = dask.array.ones((100, 3), chunks=(50, 3))
    with pytest.raises(WorkerLostError, match=r"'_rows' over the grid's 2 chunks lost data with a worker 4 times.*retry"):
        map_user_blocks(_rows, grid, [np.zeros(100, np.int32)])
