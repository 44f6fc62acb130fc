"""The prediction paths that exist for speed give what the plain ones give."""

import numpy as np
import pandas as pd
import pytest
import torch

from eoca.predict.features import _by_user_then_time, _index_in
from eoca.predict.models import MultiTaskHead, SequenceEncoder


def test_sequences_grouped_by_length_embed_as_one_padded_batch():
    torch.manual_seed(0)
    encoder = SequenceEncoder(n_funds=9, n_actions=4, dim=8, heads=2).eval()
    n, width = 1500, 20
    lengths = torch.randint(0, 8, (n,))
    lengths[:3] = torch.tensor([20, 0, 13])  # one full history, one empty, one long: widths differ a lot
    funds = torch.randint(1, 9, (n, width)) * (torch.arange(width) < lengths[:, None])
    actions = torch.randint(1, 4, (n, width)) * (funds != 0)
    with torch.inference_mode():
        plain = encoder(funds, actions)
        grouped = encoder.forward_by_length(funds, actions, min_rows=100)
    torch.testing.assert_close(grouped, plain, rtol=1e-5, atol=1e-6)
    # rows are put back in their order: permuting the input permutes the output the same way
    perm = torch.randperm(n)
    with torch.inference_mode():
        torch.testing.assert_close(encoder.forward_by_length(funds[perm], actions[perm], 100), plain[perm],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["mmoe", "shared_bottom", "mlp"])
def test_the_grid_scorer_equals_forward_grid_on_full_and_partial_blocks(kind):
    torch.manual_seed(1)
    head = MultiTaskHead(kind, ("ctr", "cvr", "mu", "sigma"), hidden=16, n_experts=3).eval()
    z_fund = torch.randn(5, head.in_dim)
    score = head.grid_scorer(z_fund, max_users=32)
    for b in (32, 7):  # a full block, then a last, shorter one that reuses the same buffers
        z_user = torch.randn(b, head.in_dim)
        with torch.inference_mode():
            fast, plain = score(z_user), head.forward_grid(z_user, z_fund)
        assert fast.keys() == plain.keys()
        for name in plain:
            assert fast[name].shape == (b, 5)
            torch.testing.assert_close(fast[name], plain[name], rtol=1e-5, atol=1e-6)


def test_integer_ids_are_found_by_table_as_by_hash():
    rng = np.random.default_rng(0)
    choices = rng.permutation(np.arange(1000, 3000))[:1500]  # unique, with gaps in their range
    values = rng.integers(-5, 3200, 10_000)  # many absent, some negative, some past the largest
    expected = pd.Index(choices).get_indexer(values)
    np.testing.assert_array_equal(_index_in(values, choices), expected)
    np.testing.assert_array_equal(_index_in(pd.Series(values), pd.Series(choices)), expected)
    sparse = np.array([1, 10**12])  # a range far wider than the ids: the hash lookup
    np.testing.assert_array_equal(_index_in(np.array([10**12, 5, 1]), sparse), [1, -1, 0])


@pytest.mark.parametrize("time_kind", ["float", "datetime"])
def test_behaviours_are_ordered_by_user_then_time_as_lexsort_orders_them(time_kind):
    rng = np.random.default_rng(2)
    user = rng.integers(0, 50, 5000)
    time = rng.integers(0, 30, 5000).astype(float)  # many ties: table order must decide them
    time[rng.random(5000) < 0.01] = np.nan
    if time_kind == "datetime":
        time = pd.to_datetime(np.nan_to_num(time, nan=0), unit="D").to_numpy()
    np.testing.assert_array_equal(_by_user_then_time(user, time), np.lexsort((time, user)))
