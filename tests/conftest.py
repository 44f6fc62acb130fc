import numpy as np
import pytest
import xarray as xr

import eoca


def grid(values, users=None, funds=None) -> xr.DataArray:
    values = np.asarray(values, dtype=float)
    users = users or [f"u{i + 1}" for i in range(values.shape[0])]
    funds = funds or [f"f{j + 1}" for j in range(values.shape[1])]
    return xr.DataArray(values, dims=("user", "fund"), coords={"user": users, "fund": funds})


@pytest.fixture
def toy() -> eoca.AllocationProblem:
    """The paper's Figure 2 shape: f1 takes two users, f2 one; u1 may not take the riskier f2."""
    return eoca.AllocationProblem(
        etv=grid([[0.9, 0.2], [0.7, 0.5], [0.3, 0.8]]),
        demand={"f1": 2, "f2": 1},
        risk_level={"f1": "R1", "f2": "R3"},
        risk_tolerance={"u1": "R2", "u2": "R3", "u3": "R4"},
    )
