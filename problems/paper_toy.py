"""The paper's Figure 2 example: two fund types, three users.

Fund f1 is contracted for two users and f2 for one. The ETV values are illustrative; by hand, the best
allocation gives u3 to f2 (its clear favourite) and u1, u2 to f1: 0.9 + 0.7 + 0.8 = 2.4.
"""

import xarray as xr

import eoca


def build() -> eoca.AllocationProblem:
    etv = xr.DataArray(
        [[0.9, 0.2],
         [0.7, 0.5],
         [0.3, 0.8]],
        dims=("user", "fund"),
        coords={"user": ["u1", "u2", "u3"], "fund": ["f1", "f2"]},
    )
    return eoca.AllocationProblem(
        etv=etv,
        demand={"f1": 2, "f2": 1},
        risk_level={"f1": "R1", "f2": "R3"},
        risk_tolerance={"u1": "R2", "u2": "R3", "u3": "R4"},
        name="paper-figure-2",
    )
