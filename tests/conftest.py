import pytest

import eoca
from eoca.testing import etv_grid as grid


@pytest.fixture
def toy() -> eoca.AllocationProblem:
    """The paper's Figure 2 shape: f1 takes two users, f2 one; u1 may not take the riskier f2."""
    return eoca.AllocationProblem(
        etv=grid([[0.9, 0.2], [0.7, 0.5], [0.3, 0.8]]),
        demand={"f1": 2, "f2": 1},
        risk_level={"f1": "R1", "f2": "R3"},
        risk_tolerance={"u1": "R2", "u2": "R3", "u3": "R4"},
    )
