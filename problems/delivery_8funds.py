"""An 8-fund delivery with risk levels R1-R5, sized by ``n_users`` (default 100,000).

Declared the way an operations team would: the fund types with their risk levels and the share of the
delivery each contract buys, the users' risk tolerances from the suitability questionnaire, and an ETV
grid (here a synthetic one shaped like a model's output; in production, ``ETVPredictor.predict``).

    eoca solve problems/delivery_8funds.py --param n_users=1000000 --solver exact
"""

import numpy as np
import pandas as pd

import eoca
from eoca.instances import synthetic_grid

#: fund type -> (risk level, share of the delivery contracted)
FUNDS = {
    "money_market": ("R1", 0.14),
    "short_bond": ("R1", 0.10),
    "bond": ("R2", 0.16),
    "fixed_income_plus": ("R2", 0.12),
    "balanced": ("R3", 0.14),
    "index": ("R3", 0.14),
    "equity": ("R4", 0.12),
    "sector_qdii": ("R5", 0.08),
}
#: share of users at each risk tolerance
TOLERANCE = {"R1": 0.15, "R2": 0.30, "R3": 0.30, "R4": 0.15, "R5": 0.10}


def build(n_users: int = 100_000, seed: int = 0) -> eoca.AllocationProblem:
    rng = np.random.default_rng(seed)
    etv = synthetic_grid(n_users, len(FUNDS), seed=seed).assign_coords(fund=list(FUNDS))
    counts = np.floor(np.array(list(TOLERANCE.values())) * n_users).astype(int)
    counts[-1] += n_users - counts.sum()
    tolerance = rng.permutation(np.repeat(list(TOLERANCE), counts))
    demand = {fund: int(share * n_users) for fund, (_, share) in FUNDS.items()}
    demand["money_market"] += n_users - sum(demand.values())
    return eoca.AllocationProblem(
        etv=etv,
        demand=demand,
        risk_level={fund: risk for fund, (risk, _) in FUNDS.items()},
        risk_tolerance=pd.Series(tolerance, index=etv["user"].values),
        name=f"delivery-8funds-{n_users}",
    )
