"""Inference over the entire user × fund space.

:func:`grid_outputs` computes the user side once per user (features, behaviour attention, graph) and
the fund side once per fund, then runs only the multi-task head on the (user chunk × fund) pairs,
writing into ``(n_users, n_funds)`` arrays; no per-pair activation outlives its chunk.
:func:`pairwise_outputs` is the naive reference that runs the whole network on each pair.

The first graph layer (users → merchants) attends over *every* user who paid a merchant, so scoring the
users in separate pieces (one Dask task per chunk of users) needs the merchant embeddings of the whole
platform. Each merchant's output is an attention-weighted sum, i.e. a softmax, which decomposes over
any split of its payers: :func:`merchant_partials` summarises one piece of users (per merchant and head:
the largest attention logit, the sum of ``exp(logit - max)`` and the sum of ``exp(logit - max) * W x_u``),
:func:`merge_merchant_partials` combines summaries with log-sum-exp rescaling, and
:func:`finish_merchants` turns the merged summary into exactly what ``MerchantLayer`` computes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import NamedTuple, TypeVar

import numpy as np
import torch
from torch import Tensor

from eoca.predict._sequence_kernel import sequence_scorer
from eoca.predict.features import EncodedPlatform
from eoca.predict.models import ETVNetwork

__all__ = [
    "MerchantPartials",
    "finish_merchants",
    "merchant_embeddings",
    "grid_etv",
    "grid_outputs",
    "merchant_partials",
    "merchant_summary",
    "merge_merchant_partials",
    "pairwise_outputs",
]


T = TypeVar("T")


class MerchantPartials(NamedTuple):
    """Sufficient statistics of the users → merchants attention over one piece of the users.

    ``M`` merchants (the model's merchant vocabulary), ``H`` heads, ``C`` channels per head.

    Attributes
    ----------
    max : Tensor
        ``(M, H)``: the largest attention logit per merchant and head; ``-inf`` where no user of the
        piece paid the merchant.
    denominator : Tensor
        ``(M, H)``: ``sum exp(logit - max)`` over the piece's edges into the merchant.
    numerator : Tensor
        ``(M, H, C)``: ``sum exp(logit - max) * (W_src x_u)`` over the same edges.
    """

    max: Tensor
    denominator: Tensor
    numerator: Tensor


def _user_x(network: ETVNetwork, data: EncodedPlatform, users: Tensor) -> Tensor:
    return network.user_features(data.user_numeric[users], data.user_categorical[users])


@torch.no_grad()
def merchant_partials(
    network: ETVNetwork, data: EncodedPlatform, users: Tensor | None = None
) -> MerchantPartials:
    """Summarise the first graph layer's attention over the payments of ``users`` (default: all).

    The logits are those of ``GATConv`` in eval mode (no dropout, no self-loops):
    ``leaky_relu(<a_src, W_src x_u> + <a_dst, W_dst m>)`` per head.

    Parameters
    ----------
    network : ETVNetwork
        A graph model (``network.graph`` is not None).
    data : EncodedPlatform
        Its merchant indices come from the fitted vocabulary, so pieces of one platform encoded
        separately address the same merchant rows.
    users : Tensor, optional
        Rows of ``data``'s users whose payments to summarise.

    Returns
    -------
    MerchantPartials
    """
    network.eval()
    layer = network.graph.merchant_layer
    conv = layer.conv
    h, c = conv.heads, conv.out_channels
    users = torch.arange(data.n_users) if users is None else users
    lin_src = conv.lin if conv.lin is not None else conv.lin_src
    lin_dst = conv.lin if conv.lin is not None else conv.lin_dst
    x_src = lin_src(_user_x(network, data, users)).view(-1, h, c)
    x_dst = lin_dst(layer.merchant.weight).view(-1, h, c)
    merchant, user = data.local_edges(users)
    logit = (x_src * conv.att_src).sum(-1)[user] + (x_dst * conv.att_dst).sum(-1)[merchant]
    logit = torch.nn.functional.leaky_relu(logit, conv.negative_slope)
    m = len(x_dst)
    index = merchant[:, None].expand(-1, h)
    top = torch.full((m, h), -torch.inf, dtype=logit.dtype)
    top = top.scatter_reduce(0, index, logit, reduce="amax", include_self=True)
    weight = torch.exp(logit - top[merchant])
    denominator = torch.zeros((m, h), dtype=logit.dtype).index_add_(0, merchant, weight)
    numerator = torch.zeros((m, h, c), dtype=logit.dtype).index_add_(
        0, merchant, weight[..., None] * x_src[user]
    )
    return MerchantPartials(top, denominator, numerator)


def merge_merchant_partials(*parts: MerchantPartials) -> MerchantPartials:
    """Combine summaries of disjoint pieces of users (associative and commutative, so tree-reducible).

    Each piece's sums are rescaled from its own maximum to the common one: ``exp(max_i - max)``.
    """
    top = parts[0].max
    for p in parts[1:]:
        top = torch.maximum(top, p.max)
    denominator = torch.zeros_like(parts[0].denominator)
    numerator = torch.zeros_like(parts[0].numerator)
    for p in parts:
        # a merchant no user of this piece paid has max -inf and empty sums: scale 0, not exp(nan)
        scale = torch.where(torch.isinf(p.max), 0.0, torch.exp(p.max - top))
        denominator += scale * p.denominator
        numerator += scale[..., None] * p.numerator
    return MerchantPartials(top, denominator, numerator)


@torch.no_grad()
def finish_merchants(network: ETVNetwork, partials: MerchantPartials) -> Tensor:
    """Merchant embeddings from the merged summary of all users: ``MerchantLayer``'s output.

    As ``GATConv``: the softmax divides by ``sum + 1e-16`` (a merchant nobody paid gets 0), heads are
    concatenated (or averaged), the bias is added; ``MerchantLayer`` then applies the ELU.
    """
    layer = network.graph.merchant_layer
    conv = layer.conv
    out = partials.numerator / (partials.denominator[..., None] + 1e-16)
    out = out.flatten(1) if conv.concat else out.mean(dim=1)
    if conv.res is not None:
        out = out + conv.res(layer.merchant.weight)
    if conv.bias is not None:
        out = out + conv.bias
    return torch.nn.functional.elu(out)


def merchant_summary(network: ETVNetwork, data: EncodedPlatform, *, chunk_users: int = 8192) -> MerchantPartials:
    """:func:`merchant_partials` of every user of ``data``, summarised ``chunk_users`` at a time (one chunk per
    core) and merged in chunk order as they come, so memory grows with the chunks' payments and the number
    of merchants, never with the platform."""
    _workers(True)  # before this thread's first operation (see _WORKERS)
    merged = merchant_partials(network, data, torch.zeros(0, dtype=torch.long))
    pieces = _map_chunks(data.n_users, chunk_users, lambda a, b: merchant_partials(network, data, torch.arange(a, b)))
    for piece in pieces:
        merged = merge_merchant_partials(merged, piece)
    return merged


def merchant_embeddings(network: ETVNetwork, data: EncodedPlatform, *, chunk_users: int = 8192) -> Tensor:
    """``MerchantLayer``'s output for every merchant, attending over every payment of ``data``
    (:func:`merchant_summary`, then :func:`finish_merchants`).

    Returns
    -------
    Tensor
        ``(n_merchants, heads * graph_dim)``.
    """
    return finish_merchants(network, merchant_summary(network, data, chunk_users=chunk_users))


# Pairs per call of the head: its per-expert activations (experts x pairs x hidden floats, 2 MiB) then
# stay in cache; on this machine 2,048 pairs (256 users x 8 funds) ran 2x faster than 65,536 and 1.3x
# faster than 8,192 (and, one core per chunk, 1.03x faster than 4,096 and 1.2x faster than 512).
HEAD_PAIRS = 2048


def _chunk_scorer(
    network: ETVNetwork, data: EncodedPlatform, merchant_h: Tensor | None, chunk_users: int
) -> Callable[[int, int], dict[str, Tensor]]:
    """``outputs(start, stop)``: ``{output: (stop - start, n_funds)}`` for the users at rows ``start:stop``.

    The fund side and the merchant embeddings are computed once, here; each call runs the user side of
    its users and the head on their pairs. Safe to call from several threads at once: each thread keeps
    its own head buffers, and enters inference mode itself (the mode is per thread).
    """
    _workers(True)  # before this thread's first operation (see _WORKERS)
    network.eval()
    k = len(data.fund_ids)
    with torch.inference_mode():
        e_f = network.fund_features(data.fund_numeric, data.fund_categorical)
        z_fund = network.fund_projection(torch.cat([e_f, network.fund_id(data.fund_ids)], dim=1))
        if network.graph is not None and merchant_h is None:
            merchant_h = merchant_embeddings(network, data, chunk_users=chunk_users)
    step = max(1, HEAD_PAIRS // max(k, 1))
    embed_sequence = sequence_scorer(network.sequence) if network.sequence is not None else None
    local = threading.local()

    @torch.inference_mode()
    def outputs(start: int, stop: int) -> dict[str, Tensor]:
        score = getattr(local, "score", None)
        if score is None:
            score = local.score = network.head.grid_scorer(z_fund, step)
        users = torch.arange(start, stop)
        e_u = _user_x(network, data, users)
        parts = [e_u]
        if embed_sequence is not None:
            parts.append(embed_sequence(data.seq_funds[users], data.seq_actions[users]))
        if network.graph is not None:
            parts.append(network.graph.user_layer(merchant_h, e_u, data.local_edges(users)))
        z_user = network.user_projection(torch.cat(parts, dim=1))
        pieces = [score(z_user[s : s + step]) for s in range(0, max(len(users), 1), step)]  # one, empty, for none
        raw = {name: torch.cat([piece[name] for piece in pieces]) for name in pieces[0]}
        return network.output(raw)

    return outputs


# One pool of one-thread workers per process and size, made once: PyTorch's thread count is per
# thread, but a thread's first look at it (its first operation, or ``torch.get_num_threads``) copies the
# process-wide "last set" value, which every ``torch.set_num_threads`` also writes, even one made before
# that look. A pool made per call set that value to 1 while it ran, so another thread that looked then
# (a Dask task, a second prediction) got 1 thread, and kept it. Now the value is 1 only while a pool is
# made, under a lock under which every prediction takes its first look; a thread outside eoca that
# looks at that moment, once per process, can still see it.
_WORKERS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_WORKERS_LOCK = threading.Lock()


def _one_thread() -> None:
    torch.get_num_threads()  # this thread's count initialised now, so that no later look resets it
    torch.set_num_threads(1)


def _workers(wanted: bool) -> ThreadPoolExecutor | None:
    """When ``wanted`` and the caller's PyTorch thread count ``t`` is above 1, the pool of ``t`` one-thread
    workers (made on first use, its workers all started before ``t`` is put back as the process-wide
    value); None otherwise. Either way the caller has taken its first look at its count."""
    with _WORKERS_LOCK:  # no caller looks at its count while a pool is being made
        threads = torch.get_num_threads()
        if threads <= 1 or not wanted:
            return None
        key = (os.getpid(), threads)  # a forked process makes its own
        pool = _WORKERS.get(key)
        if pool is None:
            pool = ThreadPoolExecutor(threads, thread_name_prefix="eoca-predict", initializer=_one_thread)
            started = threading.Barrier(threads)
            for future in [pool.submit(started.wait) for _ in range(threads)]:
                future.result()
            torch.set_num_threads(threads)
            _WORKERS[key] = pool
        return pool


def _map_chunks(
    n: int, chunk_users: int, work: Callable[[int, int], T], progress: bool = False
) -> Iterator[T]:
    """``work(start, stop)`` over consecutive chunks of ``n`` users, one chunk per core at a time; the
    results in chunk order.

    With PyTorch set to ``t > 1`` threads, ``t`` worker threads each take whole chunks while PyTorch runs
    one thread per operation in them; the caller's own count is left as it is. The per-pair operations
    are small (a few thousand pairs, sized for the cache), so splitting each across cores cost more in
    hand-offs than it gained; whole chunks per core predicted 1M x 8 about 1.2x faster on two cores. The
    chunks' results do not depend on the number of threads. Predictions running at once share the
    workers. The first error stops the chunks not yet started and reaches the caller once the running
    ones have ended.
    """
    from tqdm.auto import tqdm

    chunks = [(start, min(start + chunk_users, n)) for start in range(0, n, chunk_users)]
    with tqdm(total=n, desc="predicting", unit=" users", unit_scale=True, disable=not progress, leave=False) as bar:

        def one(chunk: tuple[int, int]) -> T:
            result = work(*chunk)
            bar.update(chunk[1] - chunk[0])
            return result

        pool = _workers(len(chunks) > 1)
        if pool is None:
            yield from map(one, chunks)
            return
        futures = [pool.submit(one, chunk) for chunk in chunks]
        try:
            for future in futures:
                yield future.result()
        finally:  # an error, or the caller stopped early: nothing of this call runs on afterwards
            for future in futures:
                future.cancel()
            wait(futures)


def grid_outputs(
    network: ETVNetwork,
    data: EncodedPlatform,
    *,
    chunk_users: int = 8192,
    merchant_h: Tensor | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Outputs (``p``, ``pctr``, ``mu``, ``sigma`` as the model has them) for every user and fund.

    Parameters
    ----------
    network : ETVNetwork
    data : EncodedPlatform
        Users and funds to score (all of them).
    chunk_users : int
        Users per chunk of the user side; the head runs on a few thousand pairs at a time. Chunks run
        on as many threads as PyTorch is set to use (``torch.set_num_threads``).
    merchant_h : Tensor, optional
        Graph models: merchant embeddings computed elsewhere (e.g. by :func:`finish_merchants` over the
        whole platform when ``data`` holds only some of its users). By default they come from ``data``
        (:func:`merchant_embeddings`).
    progress : bool
        Show a progress bar (users and users per second).

    Returns
    -------
    dict of numpy.ndarray
        Each ``(n_users, n_funds)``, float32.
    """
    n, k = data.n_users, len(data.fund_ids)
    outputs = _chunk_scorer(network, data, merchant_h, chunk_users)
    names = list(outputs(0, min(1, n)))  # the model's outputs, from one user
    result = {name: np.empty((n, k), dtype=np.float32) for name in names}

    def work(start: int, stop: int) -> None:
        for name, value in outputs(start, stop).items():
            result[name][start:stop] = value.numpy()

    for _ in _map_chunks(n, chunk_users, work, progress):
        pass
    return result


def grid_etv(
    network: ETVNetwork,
    data: EncodedPlatform,
    etv: Callable[[dict[str, np.ndarray]], np.ndarray],
    *,
    chunk_users: int = 8192,
    merchant_h: Tensor | None = None,
    progress: bool = False,
) -> np.ndarray:
    """The ETV grid, ``(n_users, n_funds)`` float64, formed chunk by chunk from the outputs by ``etv``.

    Only the grid itself outlives a chunk: peak memory is the grid plus one chunk's activations per
    thread. ``etv`` may be called from several threads at once. Other parameters as :func:`grid_outputs`.
    """
    grid = np.empty((data.n_users, len(data.fund_ids)), dtype=np.float64)
    outputs = _chunk_scorer(network, data, merchant_h, chunk_users)

    def work(start: int, stop: int) -> None:
        grid[start:stop] = etv({name: v.numpy() for name, v in outputs(start, stop).items()})

    for _ in _map_chunks(data.n_users, chunk_users, work, progress):
        pass
    return grid


@torch.inference_mode()
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


@torch.inference_mode()
def impression_outputs(
    network: ETVNetwork, data: EncodedPlatform, rows: Tensor | None = None, *, batch_size: int = 4096
) -> dict[str, np.ndarray]:
    """Outputs for the (user, fund) pairs of the impressions at ``rows`` (all by default), each ``(n_rows,)``
    float32, as the model predicts them (graph models attend over every payment)."""
    network.eval()
    rows = torch.arange(len(data.amount)) if rows is None else rows
    graph = network.graph is not None
    merchant_h = merchant_embeddings(network, data) if graph else None
    result: dict[str, np.ndarray] = {}
    for start in range(0, len(rows), batch_size):
        idx = rows[start : start + batch_size]
        batch, _ = data.impression_batch(idx, graph=graph, merchant_h=merchant_h)
        for name, value in network(batch).items():
            if name not in result:
                result[name] = np.empty(len(rows), dtype=np.float32)
            result[name][start : start + len(idx)] = value.numpy()
    return result
