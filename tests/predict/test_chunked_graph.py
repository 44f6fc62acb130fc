"""The users → merchants attention layer decomposes over pieces of the users (for chunked scoring)."""

import numpy as np
import pytest
import torch
from fast_settings import FAST

from eoca.data import PlatformData
from eoca.predict import ETVPredictor
from eoca.predict.inference import (
    finish_merchants,
    merchant_partials,
    merge_merchant_partials,
)


@pytest.fixture(scope="module")
def fitted(tiny):
    platform, _ = tiny
    # 3 heads and a trained (not freshly initialised) network, so the heads and logits differ
    predictor = ETVPredictor("esdpm", graph_heads=3, **FAST).fit(platform.data)
    return predictor, predictor.schema_.encode(platform.data)


def test_chunked_merchant_embeddings_equal_the_merchant_layer(fitted):
    predictor, data = fitted
    network = predictor.network_.eval()
    with torch.no_grad():
        all_x = network.user_features(data.user_numeric, data.user_categorical)
        expected = network.graph.merchant_layer(
            all_x, torch.arange(data.n_merchants), torch.stack([data.edge_user, data.edge_merchant])
        )
    # uneven chunks, in shuffled order, merged both flat and as a tree
    rows = torch.randperm(data.n_users, generator=torch.Generator().manual_seed(0))
    pieces = [merchant_partials(network, data, rows[s : s + 37]) for s in range(0, data.n_users, 37)]
    assert pieces[0].numerator.shape == (len(expected), 3, predictor.graph_dim)
    flat = finish_merchants(network, merge_merchant_partials(*pieces))
    level = pieces
    while len(level) > 1:
        level = [merge_merchant_partials(*level[i : i + 2]) for i in range(0, len(level), 2)]
    tree = finish_merchants(network, level[0])
    whole = finish_merchants(network, merchant_partials(network, data))
    for got in (flat, tree, whole):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_a_piece_without_payments_and_an_unpaid_merchant_change_nothing(fitted):
    predictor, data = fitted
    network = predictor.network_
    expected = finish_merchants(network, merchant_partials(network, data))
    nobody = merchant_partials(network, data, torch.zeros(0, dtype=torch.long))
    assert torch.isinf(nobody.max).all() and not nobody.denominator.any()
    merged = finish_merchants(network, merge_merchant_partials(nobody, merchant_partials(network, data)))
    np.testing.assert_allclose(merged.numpy(), expected.numpy(), rtol=1e-6)
    # merchant row 0 (unknown merchants) has no payer here: bias and ELU only, as GATConv gives
    assert not (data.edge_merchant == 0).any()
    np.testing.assert_allclose(
        expected[0].numpy(), torch.nn.functional.elu(network.graph.merchant_layer.conv.bias).detach().numpy()
    )


def _users(data: PlatformData, keep: np.ndarray) -> PlatformData:
    """The tables of ``data`` that concern the users ``keep`` (every fund kept), as a chunk task gets."""

    def rows(table):
        return None if table is None else table[table["user_id"].isin(keep)].reset_index(drop=True)

    return PlatformData(
        users=rows(data.users),
        funds=data.funds,
        impressions=rows(data.impressions),
        behaviours=rows(data.behaviours),
        payments=rows(data.payments),
    )


def test_pieces_encoded_apart_predict_the_whole_platform_grid(fitted, tiny):
    """Each piece is encoded on its own: merchant rows come from the fitted vocabulary, users renumber."""
    predictor, _ = fitted
    platform, _ = tiny
    data = platform.data
    ids = data.users["user_id"].to_numpy()
    pieces = [_users(data, ids[s : s + 150]) for s in range(0, len(ids), 150)]
    merchant_h = predictor._merchant_embeddings(*(predictor._merchant_partials(p) for p in pieces))
    expected = predictor.predict(data)
    got = np.concatenate([predictor._predict(p, merchant_h).values for p in pieces])
    np.testing.assert_allclose(got, expected.values, rtol=1e-5)
    # without the global merchants a piece sees only its own payers: the grid differs
    alone = predictor.predict(pieces[0]).values
    assert not np.allclose(alone, expected.values[:150], rtol=1e-5)
    assert ETVPredictor("esdpm-ncg", **FAST).fit(data)._merchant_partials(pieces[0]) is None
