import os
import subprocess
import sys

import pytest

import eoca
from eoca.testing import etv_grid as grid

_WARMUP = "from eoca.warmup import warmup; warmup(('float32', 'float64'), echo=None)"


def _cache_is_cold() -> bool:
    """Whether no eoca kernel has been compiled into the cache yet (a fresh clone, as on CI)."""
    from eoca.warmup import cache_location

    return not any(cache_location().rglob("*.nbi"))


def pytest_sessionstart(session):
    """On a fresh machine the suite's first solves compile every numba kernel (minutes, each on one core):
    ``eoca warmup`` then runs beside the tests, at low priority on one thread, and fills the cache that
    the tests load from; float32 first, as the tests reach the float64 kernels first themselves. Where
    the cache already holds kernels, or with ``EOCA_TEST_WARMUP=0``, nothing runs."""
    if os.environ.get("EOCA_TEST_WARMUP", "1") == "0" or not _cache_is_cold():
        return
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    session.config._eoca_warmup = subprocess.Popen(
        [sys.executable, "-c", _WARMUP], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=(lambda: os.nice(10)) if hasattr(os, "nice") else None,
    )


def pytest_sessionfinish(session):
    proc = getattr(session.config, "_eoca_warmup", None)
    if proc is not None and proc.poll() is None:
        proc.terminate()  # numba writes each cache file whole (a temporary name, then a rename)
        proc.wait(timeout=30)


@pytest.fixture
def toy() -> eoca.AllocationProblem:
    """The paper's Figure 2 shape: f1 takes two users, f2 one; u1 may not take the riskier f2."""
    return eoca.AllocationProblem(
        etv=grid([[0.9, 0.2], [0.7, 0.5], [0.3, 0.8]]),
        demand={"f1": 2, "f2": 1},
        risk_level={"f1": "R1", "f2": "R3"},
        risk_tolerance={"u1": "R2", "u2": "R3", "u3": "R4"},
    )
