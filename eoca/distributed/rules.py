"""Side constraints on a Dask-backed grid: the exact solver's smoothed-dual method, each of its reads of
every user run as one map-reduce pass over the grid's chunks.

The method (:mod:`eoca.solvers._side_dual`, settled by :func:`eoca.solvers._side_exact.solve_by_smoothed_dual`)
reads all users in four ways, which :class:`Chunked` supplies chunk by chunk: each user's best option and
gap under prices and multipliers, the smoothed dual's sums (value, gradient, Hessian), a set of users'
rows gathered into memory (a random sample, the users near a tie), and the ETV of an allocation. Every
other step (Newton's method in k + m variables, the LP and the MIP of the settlement) runs in the client on
the few users it needs. The per-user vectors (risk codes, mask rows, constraint weights) are cut along the
grid's chunks once and, with a ``dask.distributed`` client, sent once as data Dask holds
(:func:`split_users`).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from eoca.distributed.blocks import _bounds, map_user_blocks, split_users
from eoca.problem import CompiledProblem
from eoca.solvers._side_dual import _Dual, _Layout, layout_sums, rows_problem
from eoca.solvers._side_exact import solve_by_smoothed_dual
from eoca.solvers._side_kernels import reduced_choices

__all__ = ["Chunked", "solve_rules"]


def _template(c: CompiledProblem) -> CompiledProblem:
    """``c`` without its per-user data (what every chunk's task carries; the rest travels cut by chunk)."""
    k = c.n_funds
    return replace(
        c, etv=np.zeros((0, k)), user_level=np.zeros(0, dtype=np.int32), mask=None,
        constraints=tuple(replace(con, user_weight=None if con.user_weight is None else np.zeros(0),
                                  grid=None if con.grid is None else np.zeros((0, k))) for con in c.constraints))


def _chunk(block: np.ndarray, vectors: tuple, template: CompiledProblem, has_mask: bool) -> CompiledProblem:
    """One chunk as an in-memory problem: its grid rows and the slices of the per-user vectors, in the
    order :class:`Chunked` cut them (risk codes, the mask if any, one weight array per constraint)."""
    it = iter(vectors)
    user_level = next(it)
    mask = next(it) if has_mask else None
    constraints = tuple(replace(con, user_weight=next(it)) if con.grid is None else replace(con, grid=next(it))
                        for con in template.constraints)
    return replace(template, etv=block, user_level=user_level, mask=mask, constraints=constraints)


def _split(items: tuple, n_args: int):
    return items[: len(items) - n_args], items[len(items) - n_args:]


def _choices_block(block, *items):
    vectors, (template, has_mask, lam, mu) = _split(items, 4)
    best, gap, _ = reduced_choices(_chunk(block, vectors, template, has_mask), block, lam, mu, None)
    return best, gap


def _sums_block(block, *items):
    vectors, (template, has_mask, y, tau, stride) = _split(items, 5)
    return layout_sums(_Layout(_chunk(block, vectors, template, has_mask)), y, tau, stride)


def _rows_block(block, rows):
    return np.array(block[rows])


def _value_block(block, codes):
    placed = np.flatnonzero(codes >= 0)
    return float(block[placed, codes[placed]].sum())


class Chunked:
    """Every user of a problem with a Dask-backed grid, read chunk by chunk (the in-memory counterpart is
    :class:`eoca.solvers._side_dual.InMemory`)."""

    def __init__(self, c: CompiledProblem):
        self.c = c
        self.template = _template(c)
        self.has_mask = c.mask is not None
        vectors = [c.user_level] + ([c.mask] if self.has_mask else [])
        vectors += [con.user_weight if con.grid is None else con.grid for con in c.constraints]
        self.parts = split_users(c.etv, vectors)
        self.bounds = _bounds(c.etv)

    def _per_chunk(self, values: np.ndarray, rows: np.ndarray | None = None) -> list[tuple]:
        """``values`` (one per user, or one per position of the sorted ``rows``) cut by chunk; with
        ``rows``, each chunk's positions local to it."""
        b = self.bounds
        if rows is None:
            return [(values[b[i]:b[i + 1]],) for i in range(len(b) - 1)]
        cut = np.searchsorted(rows, b)
        return [(rows[cut[i]:cut[i + 1]] - b[i],) for i in range(len(b) - 1)]

    def choices(self, lam: np.ndarray, mu: np.ndarray):
        out = map_user_blocks(_choices_block, self.c.etv, parts=self.parts,
                              args=(self.template, self.has_mask, np.asarray(lam, float), np.asarray(mu, float)))
        return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])

    def dual(self, lo: np.ndarray, hi: np.ndarray) -> _Dual:
        def sums(y, tau, stride):
            out = map_user_blocks(_sums_block, self.c.etv, parts=self.parts,
                                  args=(self.template, self.has_mask, np.asarray(y, float), float(tau), int(stride)))
            return (sum(o[0] for o in out), sum(o[1] for o in out), sum(o[2] for o in out), sum(o[3] for o in out))

        return _Dual(sums, lo, hi, self.c.n_funds)

    def subset(self, rows: np.ndarray) -> CompiledProblem:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) > 1 and not np.all(rows[1:] > rows[:-1]):
            raise ValueError("rows must be sorted and distinct")
        out = map_user_blocks(_rows_block, self.c.etv, parts=[()] * (len(self.bounds) - 1),
                              per_block=self._per_chunk(None, rows))
        etv = np.concatenate(out) if out else np.zeros((0, self.c.n_funds))
        return rows_problem(self.c, rows, etv=etv)

    def value(self, codes: np.ndarray) -> float:
        out = map_user_blocks(_value_block, self.c.etv, parts=[()] * (len(self.bounds) - 1),
                              per_block=self._per_chunk(np.asarray(codes, dtype=np.int64)))
        return float(sum(out))


def solve_rules(c: CompiledProblem, time_limit: float | None = None) -> dict:
    """The exact solve of a Dask-backed problem with side constraints (the smoothed-dual method). Where it
    does not settle (rules no allocation can meet are the usual reason), the status is ``error`` and the
    message says to load the grid for the diagnosis the restricted LPs give in memory."""
    start = time.perf_counter()
    deadline = None if time_limit is None else start + time_limit
    out = solve_by_smoothed_dual(c, Chunked(c), deadline, start)
    if out is not None:
        return out
    return {"codes": np.full(c.n_users, -1, dtype=np.int32), "status": "error", "prices": None, "multipliers": None,
            "stats": {"method": "smoothed dual"},
            "message": "the side constraints did not settle on this Dask-backed grid (often: no allocation meets "
                       "them); load the grid into memory (problem.etv.load()) and solve again for the diagnosis"}
