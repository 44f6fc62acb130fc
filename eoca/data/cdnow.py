"""Real zero-inflated spend data: the CDNOW purchases shipped in the ``lifetimes`` wheel.

The file ``lifetimes/datasets/CDNOW_master.txt`` (69,659 purchases by 23,570 customers who first
bought in early 1997, with dollar amounts) is read straight from the installed distribution; the
``lifetimes`` package itself is never imported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from eoca.data._wheel import wheel_file
from eoca.data.errors import DataValidationError
from eoca.data.platform import PlatformData

__all__ = ["cdnow_path", "load_cdnow", "CDNOW_FUND"]

CDNOW_FUND = "cdnow"
_DATA_FILE = "lifetimes/datasets/CDNOW_master.txt"


def cdnow_path() -> Path:
    """Locate ``CDNOW_master.txt`` inside the installed ``lifetimes`` distribution.

    Raises
    ------
    ModuleNotFoundError
        When ``lifetimes`` is not installed, with the install hint.
    """
    return wheel_file("lifetimes", _DATA_FILE, "CDNOW")


def load_cdnow(
    calibration_end: str = "1997-09-30",
    observation_end: str = "1998-06-30",
    *,
    n_users: int | None = None,
    seed: int = 0,
) -> PlatformData:
    """Turn the CDNOW purchase log into a one-fund platform.

    Every customer is a user shown the single "fund" ``"cdnow"`` once, at the end of the
    calibration period. The label is what the customer spent in the holdout period
    (``calibration_end`` < date <= ``observation_end``): ``conversion = click = 1`` when that spend is
    positive and ``amount`` is the spend. User features describe the calibration period only:
    number of purchases, repeat purchases, recency and age in days, total and mean spend, CDs bought,
    first-purchase spend. Calibration purchases are also given as ``"purchase"`` behaviours (with
    their day as ``time``) so sequence models see them. All impressions happen at the same moment,
    so they carry no ``time`` and :meth:`PlatformData.split` splits the customers at random.

    Parameters
    ----------
    calibration_end, observation_end : str
        ISO dates closing the feature and label periods.
    n_users : int, optional
        Keep a random subset of this many customers (seeded), for quick runs.
    seed : int
        Seed of that subset.

    Returns
    -------
    PlatformData
        ``users`` (23,570 rows in full), one fund, one impression per user, purchase behaviours, no
        payments.
    """
    cal_end = pd.Timestamp(calibration_end)
    obs_end = pd.Timestamp(observation_end)
    if not cal_end < obs_end:
        raise DataValidationError(
            f"'calibration_end' ({calibration_end}) must be before 'observation_end' ({observation_end})."
        )
    raw = pd.read_csv(
        cdnow_path(),
        sep=r"\s+",
        header=0,
        names=["customer_id", "date", "n_cds", "amount"],
        dtype={"customer_id": str, "date": str, "n_cds": int, "amount": float},
    )
    raw["date"] = pd.to_datetime(raw["date"], format="%Y%m%d")
    if n_users is not None:
        ids = raw["customer_id"].unique()
        keep = np.random.default_rng(seed).choice(ids, size=min(n_users, len(ids)), replace=False)
        raw = raw[raw["customer_id"].isin(keep)]
    origin = raw["date"].min()
    raw["day"] = (raw["date"] - origin).dt.days
    cal = raw[raw["date"] <= cal_end]
    hold = raw[(raw["date"] > cal_end) & (raw["date"] <= obs_end)]
    if cal.empty:
        raise DataValidationError(f"No CDNOW purchase falls on or before calibration_end={calibration_end}.")
    cal_day_end = (cal_end - origin).days

    per_day = cal.groupby(["customer_id", "day"], as_index=False).agg(
        amount=("amount", "sum"), n_cds=("n_cds", "sum")
    )
    g = per_day.groupby("customer_id")
    first_day = g["day"].min()
    first_spend = per_day.sort_values("day").groupby("customer_id")["amount"].first()
    users = pd.DataFrame(
        {
            "n_purchases": g.size(),
            "frequency": g.size() - 1,
            "recency_days": g["day"].max() - first_day,
            "age_days": cal_day_end - first_day,
            "total_spend": g["amount"].sum().round(2),
            "mean_spend": g["amount"].mean().round(2),
            "n_cds": g["n_cds"].sum(),
            "first_spend": first_spend.round(2),
        }
    )
    users.index.name = "user_id"
    users = users.reset_index()
    spend = hold.groupby("customer_id")["amount"].sum().reindex(users["user_id"]).fillna(0.0).to_numpy()
    converted = (spend > 0).astype(int)
    impressions = pd.DataFrame(
        {
            "user_id": users["user_id"].to_numpy(),
            "fund_id": CDNOW_FUND,
            "click": converted,
            "conversion": converted,
            "amount": spend.round(2),
        }
    )
    funds = pd.DataFrame({"fund_id": [CDNOW_FUND], "fund_type": pd.Categorical(["music"])})
    behaviours = pd.DataFrame(
        {
            "user_id": per_day["customer_id"].to_numpy(),
            "fund_id": CDNOW_FUND,
            "action": "purchase",
            "time": per_day["day"].to_numpy(),
        }
    )
    return PlatformData(users, funds, impressions, behaviours, None)
