"""Turn :class:`~eoca.data.PlatformData` tables into tensors, with vocabularies learned at fit time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from eoca.data import PlatformData
from eoca.predict.sampling import csr_by, expand_rows, sample_edges

__all__ = ["FeatureSchema", "EncodedPlatform"]


def _is_categorical(series: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def _vocab(values: pd.Series) -> list[str]:
    return sorted(pd.Series(values).dropna().astype(str).unique().tolist())


def _index_in(values: pd.Series | np.ndarray, choices: pd.Series | np.ndarray | list) -> np.ndarray:
    """Position of each value among ``choices`` (unique), -1 where absent: a hash lookup in Arrow.

    Falls back to pandas where Arrow cannot type the values (mixed objects) or the two sides differ.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    dense = _index_in_dense_ints(values, choices)
    if dense is not None:
        return dense
    try:
        found = pc.index_in(pa.array(values, from_pandas=True), value_set=pa.array(choices, from_pandas=True))
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    except (pa.ArrowException, TypeError, ValueError):
        return pd.Index(choices).get_indexer(values).astype(np.int64)


def _index_in_each(columns: list, choices: pd.Series | np.ndarray) -> list[np.ndarray]:
    """:func:`_index_in` of each of ``columns`` against the same ``choices``, building Arrow's lookup table of
    the choices once for all of them (it costs as much as looking up a few million values)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(columns) > 1 and not _plain_ints(choices):
        try:
            arrays = [pa.array(c, from_pandas=True) for c in columns]
            if all(a.type == arrays[0].type for a in arrays):
                found = pc.index_in(pa.chunked_array(arrays), value_set=pa.array(choices, from_pandas=True))
                found = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
                return np.split(found, np.cumsum([len(c) for c in columns])[:-1])
        except (pa.ArrowException, TypeError, ValueError):
            pass
    return [_index_in(c, choices) for c in columns]


def _plain_ints(x) -> bool:
    """numpy integers only: no conversion of strings or nullable columns."""
    return isinstance(getattr(x, "dtype", None), np.dtype) and x.dtype.kind in "iu"


def _index_in_dense_ints(values: pd.Series | np.ndarray, choices: pd.Series | np.ndarray | list) -> np.ndarray | None:
    """:func:`_index_in` by a table over the range of integer ``choices`` when that range is at most a few
    times their number (user ids numbered from some base, as platforms usually have them); ``None`` otherwise.
    """
    if not (_plain_ints(values) and _plain_ints(choices)) or not len(choices):
        return None
    v, c = np.asarray(values), np.asarray(choices)
    low, high = int(c.min()), int(c.max())
    if high - low > 4 * len(c) + 1024:
        return None
    table = np.full(high - low + 1, -1, dtype=np.int64)
    table[c - low] = np.arange(len(c))
    found = np.full(len(v), -1, dtype=np.int64)
    inside = (v >= low) & (v <= high)
    found[inside] = table[v[inside] - low]
    return found


def _lookup(values: pd.Series, vocab: list[str]) -> np.ndarray:
    """Indices into ``vocab`` shifted by one; 0 for unknown or missing values."""
    values = pd.Series(values)
    if isinstance(values.dtype, pd.CategoricalDtype):  # look up the few categories, then take by code
        codes = values.cat.codes.to_numpy()
        per_category = _index_in(values.cat.categories.astype(str).to_numpy(dtype=object), vocab)
        return (np.where(codes >= 0, per_category[codes], -1) + 1).astype(np.int64)
    if not pd.api.types.is_string_dtype(values.dtype) or values.dtype == object:
        values = values.astype(str).where(values.notna(), None)
    return (_index_in(values, vocab) + 1).astype(np.int64)


def _by_user_then_time(user: np.ndarray, time: np.ndarray) -> np.ndarray:
    """``np.lexsort((time, user))`` (by user, then time, ties in table order) by one sort of a combined key.

    The rank of each row in a stable sort by time makes every key distinct, so an unstable sort of
    ``user * n + rank`` gives the same order in about half the time of a two-key merge sort.
    """
    n = len(user)
    if n < 2 or _ordered(user, time):  # tables are often written in that order: no sort
        return np.arange(n)
    by_time = np.argsort(time, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[by_time] = np.arange(n)
    return np.argsort(user.astype(np.int64) * n + rank)


def _ordered(user: np.ndarray, time: np.ndarray | None = None) -> bool:
    """Whether the rows are sorted by ``user`` (then by ``time`` within a user), ties in any order. Times
    that do not compare (missing, or of mixed kinds) count as not sorted: the caller sorts."""
    step = np.diff(user)
    if time is None:
        return bool((step >= 0).all())
    try:
        later = np.asarray(time[1:] >= time[:-1], dtype=bool)  # any comparable times (tz-aware, objects)
    except TypeError:
        return False
    return bool(((step > 0) | ((step == 0) & later)).all())


@dataclass
class FeatureSchema:
    """Column roles, scalings and vocabularies learned from training data (plain Python values)."""

    user_numeric: list[str] = field(default_factory=list)
    user_categorical: list[str] = field(default_factory=list)
    fund_numeric: list[str] = field(default_factory=list)
    fund_categorical: list[str] = field(default_factory=list)
    scaling: dict[str, list[float]] = field(default_factory=dict)
    vocabularies: dict[str, list[str]] = field(default_factory=dict)
    seq_len: int = 20

    @classmethod
    def learn(cls, data: PlatformData, seq_len: int) -> FeatureSchema:
        """Learn roles (numeric / categorical), standardisation and vocabularies from ``data``."""
        s = cls(seq_len=seq_len)
        for side, table, features in (
            ("user", data.users, data.user_features),
            ("fund", data.funds, data.fund_features),
        ):
            for col in features:
                if _is_categorical(table[col]):
                    getattr(s, f"{side}_categorical").append(col)
                    s.vocabularies[f"{side}:{col}"] = _vocab(table[col])
                else:
                    getattr(s, f"{side}_numeric").append(col)
                    x = table[col].astype(float)
                    s.scaling[f"{side}:{col}"] = [float(x.mean()), float(x.std(ddof=0) or 1.0)]
        s.vocabularies["fund_id"] = _vocab(data.funds["fund_id"])
        beh = data.behaviours
        s.vocabularies["action"] = _vocab(beh["action"]) if beh is not None else []
        pay = data.payments
        s.vocabularies["merchant"] = _vocab(pay["merchant_id"]) if pay is not None else []
        return s

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form, safe for ``torch.load(weights_only=True)``."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSchema:
        return cls(**d)

    def size(self, name: str) -> int:
        """Vocabulary size including the reserved index 0."""
        return len(self.vocabularies.get(name, [])) + 1

    def cardinalities(self, side: str) -> list[int]:
        return [self.size(f"{side}:{c}") for c in getattr(self, f"{side}_categorical")]

    def _table(self, side: str, table: pd.DataFrame) -> tuple[Tensor, Tensor]:
        num_cols = getattr(self, f"{side}_numeric")
        cat_cols = getattr(self, f"{side}_categorical")
        num = np.zeros((len(table), len(num_cols)), dtype=np.float32)
        for i, col in enumerate(num_cols):
            mean, std = self.scaling[f"{side}:{col}"]
            x = (table[col].astype(float).to_numpy() - mean) / std
            num[:, i] = np.nan_to_num(x, nan=0.0)
        cat = np.zeros((len(table), len(cat_cols)), dtype=np.int64)
        for i, col in enumerate(cat_cols):
            cat[:, i] = _lookup(table[col], self.vocabularies[f"{side}:{col}"])
        return torch.from_numpy(num), torch.from_numpy(cat)

    def encode(self, data: PlatformData, *, impressions: bool = True) -> EncodedPlatform:
        """Tensors for every user and fund of ``data``, its behaviour sequences and graph, and (unless
        ``impressions=False``, as prediction needs none) its impressions."""
        from eoca.data.errors import DataValidationError

        missing = [c for c in self.user_numeric + self.user_categorical if c not in data.users.columns]
        missing += [c for c in self.fund_numeric + self.fund_categorical if c not in data.funds.columns]
        if missing:
            raise DataValidationError(
                f"The data lack feature column(s) {missing} that the predictor was fitted with."
            )
        user_num, user_cat = self._table("user", data.users)
        fund_num, fund_cat = self._table("fund", data.funds)
        fund_ids = torch.from_numpy(_lookup(data.funds["fund_id"], self.vocabularies["fund_id"]))
        n = len(data.users)
        user_ids = data.users["user_id"]

        seq_f = np.zeros((n, self.seq_len), dtype=np.int64)
        seq_a = np.zeros((n, self.seq_len), dtype=np.int64)
        beh, pay = data.behaviours, data.payments
        imps = data.impressions if impressions else data.impressions.iloc[:0]
        use_beh = beh is not None and len(beh) and self.seq_len > 0
        use_pay = pay is not None and len(pay)
        used = (("beh", beh, use_beh), ("pay", pay, use_pay), ("imp", imps, impressions))
        tables = {name: t for name, t, use in used if use}
        rows_of = dict(zip(tables, _index_in_each([t["user_id"] for t in tables.values()], user_ids)))
        rows_of.setdefault("imp", np.zeros(0, dtype=np.int64))
        if use_beh:
            # by user, then by time (ties keep table order); rank 0 = the user's most recent behaviour
            user_of = rows_of["beh"]
            order = _by_user_then_time(user_of, beh["time"].to_numpy())
            rows = user_of[order]
            count = np.bincount(rows, minlength=n)
            first = np.cumsum(count) - count
            rank = count[rows] - 1 - (np.arange(len(rows)) - first[rows])
            keep = rank < self.seq_len
            kept = np.minimum(count, self.seq_len)
            cols = kept[rows[keep]] - 1 - rank[keep]
            taken = order[keep]
            seq_f[rows[keep], cols] = _lookup(beh["fund_id"], self.vocabularies["fund_id"])[taken]
            seq_a[rows[keep], cols] = _lookup(beh["action"], self.vocabularies["action"])[taken]
            seq_a[seq_f == 0] = 0  # a behaviour on an unknown fund is dropped
        edge_user = np.zeros(0, dtype=np.int64)
        edge_merchant = np.zeros(0, dtype=np.int64)
        if use_pay:
            eu = rows_of["pay"]
            em = _lookup(pay["merchant_id"], self.vocabularies["merchant"])
            if _ordered(eu):
                edge_user, edge_merchant = eu, em
            else:
                order = np.argsort(eu, kind="stable")
                edge_user, edge_merchant = eu[order], em[order]
        rowptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(edge_user, minlength=n), out=rowptr[1:])

        return EncodedPlatform(
            user_numeric=user_num,
            user_categorical=user_cat,
            seq_funds=torch.from_numpy(seq_f),
            seq_actions=torch.from_numpy(seq_a),
            fund_numeric=fund_num,
            fund_categorical=fund_cat,
            fund_ids=fund_ids,
            edge_user=torch.from_numpy(edge_user),
            edge_merchant=torch.from_numpy(edge_merchant),
            rowptr=torch.from_numpy(rowptr),
            imp_user=torch.from_numpy(rows_of["imp"]),
            imp_fund=torch.from_numpy(_index_in(imps["fund_id"], data.funds["fund_id"])),
            click=torch.from_numpy(imps["click"].to_numpy(dtype=np.float32)),
            conversion=torch.from_numpy(imps["conversion"].to_numpy(dtype=np.float32)),
            amount=torch.from_numpy(imps["amount"].to_numpy(dtype=np.float32)),
            n_merchants=self.size("merchant"),
        )


@dataclass
class EncodedPlatform:
    """Tensors of one :class:`PlatformData`: users and funds in table order, edges sorted by user.

    ``rowptr`` is the CSR index of the payments by user (``edge_merchant[rowptr[u]:rowptr[u + 1]]``
    are the merchants user ``u`` paid); :meth:`payers` builds the index by merchant on first use.
    """

    user_numeric: Tensor
    user_categorical: Tensor
    seq_funds: Tensor
    seq_actions: Tensor
    fund_numeric: Tensor
    fund_categorical: Tensor
    fund_ids: Tensor
    edge_user: Tensor
    edge_merchant: Tensor
    rowptr: Tensor
    imp_user: Tensor
    imp_fund: Tensor
    click: Tensor
    conversion: Tensor
    amount: Tensor
    n_merchants: int = 0
    _payers: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False)

    @property
    def n_users(self) -> int:
        return len(self.user_numeric)

    def payers(self) -> tuple[Tensor, Tensor]:
        """CSR index of the payments by merchant: ``(merchant_rowptr, payer_user)`` (built once, cached).

        The payers of merchant ``m`` are ``payer_user[merchant_rowptr[m]:merchant_rowptr[m + 1]]``, in
        user order.
        """
        if self._payers is None:
            n_rows = max(self.n_merchants, int(self.edge_merchant.max()) + 1 if len(self.edge_merchant) else 0)
            rowptr, order = csr_by(self.edge_merchant, n_rows)
            self._payers = (rowptr, self.edge_user[order])
        return self._payers

    def local_edges(self, users: Tensor) -> Tensor:
        """(merchant, position in ``users``) edges of the given users, from the CSR layout."""
        row, position = expand_rows(self.rowptr, users)
        return torch.stack([self.edge_merchant[position], row])

    def user_batch(
        self,
        users: Tensor,
        *,
        graph: bool,
        fanout: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
        merchant_h: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Inputs for the user side of ``ETVNetwork.forward`` (users given by row).

        Graph models get the sub-graph the users need: with ``fanout=None`` every user as a payer and
        every payment (the full graph); with ``fanout=(f0, f1)`` at most ``f0`` payments per user and at
        most ``f1`` payers per merchant so reached, drawn with ``generator``. Given ``merchant_h``
        (every merchant's embedding, computed beforehand) they get it and all their payments instead.
        """
        batch = {
            "user_numeric": self.user_numeric[users],
            "user_categorical": self.user_categorical[users],
            "seq_funds": self.seq_funds[users],
            "seq_actions": self.seq_actions[users],
            "fund_numeric": self.fund_numeric,
            "fund_categorical": self.fund_categorical,
            "fund_ids": self.fund_ids,
        }
        if graph and merchant_h is not None:
            batch["merchant_h"] = merchant_h
            batch["graph_local_edges"] = self.local_edges(users)
        elif graph and fanout is None:
            batch["graph_payer_numeric"] = self.user_numeric
            batch["graph_payer_categorical"] = self.user_categorical
            batch["graph_merchants"] = torch.arange(self.n_merchants)
            batch["graph_payer_edges"] = torch.stack([self.edge_user, self.edge_merchant])
            batch["graph_local_edges"] = self.local_edges(users)
        elif graph:
            row, position = sample_edges(self.rowptr, users, fanout[0], generator)
            merchants, merchant_row = torch.unique(self.edge_merchant[position], return_inverse=True)
            merchant_rowptr, payer_user = self.payers()
            m_row, m_position = sample_edges(merchant_rowptr, merchants, fanout[1], generator)
            payers, payer_row = torch.unique(payer_user[m_position], return_inverse=True)
            batch["graph_payer_numeric"] = self.user_numeric[payers]
            batch["graph_payer_categorical"] = self.user_categorical[payers]
            batch["graph_merchants"] = merchants
            batch["graph_payer_edges"] = torch.stack([payer_row, m_row])
            batch["graph_local_edges"] = torch.stack([merchant_row, row])
        return batch

    def impression_batch(
        self,
        rows: Tensor,
        *,
        graph: bool,
        fanout: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
        merchant_h: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Inputs and labels for the impressions at ``rows`` (the graph as in :meth:`user_batch`)."""
        users, pair_user = torch.unique(self.imp_user[rows], return_inverse=True)
        batch = self.user_batch(users, graph=graph, fanout=fanout, generator=generator, merchant_h=merchant_h)
        batch["pair_user"] = pair_user
        batch["pair_fund"] = self.imp_fund[rows]
        labels = {"click": self.click[rows], "conversion": self.conversion[rows], "amount": self.amount[rows]}
        return batch, labels
