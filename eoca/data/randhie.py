"""Real zero-inflated spend data: the RAND Health Insurance Experiment, shipped in the ``statsmodels`` wheel.

The file ``statsmodels/datasets/randhie/src/randhie.csv`` holds 20,190 person-years of 5,912 people
(1974-1982, public domain) with each year's medical spending in dollars (``meddol``: 22% zeros, median
35, largest 39,182), the insurance plan and health and household measures. It is read straight from the
installed distribution; ``statsmodels`` itself is never imported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from eoca.data._wheel import wheel_file
from eoca.data.platform import PlatformData

__all__ = ["randhie_path", "load_randhie", "RANDHIE_FUND"]

RANDHIE_FUND = "health"
_DATA_FILE = "statsmodels/datasets/randhie/src/randhie.csv"
#: Columns describing the person, the household and the plan (none of them is a year's spending).
_FEATURES = ["plan", "site", "coins", "idp", "lpi", "fmde", "xage", "female", "black", "educdec", "linc", "lnum",
             "child", "mhi", "disea", "physlm", "ghindx"]


def randhie_path() -> Path:
    """Locate ``randhie.csv`` inside the installed ``statsmodels`` distribution.

    Raises
    ------
    ModuleNotFoundError
        When ``statsmodels`` is not installed, with the install hint.
    """
    return wheel_file("statsmodels", _DATA_FILE, "RAND HIE")


def load_randhie(*, n_users: int | None = None, seed: int = 0) -> PlatformData:
    """Turn the RAND HIE person-years into a one-fund platform: predict a person's medical spending in
    their last year of the experiment from what was known before it.

    Every person is a user shown the single "fund" ``"health"`` once, in their last observed year. The
    label is that year's spending (``conversion = click = 1`` when it is positive, ``amount`` the dollars).
    User features: the plan (``plan``, ``site``, coinsurance, deductible, incentive payment), the person
    and household (age, sex, education, log income and family size, children), health measures, and the
    spending history of the earlier years (their number, mean and last spending, share of years with
    any). A person observed for one year only has no history (zeros, ``n_prior_years = 0``). Missing
    measures (``ghindx``, ``educdec`` for a few) are filled with the median and flagged. The impressions
    carry no ``time``, so :meth:`PlatformData.split` splits the people at random.

    Parameters
    ----------
    n_users : int, optional
        Keep a random subset of this many people (seeded), for quick runs.
    seed : int
        Seed of that subset.

    Returns
    -------
    PlatformData
        ``users`` (5,912 rows in full), one fund, one impression per user, no behaviours or payments.
    """
    raw = pd.read_csv(randhie_path())
    raw["zper"] = raw["zper"].astype(np.int64).astype(str)
    if n_users is not None:
        ids = raw["zper"].unique()
        keep = np.random.default_rng(seed).choice(ids, size=min(n_users, len(ids)), replace=False)
        raw = raw[raw["zper"].isin(keep)]
    raw = raw.sort_values(["zper", "year"])
    last_year = raw.groupby("zper")["year"].transform("max")
    label = raw[raw["year"] == last_year].set_index("zper")
    prior = raw[raw["year"] < last_year].groupby("zper")["meddol"]
    users = label[_FEATURES].copy()
    users["ghindx_missing"] = users["ghindx"].isna().astype(int)
    users = users.fillna(users.median(numeric_only=True))
    users["n_prior_years"] = prior.size().reindex(users.index).fillna(0).astype(int)
    users["prior_mean_spend"] = prior.mean().reindex(users.index).fillna(0.0).round(2)
    users["prior_last_spend"] = prior.last().reindex(users.index).fillna(0.0).round(2)
    users["prior_share_with_spend"] = prior.apply(lambda s: float((s > 0).mean())).reindex(users.index).fillna(0.0)
    users.index.name = "user_id"
    users = users.reset_index()
    spend = label["meddol"].reindex(users["user_id"]).to_numpy().round(2)
    converted = (spend > 0).astype(int)
    impressions = pd.DataFrame({"user_id": users["user_id"].to_numpy(), "fund_id": RANDHIE_FUND,
                                "click": converted, "conversion": converted, "amount": spend})
    funds = pd.DataFrame({"fund_id": [RANDHIE_FUND], "fund_type": pd.Categorical(["medical"])})
    return PlatformData(users=users, funds=funds, impressions=impressions)
