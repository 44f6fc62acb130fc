"""The platform data contract: users, funds, impressions, behaviours and payments.

A :class:`PlatformData` is pure data. It is validated once when it is built and never changed
afterwards; :meth:`PlatformData.split` returns new objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from eoca.data.errors import DataValidationError

__all__ = ["PlatformData", "IMPRESSION_COLUMNS", "BEHAVIOUR_COLUMNS", "PAYMENT_COLUMNS"]

IMPRESSION_COLUMNS = ("user_id", "fund_id", "click", "conversion", "amount")
BEHAVIOUR_COLUMNS = ("user_id", "fund_id", "action", "time")
PAYMENT_COLUMNS = ("user_id", "merchant_id")
_MAX_SHOWN = 5


def _show(values: Sequence[object] | np.ndarray | pd.Index | pd.Series) -> str:
    values = list(pd.unique(pd.Series(list(values))))
    head = ", ".join(repr(v.item() if hasattr(v, "item") else v) for v in values[:_MAX_SHOWN])
    more = f" and {len(values) - _MAX_SHOWN} more" if len(values) > _MAX_SHOWN else ""
    return f"[{head}{more}]"


def _require_frame(name: str, table: object) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise DataValidationError(f"{name!r} must be a pandas DataFrame. Got {type(table).__name__} instead.")
    return table


def _require_columns(name: str, table: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataValidationError(
            f"Table {name!r} lacks required column(s) {missing}. Expected at least {list(columns)}; "
            f"got {list(table.columns)}."
        )


def _require_unique(name: str, table: pd.DataFrame, column: str) -> None:
    if table[column].isna().any():
        raise DataValidationError(f"Table {name!r} column {column!r} has missing ids.")
    dup = table[column][table[column].duplicated()]
    if len(dup):
        raise DataValidationError(f"Table {name!r} column {column!r} has duplicate ids {_show(dup)}.")


def _require_known(name: str, table: pd.DataFrame, column: str, known: pd.Index, source: str) -> None:
    # ``known`` is unique (checked first): a hash lookup, far faster than ``isin`` on string columns
    unknown = table[column][known.get_indexer(table[column]) < 0]
    if len(unknown):
        raise DataValidationError(
            f"Table {name!r} column {column!r} has {unknown.nunique()} id(s) not in {source!r}: {_show(unknown)}."
        )


def _require_binary(name: str, table: pd.DataFrame, column: str) -> None:
    values = table[column]
    bad = values[~values.isin([0, 1, True, False])]
    if len(bad):
        raise DataValidationError(f"Table {name!r} column {column!r} must hold 0/1. Got {_show(bad)}.")


def _require_number(name: str, table: pd.DataFrame, column: str, *, nonnegative: bool) -> None:
    values = pd.to_numeric(table[column], errors="coerce")
    bad = table[column][values.isna() | ~np.isfinite(values.fillna(0).to_numpy(dtype=float))]
    if len(bad):
        raise DataValidationError(
            f"Table {name!r} column {column!r} must be finite numbers. Got {_show(bad)}."
        )
    if nonnegative and (values < 0).any():
        raise DataValidationError(
            f"Table {name!r} column {column!r} must be >= 0. Got negative values {_show(values[values < 0])}."
        )


@dataclass(frozen=True, eq=False)
class PlatformData:
    """Tables describing a fund-distribution platform, checked against eoca's data contract.

    Parameters
    ----------
    users : pandas.DataFrame
        One row per user: ``user_id`` (unique) and feature columns, numeric or categorical
        (``object``/``category``/``bool`` columns are treated as categorical). An optional
        ``risk_tolerance`` column is kept as a feature and for allocation.
    funds : pandas.DataFrame
        One row per fund (type): ``fund_id`` (unique) and feature columns, e.g. risk level,
        1-year return, fund type.
    impressions : pandas.DataFrame
        One row per delivery of a fund to a user: ``user_id, fund_id, click, conversion, amount``
        and an optional ``time``. ``click`` and ``conversion`` are 0/1, ``amount`` is the purchase
        amount, >= 0, and 0 when there is no conversion. A conversion requires a click.
    behaviours : pandas.DataFrame, optional
        The users' action history: ``user_id, fund_id, action, time``; ``action`` is a label such as
        ``"click"``, ``"purchase"``, ``"sell"`` or ``"favourite"``.
    payments : pandas.DataFrame, optional
        The consumption graph: ``user_id, merchant_id`` and optionally ``amount`` (>= 0). A user may
        appear many times; users without payments simply have no edges.

    Raises
    ------
    DataValidationError
        When a table is not a DataFrame, lacks a required column, has duplicate or unknown ids,
        labels that are not 0/1, negative or non-finite amounts, a conversion without a click, or an
        amount without a conversion. The message names the table, column and offending values.
    """

    users: pd.DataFrame
    funds: pd.DataFrame
    impressions: pd.DataFrame
    behaviours: pd.DataFrame | None = None
    payments: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        users = _require_frame("users", self.users)
        funds = _require_frame("funds", self.funds)
        imps = _require_frame("impressions", self.impressions)
        _require_columns("users", users, ["user_id"])
        _require_columns("funds", funds, ["fund_id"])
        _require_unique("users", users, "user_id")
        _require_unique("funds", funds, "fund_id")
        user_ids = pd.Index(users["user_id"])
        fund_ids = pd.Index(funds["fund_id"])

        _require_columns("impressions", imps, IMPRESSION_COLUMNS)
        _require_known("impressions", imps, "user_id", user_ids, "users")
        _require_known("impressions", imps, "fund_id", fund_ids, "funds")
        _require_binary("impressions", imps, "click")
        _require_binary("impressions", imps, "conversion")
        _require_number("impressions", imps, "amount", nonnegative=True)
        click = imps["click"].astype(int).to_numpy()
        conv = imps["conversion"].astype(int).to_numpy()
        amount = imps["amount"].astype(float).to_numpy()
        bad = (conv == 1) & (click == 0)
        if bad.any():
            raise DataValidationError(
                f"Table 'impressions' has {int(bad.sum())} conversion(s) without a click (conversion=1, "
                f"click=0), e.g. at rows {_show(imps.index[bad])}."
            )
        bad = (amount > 0) & (conv == 0)
        if bad.any():
            raise DataValidationError(
                f"Table 'impressions' column 'amount' is > 0 on {int(bad.sum())} row(s) without a conversion, "
                f"e.g. at rows {_show(imps.index[bad])}."
            )
        if "time" in imps.columns and imps["time"].isna().any():
            raise DataValidationError("Table 'impressions' column 'time' has missing values.")

        if self.behaviours is not None:
            beh = _require_frame("behaviours", self.behaviours)
            _require_columns("behaviours", beh, BEHAVIOUR_COLUMNS)
            _require_known("behaviours", beh, "user_id", user_ids, "users")
            _require_known("behaviours", beh, "fund_id", fund_ids, "funds")
            if beh["action"].isna().any():
                raise DataValidationError("Table 'behaviours' column 'action' has missing values.")
        if self.payments is not None:
            pay = _require_frame("payments", self.payments)
            _require_columns("payments", pay, PAYMENT_COLUMNS)
            _require_known("payments", pay, "user_id", user_ids, "users")
            if pay["merchant_id"].isna().any():
                raise DataValidationError("Table 'payments' column 'merchant_id' has missing ids.")
            if "amount" in pay.columns:
                _require_number("payments", pay, "amount", nonnegative=True)

    # ------------------------------------------------------------------ views
    @property
    def user_ids(self) -> pd.Index:
        """The user ids, in table order."""
        return pd.Index(self.users["user_id"], name="user")

    @property
    def fund_ids(self) -> pd.Index:
        """The fund ids, in table order."""
        return pd.Index(self.funds["fund_id"], name="fund")

    @property
    def user_features(self) -> list[str]:
        """Names of the user feature columns (every column but ``user_id``)."""
        return [c for c in self.users.columns if c != "user_id"]

    @property
    def fund_features(self) -> list[str]:
        """Names of the fund feature columns (every column but ``fund_id``)."""
        return [c for c in self.funds.columns if c != "fund_id"]

    def with_impressions(self, impressions: pd.DataFrame) -> PlatformData:
        """Return a copy that holds other impressions (validated) and the same other tables."""
        return PlatformData(self.users, self.funds, impressions, self.behaviours, self.payments)

    # ------------------------------------------------------------------ splits
    def split(
        self,
        fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        *,
        seed: int = 0,
    ) -> tuple[PlatformData, PlatformData, PlatformData]:
        """Split the impressions into train, validation and test parts.

        With an impressions ``time`` column the split is by time: the earliest ``fractions[0]`` of
        impressions train, the next ``fractions[1]`` validate and the latest ``fractions[2]`` test
        (ties at a boundary stay together). Behaviours are then cut so that each part only sees
        behaviours strictly before its own first impression, which keeps later actions (for example
        the purchases an impression caused) out of the features. Without ``time`` the impressions
        are shuffled with ``seed`` and behaviours are kept whole.

        Parameters
        ----------
        fractions : tuple of three floats
            Shares of train, validation and test; non-negative, summing to 1.
        seed : int
            Seed of the shuffle when impressions have no time.

        Returns
        -------
        train, validation, test : PlatformData
            Same users, funds and payments; impressions (and behaviours) restricted as above.
        """
        fr = np.asarray(fractions, dtype=float)
        if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
            raise DataValidationError(
                f"The 'fractions' parameter of split must be three non-negative shares summing to 1. "
                f"Got {fractions!r} instead."
            )
        imps = self.impressions
        n = len(imps)
        cuts = np.round(np.cumsum(fr)[:2] * n).astype(int)
        if "time" in imps.columns:
            order = np.argsort(imps["time"].to_numpy(), kind="stable")
            times = imps["time"].to_numpy()[order]
            # move each cut to the end of a run of equal times so a timestamp is never split
            if n:
                moved = np.searchsorted(times, times[np.minimum(cuts, n - 1)], side="left")
                cuts = np.where(cuts >= n, n, moved)
        else:
            order = np.random.default_rng(seed).permutation(n)
        parts_idx = np.split(order, cuts)
        parts = []
        for idx in parts_idx:
            part_imps = imps.iloc[np.sort(idx)]
            beh = self.behaviours
            if beh is not None and "time" in imps.columns and len(part_imps):
                beh = beh[beh["time"] < part_imps["time"].min()]
            parts.append(PlatformData(self.users, self.funds, part_imps, beh, self.payments))
        return parts[0], parts[1], parts[2]

    def __repr__(self) -> str:
        extra = []
        if self.behaviours is not None:
            extra.append(f"behaviours={len(self.behaviours)}")
        if self.payments is not None:
            extra.append(f"payments={len(self.payments)}")
        tail = (", " + ", ".join(extra)) if extra else ""
        return (
            f"PlatformData(users={len(self.users)}, funds={len(self.funds)}, "
            f"impressions={len(self.impressions)}{tail})"
        )
