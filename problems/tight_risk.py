"""A delivery whose risk levels are exactly tight: the users who tolerate each level just cover the demand
of the funds at that level and above. The paper's Algorithm 1 as printed places users above their risk
tolerance here (run with ``--solver heuristic --option risk_safe=False``); the risk-safe heuristic and the
exact solver do not.
"""

import eoca
from eoca.instances import synthetic_problem


def build(n_users: int = 20_000, seed: int = 0) -> eoca.AllocationProblem:
    return synthetic_problem(n_users, 8, family="tight", seed=seed)
