"""Network architectures for ETV prediction (``__init__`` and forward passes only).

Every model is an :class:`ETVNetwork`: a user side (feature embeddings, self-attention over the
behaviour sequence, optionally a two-layer graph attention network over the user–merchant–user
consumption graph) and a fund side (feature and id embeddings) are each projected into the input
space of the first layer of a multi-task head. Because that first layer is linear in the
concatenation ``[e_u || e_b || e_c || e_f]`` (eq. 14), it equals the sum of a user part and a fund
part: the user side runs once per user, the fund side once per fund, and only the head runs per
(user, fund) pair. The loop, the losses and early stopping live in :mod:`eoca.predict.train`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch_geometric.nn import GATConv

__all__ = [
    "FeatureEncoder",
    "SequenceEncoder",
    "MerchantLayer",
    "UserLayer",
    "GraphEncoder",
    "MultiTaskHead",
    "OutputLayer",
    "ETVNetwork",
]


class FeatureEncoder(nn.Module):
    """Standardised numeric features concatenated with one embedding per categorical feature.

    Parameters
    ----------
    n_numeric : int
        Number of numeric columns.
    cardinalities : list of int
        Vocabulary size of each categorical column (index 0 = unknown or missing).
    dim : int
        Embedding size of each categorical column.
    """

    def __init__(self, n_numeric: int, cardinalities: list[int], dim: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(c, dim) for c in cardinalities)
        self.out_dim = n_numeric + dim * len(cardinalities)

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        """``(B, n_numeric)``, ``(B, n_cat)`` → ``(B, out_dim)``."""
        parts = [numeric] + [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        return torch.cat(parts, dim=1)


class SequenceEncoder(nn.Module):
    """Self-attention over a user's behaviour sequence (fund + action tokens), mean-pooled.

    A learned start token is always present, so users without history get a defined embedding.
    Index 0 of ``funds`` and ``actions`` is padding.
    """

    def __init__(self, n_funds: int, n_actions: int, dim: int, heads: int) -> None:
        super().__init__()
        self.fund = nn.Embedding(n_funds, dim, padding_idx=0)
        self.action = nn.Embedding(n_actions, dim, padding_idx=0)
        self.start = nn.Parameter(torch.zeros(1, 1, dim))
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def forward(self, funds: Tensor, actions: Tensor) -> Tensor:
        """``(B, L)`` fund and action indices → ``(B, dim)``."""
        # columns after the last token of every row change nothing (masked keys, not pooled): drop them
        width = int(self._widths(funds).max()) if funds.numel() else 0
        return self._attend(funds[:, :width], actions[:, :width])

    def forward_by_length(self, funds: Tensor, actions: Tensor, min_rows: int = 256) -> Tensor:
        """:meth:`forward` on rows grouped by the length of their history, each group cut to its width.

        The same embeddings (up to float rounding), but attention costs the square of each group's width
        instead of the longest history of the batch: a few long histories no longer pad every row. Groups
        hold rows of consecutive widths, at least ``min_rows`` of them (except the last).
        """
        if not funds.numel() or len(funds) <= min_rows:
            return self.forward(funds, actions)
        widths = self._widths(funds)
        order = torch.argsort(widths, stable=True)
        sorted_widths = widths[order]
        values, counts = torch.unique_consecutive(sorted_widths, return_counts=True)
        out = torch.empty(len(funds), self.out_dim)
        start = taken = 0
        for width, count in zip(values.tolist(), counts.tolist()):
            taken += count
            if taken - start >= min_rows or taken == len(funds):
                rows = order[start:taken]
                out[rows] = self._attend(funds[rows, :width], actions[rows, :width])
                start = taken
        return out

    @staticmethod
    def _widths(funds: Tensor) -> Tensor:
        """Per row, one past the column of its last token (0 for no history)."""
        column = torch.arange(1, funds.shape[1] + 1)
        return torch.where(funds != 0, column, 0).amax(1) if funds.shape[1] else funds.new_zeros(len(funds))

    def _attend(self, funds: Tensor, actions: Tensor) -> Tensor:
        tokens = self.fund(funds) + self.action(actions)
        tokens = torch.cat([self.start.expand(len(funds), 1, -1), tokens], dim=1)
        # the start token is never padding (also when no user of the batch has any history: width 0)
        pad = torch.cat([torch.zeros(len(funds), 1, dtype=torch.bool), funds == 0], dim=1)
        attended, _ = self.attention(tokens, tokens, tokens, key_padding_mask=pad, need_weights=False)
        hidden = self.norm(tokens + attended)
        keep = (~pad).unsqueeze(-1).to(hidden.dtype)
        return (hidden * keep).sum(1) / keep.sum(1)


class MerchantLayer(nn.Module):
    """First graph-attention layer: users → merchants (each merchant attends over its payers)."""

    def __init__(self, user_dim: int, n_merchants: int, dim: int, heads: int) -> None:
        super().__init__()
        self.merchant = nn.Embedding(n_merchants, dim)
        self.conv = GATConv((user_dim, dim), dim, heads=heads, concat=True, add_self_loops=False)
        self.out_dim = dim * heads

    def forward(self, payer_x: Tensor, merchants: Tensor, edge_index: Tensor) -> Tensor:
        """``payer_x (N, user_dim)``, ``merchants (M,)`` merchant ids, ``edge_index (2, E)`` rows
        (row of ``payer_x``, row of ``merchants``) → ``(M, out_dim)``."""
        return torch.nn.functional.elu(self.conv((payer_x, self.merchant(merchants)), edge_index))


class UserLayer(nn.Module):
    """Second graph-attention layer: merchants → users (each user attends over merchants paid)."""

    def __init__(self, merchant_dim: int, user_dim: int, dim: int, heads: int) -> None:
        super().__init__()
        self.conv = GATConv((merchant_dim, user_dim), dim, heads=heads, concat=False, add_self_loops=False)
        self.out_dim = dim

    def forward(self, merchant_h: Tensor, user_x: Tensor, edge_index: Tensor) -> Tensor:
        """``edge_index (2, E)`` rows (row of ``merchant_h``, row of ``user_x``) → ``(len(user_x), dim)``."""
        return torch.nn.functional.elu(self.conv((merchant_h, user_x), edge_index))


class GraphEncoder(nn.Module):
    """Two graph-attention layers over the user–merchant–user consumption graph.

    Both layers run on whatever sub-graph they are given: the whole graph, or the neighbourhood
    sampled for a batch (see :mod:`eoca.predict.sampling`).
    """

    def __init__(self, user_dim: int, n_merchants: int, dim: int, heads: int) -> None:
        super().__init__()
        self.merchant_layer = MerchantLayer(user_dim, n_merchants, dim, heads)
        self.user_layer = UserLayer(self.merchant_layer.out_dim, user_dim, dim, heads)
        self.out_dim = dim

    def forward(
        self, payer_x: Tensor, merchants: Tensor, payer_edges: Tensor, user_x: Tensor, local_edges: Tensor
    ) -> Tensor:
        """Merchant embeddings from their payers, then the embedding of the users in ``user_x``.

        ``payer_edges (2, E)``: (row of ``payer_x``, row of ``merchants``); ``local_edges (2, E')``:
        (row of ``merchants``, row of ``user_x``).
        """
        merchant_h = self.merchant_layer(payer_x, merchants, payer_edges)
        return self.user_layer(merchant_h, user_x, local_edges)


class MultiTaskHead(nn.Module):
    """Per-pair network on top of the summed user and fund projections.

    Parameters
    ----------
    kind : {"mlp", "shared_bottom", "mmoe"}
        ``mlp``: two hidden layers and one linear output per task (the DNN baselines);
        ``shared_bottom``: three shared layers and a two-layer tower per task;
        ``mmoe``: ``n_experts`` two-layer experts, one softmax gate and one two-layer tower per task.
    tasks : tuple of str
        Names of the scalar outputs (raw, before any link function).
    hidden : int
        Width of hidden layers.
    n_experts : int
        Experts of the MMoE head.

    Attributes
    ----------
    in_dim : int
        Size of the input, i.e. of the user and fund projections: the pre-activation of the first
        layer (plus the gate logits for ``mmoe``).
    """

    def __init__(self, kind: str, tasks: tuple[str, ...], hidden: int, n_experts: int) -> None:
        super().__init__()
        self.kind, self.tasks, self.hidden, self.n_experts = kind, tasks, hidden, n_experts
        t = len(tasks)
        if kind == "mmoe":
            self.in_dim = n_experts * hidden + t * n_experts
            self.expert_weight = nn.Parameter(torch.randn(n_experts, hidden, hidden) / hidden**0.5)
            self.expert_bias = nn.Parameter(torch.zeros(n_experts, hidden))
            body_dim = hidden
        else:
            self.in_dim = hidden
            depth = 1 if kind == "mlp" else 2
            self.body = nn.Sequential(
                *[m for _ in range(depth) for m in (nn.Linear(hidden, hidden), nn.ReLU())]
            )
            body_dim = hidden
        if kind == "mlp":
            self.towers = nn.ModuleDict({name: nn.Linear(body_dim, 1) for name in tasks})
        else:
            self.towers = nn.ModuleDict(
                {
                    name: nn.Sequential(
                        nn.Linear(body_dim, hidden // 2), nn.ReLU(), nn.Linear(hidden // 2, 1)
                    )
                    for name in tasks
                }
            )

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        """``z (N, in_dim)`` → ``{task: (N,)}``."""
        if self.kind == "mmoe":
            e, h, t = self.n_experts, self.hidden, len(self.tasks)
            first = z[:, : e * h].unflatten(1, (e, h)).transpose(0, 1)
            gate = z[:, e * h :].unflatten(1, (t, e)).permute(1, 2, 0)
            return self._mmoe(first, gate)
        return self._towers(self.body(torch.relu(z)).expand(len(self.tasks), -1, -1))

    def forward_grid(self, z_user: Tensor, z_fund: Tensor) -> dict[str, Tensor]:
        """Every (user, fund) pair: ``z_user (B, in_dim)``, ``z_fund (K, in_dim)`` → ``{task: (B, K)}``.

        The same as ``forward`` on ``z_user[:, None] + z_fund[None]`` flattened, but MMoE adds the two
        parts straight into the per-expert layout its batched matrix products read.
        """
        b, k = len(z_user), len(z_fund)
        if self.kind == "mmoe":
            e, h, t = self.n_experts, self.hidden, len(self.tasks)

            # experts (E, B x K, H) and gates (T, E, B x K): the pair index runs fastest where reduced over
            user = z_user[:, : e * h].unflatten(1, (e, h)).transpose(0, 1)[:, :, None]
            fund = z_fund[:, : e * h].unflatten(1, (e, h)).transpose(0, 1)[:, None]
            first = (user + fund).flatten(1, 2)
            user = z_user[:, e * h :].unflatten(1, (t, e)).permute(1, 2, 0)[..., None]
            fund = z_fund[:, e * h :].unflatten(1, (t, e)).permute(1, 2, 0)[:, :, None]
            out = self._mmoe(first, (user + fund).flatten(2, 3))
        else:
            out = self.forward((z_user[:, None] + z_fund[None]).flatten(0, 1))
        return {name: value.view(b, k) for name, value in out.items()}

    def grid_scorer(self, z_fund: Tensor, max_users: int) -> Callable[[Tensor], dict[str, Tensor]]:
        """:meth:`forward_grid` against fixed funds for blocks of at most ``max_users`` users, without autograd.

        For prediction (call it in ``torch.inference_mode``): the tower weights are stacked once and the
        per-pair activations of MMoE are written into three buffers kept from block to block instead of
        fresh tensors per operation. The outputs equal :meth:`forward_grid`'s.
        """
        if self.kind != "mmoe":
            return lambda z_user: self.forward_grid(z_user, z_fund)
        e, h, t, k = self.n_experts, self.hidden, len(self.tasks), len(z_fund)
        fund_first = z_fund[:, : e * h].unflatten(1, (e, h)).transpose(0, 1)[:, None]
        fund_gate = z_fund[:, e * h :].unflatten(1, (t, e)).permute(1, 2, 0)[:, :, None]
        first, experts = torch.empty(e, max_users * k, h), torch.empty(e, max_users * k, h)
        mixed = torch.empty(t, max_users * k, h)
        expert_bias = self.expert_bias[:, None, :]
        stages = self._tower_stages()

        def score(z_user: Tensor) -> dict[str, Tensor]:
            b = len(z_user)
            x, y, m = first[:, : b * k], experts[:, : b * k], mixed[:, : b * k]
            user = z_user[:, : e * h].unflatten(1, (e, h)).transpose(0, 1)[:, :, None]
            torch.add(user, fund_first, out=x.view(e, b, k, h)).relu_()
            torch.baddbmm(expert_bias, x, self.expert_weight, out=y).relu_()
            user = z_user[:, e * h :].unflatten(1, (t, e)).permute(1, 2, 0)[..., None]
            gates = torch.softmax((user + fund_gate).flatten(2, 3), dim=1)
            torch.mul(gates[:, 0, :, None], y[0], out=m)
            for i in range(1, e):
                m.addcmul_(gates[:, i, :, None], y[i])
            return {name: value.view(b, k) for name, value in self._run_towers(m, stages).items()}

        return score

    def _mmoe(self, first: Tensor, gate: Tensor) -> dict[str, Tensor]:
        """``first (E, N, H)`` expert pre-activations, ``gate (T, E, N)`` gate logits → tower outputs."""
        # in place where autograd keeps what it needs: baddbmm and addcmul never read their outputs
        experts = torch.baddbmm(self.expert_bias[:, None, :], torch.relu(first), self.expert_weight).relu_()
        gates = torch.softmax(gate, dim=1)  # over the experts, a strided axis: 25x faster than a last axis of 4
        mixed = gates[:, 0, :, None] * experts[0]
        for i in range(1, self.n_experts):
            mixed.addcmul_(gates[:, i, :, None], experts[i])
        return self._towers(mixed)

    def _towers(self, body: Tensor) -> dict[str, Tensor]:
        """``body (T, N, H)``, one slice per task → ``{task: (N,)}``: all towers in batched products."""
        return self._run_towers(body, self._tower_stages())

    def _tower_stages(self) -> list[tuple[Tensor, Tensor]]:
        """``(weight (T, in, out), bias (T, 1, out))`` of each layer of the towers, all tasks stacked."""
        layers = [self.towers[name] for name in self.tasks]
        if self.kind == "mlp":
            stages = [[tower for tower in layers]]
        else:
            stages = [[tower[0] for tower in layers], [tower[2] for tower in layers]]
        return [
            (torch.stack([layer.weight.t() for layer in stage]), torch.stack([layer.bias for layer in stage])[:, None, :])
            for stage in stages
        ]

    def _run_towers(self, body: Tensor, stages: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        x = body
        for weight, bias in stages[:-1]:
            x = torch.baddbmm(bias, x, weight).relu_()
        weight, bias = stages[-1]
        # one output per task: (T, 1, in) x (T, in, N), a row times the pairs' columns, ran 6x faster
        # than (T, N, in) x (T, in, 1), whose product of width 1 the batched kernel handles poorly
        x = torch.baddbmm(bias, weight.transpose(1, 2), x.transpose(1, 2))
        return {name: x[i, 0] for i, name in enumerate(self.tasks)}


class OutputLayer(nn.Module):
    """Link functions from raw tower outputs to ``p`` (pCTCVR), ``pctr``, ``mu`` and ``sigma``.

    ``ctr`` and ``cvr`` towers give ``p = sigmoid(ctr) * sigmoid(cvr)`` (ESMM: the post-click CVR is a
    hidden variable); a ``ctcvr`` tower gives ``p`` directly. ``sigma = sigma_min + softplus(raw)``,
    capped at ``sigma_max``. With a finite ``log_mean_cap`` (set from the training amounts, see
    :meth:`set_bounds`) the log of the mean amount is bounded smoothly: with a sigma tower
    ``mu = cap - softplus(cap - raw)`` where ``cap = log_mean_cap - sigma^2 / 2``, so
    ``mu + sigma^2 / 2 < log_mean_cap``, so ``E[1 + amount] = E[exp V] < exp(log_mean_cap)`` (amounts in
    the model's unit) for every input, however far it lies from the training data; without a sigma
    tower, ``mu < log_mean_cap`` the same way. Below the cap ``mu`` follows its tower almost exactly. The
    components of a mixture (``mu_1``, ``sigma_1``, ...; weights from the ``mix_*`` logits by a softmax)
    are bounded alike, so their mixture is too.
    """

    def __init__(self, sigma_min: float, sigma_max: float) -> None:
        super().__init__()
        # buffers, so the bounds learnt from the training data travel with the weights
        self.register_buffer("sigma_min", torch.tensor(float(sigma_min)))
        self.register_buffer("sigma_max", torch.tensor(float(sigma_max)))
        self.register_buffer("log_mean_cap", torch.tensor(math.inf))

    def set_bounds(self, sigma_max: float, log_mean_cap: float) -> None:
        """Bound ``sigma`` by ``sigma_max`` and the log mean amount by ``log_mean_cap`` (``inf``: no cap)."""
        self.sigma_max.fill_(float(sigma_max))
        self.log_mean_cap.fill_(float(log_mean_cap))

    def forward(self, raw: dict[str, Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if "ctr" in raw:
            out["pctr"] = torch.sigmoid(raw["ctr"])
            out["p"] = out["pctr"] * torch.sigmoid(raw["cvr"])
        elif "ctcvr" in raw:
            out["p"] = torch.sigmoid(raw["ctcvr"])
        capped = bool(torch.isfinite(self.log_mean_cap))
        # "mu"/"sigma", and for a mixture of lognormals "mu_1"/"sigma_1", ... (eoca.predict.mixture)
        for name in [n for n in raw if n == "mu" or n.startswith("mu_")]:
            sigma_name = "sigma" + name[2:]
            sigma = None
            if sigma_name in raw:
                sigma = (self.sigma_min + nn.functional.softplus(raw[sigma_name])).clamp(max=self.sigma_max)
                out[sigma_name] = sigma
            mu = raw[name]
            if capped:
                cap = self.log_mean_cap if sigma is None else self.log_mean_cap - sigma.square() / 2
                mu = cap - nn.functional.softplus(cap - mu)
            out[name] = mu
        mix = sorted((n for n in raw if n.startswith("mix_")), key=lambda n: int(n[4:]))
        if mix:
            weights = torch.softmax(torch.stack([raw[n] for n in mix], dim=-1), dim=-1)
            for c in range(len(mix)):
                out[f"weight_{c}"] = weights[..., c]
        return out


class ETVNetwork(nn.Module):
    """A complete ETV model: user side, fund side, multi-task head and output links.

    Parameters
    ----------
    user_numeric, fund_numeric : int
        Numbers of numeric user / fund features.
    user_cardinalities, fund_cardinalities : list of int
        Vocabulary sizes of categorical user / fund features.
    n_fund_ids, n_actions, n_merchants : int
        Vocabulary sizes (index 0 reserved) of fund ids, behaviour actions and merchants.
    head : {"mlp", "shared_bottom", "mmoe"}
    tasks : tuple of str
        Subset of ``("ctr", "cvr", "ctcvr", "mu", "sigma")``.
    use_sequence, use_graph : bool
        Whether the behaviour self-attention / the consumption-graph GAT are part of the user side.
    embedding_dim, hidden, n_experts, attention_heads, graph_dim, graph_heads : int
        Sizes.
    sigma_min, sigma_max : float
        Bounds of ``sigma``.
    """

    def __init__(
        self,
        *,
        user_numeric: int,
        user_cardinalities: list[int],
        fund_numeric: int,
        fund_cardinalities: list[int],
        n_fund_ids: int,
        n_actions: int,
        n_merchants: int,
        head: str,
        tasks: tuple[str, ...],
        use_sequence: bool,
        use_graph: bool,
        embedding_dim: int = 8,
        hidden: int = 64,
        n_experts: int = 4,
        attention_heads: int = 2,
        graph_dim: int = 16,
        graph_heads: int = 2,
        sigma_min: float = 0.4,
        sigma_max: float = 5.0,
    ) -> None:
        super().__init__()
        self.user_features = FeatureEncoder(user_numeric, user_cardinalities, embedding_dim)
        self.sequence = (
            SequenceEncoder(n_fund_ids, n_actions, 2 * embedding_dim, attention_heads)
            if use_sequence
            else None
        )
        self.graph = (
            GraphEncoder(self.user_features.out_dim, n_merchants, graph_dim, graph_heads)
            if use_graph
            else None
        )
        self.fund_features = FeatureEncoder(fund_numeric, fund_cardinalities, embedding_dim)
        self.fund_id = nn.Embedding(n_fund_ids, embedding_dim)
        self.head = MultiTaskHead(head, tasks, hidden, n_experts)
        user_dim = (
            self.user_features.out_dim
            + (self.sequence.out_dim if self.sequence is not None else 0)
            + (self.graph.out_dim if self.graph is not None else 0)
        )
        self.user_projection = nn.Linear(user_dim, self.head.in_dim)
        self.fund_projection = nn.Linear(
            self.fund_features.out_dim + embedding_dim, self.head.in_dim, bias=False
        )
        self.output = OutputLayer(sigma_min, sigma_max)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Outputs for the (user, fund) pairs of a batch.

        ``batch`` holds, for the batch's distinct users: ``user_numeric``, ``user_categorical``,
        ``seq_funds``, ``seq_actions``; for graph models the sub-graph they need (the whole graph or a
        sampled neighbourhood, see :meth:`EncodedPlatform.user_batch
        <eoca.predict.features.EncodedPlatform.user_batch>`): ``graph_payer_numeric``,
        ``graph_payer_categorical`` (the payers' features), ``graph_merchants`` (merchant ids),
        ``graph_payer_edges`` (payer row, merchant row) and ``graph_local_edges`` (merchant row, row
        among the batch's users), or instead of the first four ``merchant_h``, merchant embeddings
        computed beforehand (rows addressed by ``graph_local_edges``); for all funds:
        ``fund_numeric``, ``fund_categorical``, ``fund_ids``; and per pair ``pair_user`` (row among the
        batch's users) and ``pair_fund`` (row among funds).

        Returns
        -------
        dict of Tensor
            ``p`` and, depending on the tasks, ``pctr``, ``mu``, ``sigma``; each ``(n_pairs,)``.
        """
        e_u = self.user_features(batch["user_numeric"], batch["user_categorical"])
        parts = [e_u]
        if self.sequence is not None:
            parts.append(self.sequence(batch["seq_funds"], batch["seq_actions"]))
        if self.graph is not None and "merchant_h" in batch:
            parts.append(self.graph.user_layer(batch["merchant_h"], e_u, batch["graph_local_edges"]))
        elif self.graph is not None:
            payer_x = self.user_features(batch["graph_payer_numeric"], batch["graph_payer_categorical"])
            parts.append(
                self.graph(
                    payer_x, batch["graph_merchants"], batch["graph_payer_edges"], e_u, batch["graph_local_edges"]
                )
            )
        z_user = self.user_projection(torch.cat(parts, dim=1))
        e_f = self.fund_features(batch["fund_numeric"], batch["fund_categorical"])
        z_fund = self.fund_projection(torch.cat([e_f, self.fund_id(batch["fund_ids"])], dim=1))
        z = z_user[batch["pair_user"]] + z_fund[batch["pair_fund"]]
        return self.output(self.head(z))

