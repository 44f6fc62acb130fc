"""What the declaration's errors count and show: the offending entries, and only those."""

import numpy as np
import pytest

import eoca
from eoca.testing import etv_grid


def declare(values):
    values = np.asarray(values, dtype=float)
    n, k = values.shape
    return eoca.AllocationProblem(etv_grid(values), {f"f{j + 1}": (0, n) for j in range(k)},
                                  {f"f{j + 1}": 0 for j in range(k)}, {f"u{i + 1}": 0 for i in range(n)})


def test_a_negative_entry_is_counted_and_named_among_zeros():
    with pytest.raises(eoca.ETVError) as info:
        declare([[0.0, 2.0], [-1.5, 0.0], [5.0, 0.0]])
    message = str(info.value)
    assert "1 negative entries" in message and "('u2', 'f1', -1.5)" in message
    assert "0.0)" not in message  # the zeros are valid ETV and are not listed


@pytest.mark.parametrize("bad", [5, 6])
def test_the_first_five_non_finite_entries_are_named_and_more_are_marked(bad):
    values = np.ones((6, 2))
    values.ravel()[:bad] = np.nan
    with pytest.raises(eoca.ETVError, match=f"{bad} NaN or infinite entries") as info:
        declare(values)
    assert str(info.value).count("('u") == 5
    assert str(info.value).endswith("...") == (bad > 5)
