"""Inference over the entire user × fund space.

:func:`grid_outputs` computes the user side once per user (features, behaviour attention, graph) and
the fund side once per fund, then runs only the multi-task head on the (user chunk × fund) pairs,
writing into ``(n_users, n_funds)`` arrays; no per-pair activation outlives its chunk.
:func:`pairwise_outputs` is the naive reference that runs the whole network on each pair.
"""

from __future__ import annotations

import numpy as np
import torch

from eoca.predict.features import EncodedPlatform
from eoca.predict.models import ETVNetwork

__all__ = ["grid_outputs", "pairwise_outputs"]


@torch.no_grad()
def grid_outputs(
    network: ETVNetwork, data: EncodedPlatform, *, chunk_users: int = 8192
) -> dict[str, np.ndarray]:
    """Outputs (``p``, ``pctr``, ``mu``, ``sigma`` as the model has them) for every user and fund.

    Parameters
    ----------
    network : ETVNetwork
    data : EncodedPlatform
        Users and funds to score (all of them).
    chunk_users : int
        Users per chunk: memory grows with ``chunk_users × n_funds × head size``.

    Returns
    -------
    dict of numpy.ndarray
        Each ``(n_users, n_funds)``, float32.
    """
    network.eval()
    n, k = data.n_users, len(data.fund_ids)
    e_f = network.fund_features(data.fund_numeric, data.fund_categorical)
    z_fund = network.fund_projection(torch.cat([e_f, network.fund_id(data.fund_ids)], dim=1))
    merchant_h = None
    if network.graph is not None:
        all_x = torch.cat(
            [
                network.user_features(
                    data.user_numeric[s : s + chunk_users], data.user_categorical[s : s + chunk_users]
                )
                for s in range(0, n, chunk_users)
            ]
        )
        edges = torch.stack([data.edge_user, data.edge_merchant])
        merchant_h = network.graph.merchant_layer(all_x, edges)
    result: dict[str, np.ndarray] = {}
    for start in range(0, n, chunk_users):
        users = torch.arange(start, min(start + chunk_users, n))
        e_u = network.user_features(data.user_numeric[users], data.user_categorical[users])
        parts = [e_u]
        if network.sequence is not None:
            parts.append(network.sequence(data.seq_funds[users], data.seq_actions[users]))
        if network.graph is not None:
            parts.append(network.graph.user_layer(merchant_h, e_u, data.local_edges(users)))
        z_user = network.user_projection(torch.cat(parts, dim=1))
        out = network.output(network.head(z_user[:, None, :] + z_fund[None, :, :]))
        for name, value in out.items():
            if name not in result:
                result[name] = np.empty((n, k), dtype=np.float32)
            result[name][start : start + len(users)] = value.numpy()
    return result


@torch.no_grad()
def pairwise_outputs(
    network: ETVNetwork, data: EncodedPlatform, *, batch_pairs: int = 4096
) -> dict[str, np.ndarray]:
    """The same outputs as :func:`grid_outputs`, running the full network once per (user, fund) pair.

    This is how a model is scored when every pair is an independent sample (user features,
    attention and graph recomputed for each pair); it exists as the reference and baseline.
    """
    network.eval()
    n, k = data.n_users, len(data.fund_ids)
    pair_user = torch.arange(n).repeat_interleave(k)
    pair_fund = torch.arange(k).repeat(n)
    result: dict[str, np.ndarray] = {}
    graph = network.graph is not None
    for start in range(0, n * k, batch_pairs):
        users = pair_user[start : start + batch_pairs]
        batch = data.user_batch(users, graph=graph)
        batch["pair_user"] = torch.arange(len(users))
        batch["pair_fund"] = pair_fund[start : start + batch_pairs]
        out = network(batch)
        for name, value in out.items():
            if name not in result:
                result[name] = np.empty(n * k, dtype=np.float32)
            result[name][start : start + len(users)] = value.numpy()
    return {name: value.reshape(n, k) for name, value in result.items()}
