"""The 8-fund delivery of ``delivery_8funds.py`` with the rules an operations team adds on top of it.

- **Eligibility**: a user is never shown a fund they already hold (about 8% of the pairs; a money-market
  fund can always be topped up, so it stays open to everyone), and users who opted out of equity products are never shown ``equity`` or ``sector_qdii``.
- **Quotas**: at least 30% of the new users (about a fifth of the delivery) go to the two money-market
  and short-bond funds that onboard them; at most 2% of the high-value users (top 10% by their best ETV)
  are parked in ``money_market``.
- **Budget**: the commission paid out (a rate per fund times the pair's ETV) stays within 93% of what the
  unconstrained allocation would pay.

Solve it with ``exact`` (certified gap) or ``ip`` (Pyomo + HiGHS, small sizes):

    eoca solve problems/delivery_with_rules.py --param n_users=1000000 --solver exact
"""

import numpy as np
import pandas as pd
import xarray as xr

import eoca
from eoca.scenarios import load_scenario

#: commission rate the platform pays per unit of ETV, by fund type
COMMISSION = {
    "money_market": 0.001, "short_bond": 0.002, "bond": 0.003, "fixed_income_plus": 0.004,
    "balanced": 0.006, "index": 0.004, "equity": 0.008, "sector_qdii": 0.010,
}


def build(n_users: int = 100_000, seed: int = 0) -> eoca.AllocationProblem:
    base = load_scenario(__file__.replace("delivery_with_rules", "delivery_8funds"), n_users=n_users, seed=seed)
    rng = np.random.default_rng(seed + 1)
    users, funds = base.users, list(base.funds)
    etv = base.etv.values
    holds = rng.random(etv.shape) < 0.08
    holds[:, funds.index("money_market")] = False
    opted_out = rng.random(n_users) < 0.05
    eligible = ~holds
    eligible[opted_out[:, None] & np.isin(funds, ["equity", "sector_qdii"])[None, :]] = False
    new = pd.Series(rng.random(n_users) < 0.2, index=users)
    best = etv.max(axis=1)
    high_value = pd.Series(best >= np.quantile(best, 0.9), index=users)
    commission = xr.DataArray(etv * np.array([COMMISSION[f] for f in funds]), dims=("user", "fund"),
                              coords={"user": users, "fund": funds})
    free = eoca.solve(base, solver="exact")  # what the delivery pays without the budget
    paid = float(commission.values[np.arange(n_users), free.codes].sum())
    return eoca.AllocationProblem(
        etv=base.etv,
        demand={f: int(d) for f, d in base.demand_min.to_series().items()},
        risk_level=base.risk_level.to_series().to_dict(),
        risk_tolerance=base.risk_tolerance,
        eligible=xr.DataArray(eligible, dims=("user", "fund"), coords={"user": users, "fund": funds}),
        constraints=[
            eoca.Quota(users=new, funds=["money_market", "short_bond"], at_least=int(0.3 * new.sum()),
                       name="new users onboarded in cash-like funds"),
            eoca.Quota(users=high_value, funds=["money_market"], at_most=int(0.02 * high_value.sum()),
                       name="high value parked in money_market"),
            eoca.Linear(weights=commission, at_most=0.93 * paid, name="commission budget"),
        ],
        name=f"delivery-with-rules-{n_users}",
    )
