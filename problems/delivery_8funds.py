"""An 8-fund delivery with risk levels R1-R5, sized by ``n_users`` (default 100,000).

Demands come from the platform's contracts; here they are drawn from users' preferences so the scenario
is feasible. Try ``--param family='"fighting"'`` for demands that fight preferences.
"""

import eoca
from eoca.instances import synthetic_problem


def build(n_users: int = 100_000, family: str = "matching", seed: int = 0) -> eoca.AllocationProblem:
    return synthetic_problem(n_users, 8, family=family, seed=seed)
