"""Neighbour sampling over the consumption graph, with torch tensor operations only.

A training batch of ESDPM needs, for its users, the merchants they pay and, for each of those
merchants, the users who pay it. On a large platform a merchant has hundreds of thousands of payers,
so each batch draws at most ``fanout[0]`` payments per user and at most ``fanout[1]`` payers per
merchant (GraphSAGE-style sampling) and runs the two graph-attention layers on that sub-graph only:
a batch then costs the same whatever the platform's size.

torch-geometric ships neighbour loaders, but they sample through the compiled ``pyg-lib`` or
``torch-sparse`` extensions, which have no wheel for the torch eoca is built with. The sampling here
works on a CSR index of the payments (one per direction, built once per fit) with vectorised draws:
a node with at most ``fanout`` edges keeps all of them, a node with more draws ``fanout`` distinct
edges uniformly with Floyd's algorithm, one vectorised step per draw (``fanout`` steps in all, never a
loop over nodes). Edges are payments, so a user who paid a merchant twice has two edges, as in the
full graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["csr_by", "sample_edges", "expand_rows"]


def csr_by(keys: Tensor, n_rows: int) -> tuple[Tensor, Tensor]:
    """CSR layout of edges grouped by ``keys``: ``(rowptr (n_rows + 1,), order (E,))``.

    ``order`` lists the edge positions sorted by key (stable, so ties keep their input order); the
    edges of row ``r`` are ``order[rowptr[r]:rowptr[r + 1]]``.
    """
    order = torch.argsort(keys, stable=True)
    rowptr = torch.zeros(n_rows + 1, dtype=torch.long)
    torch.cumsum(torch.bincount(keys, minlength=n_rows), 0, out=rowptr[1:])
    return rowptr, order


def expand_rows(rowptr: Tensor, nodes: Tensor) -> tuple[Tensor, Tensor]:
    """Every edge of ``nodes``: ``(row, position)``, ``row`` indexing ``nodes``, ``position`` the CSR slot."""
    start = rowptr[nodes]
    counts = rowptr[nodes + 1] - start
    row = torch.repeat_interleave(torch.arange(len(nodes)), counts)
    first = torch.cumsum(counts, 0) - counts
    position = start[row] + torch.arange(len(row)) - first[row]
    return row, position


def sample_edges(
    rowptr: Tensor, nodes: Tensor, fanout: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """At most ``fanout`` distinct edges of each of ``nodes``, drawn uniformly without replacement.

    Parameters
    ----------
    rowptr : Tensor
        ``(n_rows + 1,)`` int64 CSR row pointer.
    nodes : Tensor
        ``(N,)`` int64 rows to sample for.
    fanout : int
        Most edges kept per node (>= 1). A node with at most ``fanout`` edges keeps all of them, in
        CSR order.
    generator : torch.Generator, optional
        Source of the draws (seed it for a reproducible sample).

    Returns
    -------
    row, position : Tensor
        ``(E',)`` each: the index into ``nodes`` of every sampled edge and its CSR slot (in
        ``[rowptr[n], rowptr[n + 1])``). Edges of the nodes that keep all are first, then the draws.
    """
    start = rowptr[nodes]
    degree = rowptr[nodes + 1] - start
    whole = torch.nonzero(degree <= fanout).squeeze(1)
    row, position = expand_rows(rowptr, nodes[whole])
    row = whole[row]
    big = torch.nonzero(degree > fanout).squeeze(1)
    if len(big) == 0:
        return row, position
    d = degree[big]
    picks = torch.empty((len(big), fanout), dtype=torch.long)
    # Floyd: for j = d - fanout, ..., d - 1 draw t uniform in [0, j]; keep t unless already drawn, else j
    for step in range(fanout):
        top = d - fanout + step
        draw = torch.rand(len(big), generator=generator, dtype=torch.float64)
        t = torch.minimum((draw * (top + 1)).long(), top)
        taken = (picks[:, :step] == t[:, None]).any(1)
        picks[:, step] = torch.where(taken, top, t)
    sampled = (start[big, None] + picks).flatten()
    return torch.cat([row, big.repeat_interleave(fanout)]), torch.cat([position, sampled])
