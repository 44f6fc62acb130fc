"""The prediction paths that exist for speed give what the plain ones give."""

from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import torch
from fast_settings import FAST

from eoca.predict import ETVPredictor
from eoca.predict._sequence_kernel import sequence_scorer
from eoca.predict.features import _by_user_then_time, _index_in, _index_in_each
from eoca.predict.inference import _map_chunks, grid_etv, grid_outputs
from eoca.predict.models import MultiTaskHead, SequenceEncoder


@pytest.fixture(scope="module")
def fitted(tiny):
    """ESDPM (behaviours and graph) fitted on the tiny platform, and its test split."""
    _, (train, valid, test) = tiny
    return ETVPredictor("esdpm", **FAST).fit(train, validation=valid), test


@contextmanager
def torch_threads(count: int):
    """PyTorch at ``count`` threads inside, the count it had afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


@pytest.mark.parametrize("dim, heads", [(8, 2), (12, 3), (16, 1)])
def test_the_compiled_sequence_attention_embeds_as_the_encoder_does(dim, heads):
    torch.manual_seed(dim)
    encoder = SequenceEncoder(n_funds=9, n_actions=5, dim=dim, heads=heads).eval()
    for p in encoder.parameters():  # away from the initial values (zero start token, unit norm)
        torch.nn.init.normal_(p, std=0.5)
    n, width = 2000, 20
    lengths = torch.randint(0, 8, (n,))
    lengths[:3] = torch.tensor([20, 0, 13])
    funds = torch.randint(1, 9, (n, width)) * (torch.arange(width) < lengths[:, None])
    funds[5:50, 1] = 0  # a behaviour on an unknown fund inside the history: masked, as padding is
    actions = torch.randint(0, 5, (n, width)) * (funds != 0)  # action 0: an unknown action on a known fund
    embed = sequence_scorer(encoder)
    with torch.inference_mode():
        torch.testing.assert_close(embed(funds, actions), encoder(funds, actions), rtol=1e-5, atol=2e-6)
        assert embed(funds[:0], actions[:0]).shape == (0, dim)
    assert sequence_scorer(encoder.train()) == encoder.forward_by_length  # training: PyTorch's own


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


def test_several_columns_are_looked_up_as_each_alone():
    users = pd.Series([f"u{i:03d}" for i in range(300)], dtype="string")
    rng = np.random.default_rng(4)
    columns = [pd.Series(rng.choice(users.to_numpy(), 500)).astype("string"), pd.Series(["u001", "nobody", None]),
               pd.Series(users.to_numpy()[::-1], dtype=object)]
    for found, column in zip(_index_in_each(columns, users), columns, strict=True):
        np.testing.assert_array_equal(found, pd.Index(users).get_indexer(column))
    ints = [np.array([5, 7, 99]), np.array([6])]  # integer ids take the table, one column at a time
    assert [list(f) for f in _index_in_each(ints, np.arange(5, 10))] == [[0, 2, -1], [1]]
    mixed = [pd.Series([1, "b"], dtype=object), pd.Series(["b"])]  # Arrow cannot type it: pandas decides
    assert [list(f) for f in _index_in_each(mixed, pd.Series(["b", 1], dtype=object))] == [[1, 0], [0]]


def test_tables_in_any_row_order_encode_as_sorted_ones(fitted):
    predictor, test = fitted
    rng = np.random.default_rng(5)

    def shuffled(table):
        return table.iloc[rng.permutation(len(table))].reset_index(drop=True)

    other = type(test)(test.users, test.funds, test.impressions, shuffled(test.behaviours), shuffled(test.payments))
    a, b = predictor.schema_.encode(test), predictor.schema_.encode(other)
    for name in ("seq_funds", "seq_actions", "rowptr", "edge_user"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # each user's merchants, in any order
    for u in range(a.n_users):
        lo, hi = int(a.rowptr[u]), int(a.rowptr[u + 1])
        assert sorted(a.edge_merchant[lo:hi].tolist()) == sorted(b.edge_merchant[lo:hi].tolist())
    alone = predictor.schema_.encode(test, impressions=False)  # what prediction encodes
    assert len(alone.imp_user) == len(alone.amount) == 0
    assert torch.equal(alone.seq_funds, a.seq_funds) and torch.equal(alone.edge_merchant, a.edge_merchant)


def test_chunks_scored_on_several_threads_equal_one_thread_and_the_thread_count_is_kept(fitted):
    predictor, test = fitted
    encoded = predictor.schema_.encode(test, impressions=False)
    with torch_threads(1):
        one = grid_outputs(predictor.network_, encoded, chunk_users=37)
    with torch_threads(2):
        two = grid_outputs(predictor.network_, encoded, chunk_users=37)
        assert torch.get_num_threads() == 2
        etv = grid_etv(predictor.network_, encoded, lambda out: out["p"].astype(np.float64), chunk_users=29)
        assert torch.get_num_threads() == 2
    assert one.keys() == two.keys()
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(etv, one["p"], rtol=1e-5, atol=1e-7)


def test_an_error_in_one_chunk_reaches_the_caller_and_the_thread_count_is_restored():
    seen = []

    def work(start, stop):
        if start == 40:
            raise ValueError("chunk 40")
        seen.append(start)

    with torch_threads(2):
        with pytest.raises(ValueError, match="chunk 40"):
            list(_map_chunks(100, 10, work))
        assert torch.get_num_threads() == 2
        seen.clear()
        results = list(_map_chunks(95, 10, lambda a, b: seen.append((a, b)) or a))
    assert sorted(seen) == [(a, min(a + 10, 95)) for a in range(0, 95, 10)]
    assert results == list(range(0, 95, 10))  # in chunk order, whichever thread ran them


def test_predictions_running_at_once_leave_each_threads_count_as_it_was(fitted):
    """Dask runs several chunk tasks on the threads of one worker, each a prediction handing its chunks to
    one-thread workers; PyTorch's count is partly per thread, so each caller must get back its own,
    also one that set it just before its first operation, while the others' predictions already run."""
    import threading
    import time

    predictor, test = fitted
    encoded = predictor.schema_.encode(test, impressions=False)
    with torch_threads(2):
        alone = grid_outputs(predictor.network_, encoded, chunk_users=11)
        results, counts = [None] * 4, [None] * 4
        start = threading.Barrier(4)

        def run(i):
            torch.set_num_threads(2)
            start.wait()
            time.sleep(0.003 * i)  # each starts while the ones before it run
            results[i] = grid_outputs(predictor.network_, encoded, chunk_users=11 + i)
            counts[i] = torch.get_num_threads()  # this thread's own, after the others' ended or not

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert counts == [2, 2, 2, 2]
        assert torch.get_num_threads() == 2
    for out in results:
        np.testing.assert_allclose(out["p"], alone["p"], rtol=1e-5, atol=1e-7)


def test_behaviour_times_of_any_comparable_kind_encode_as_sorted(fitted):
    predictor, test = fitted
    beh = test.behaviours
    zoned = beh.assign(time=pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(beh["time"], unit="D"))
    shuffled = zoned.iloc[np.random.default_rng(6).permutation(len(zoned))].reset_index(drop=True)
    plain = predictor.schema_.encode(test)
    for table in (zoned, shuffled):  # in order (no sort), then not (sorted)
        other = type(test)(test.users, test.funds, test.impressions, table, test.payments)
        assert torch.equal(predictor.schema_.encode(other).seq_funds, plain.seq_funds)
        assert predictor.predict(other).shape == (len(test.users), len(test.funds))
