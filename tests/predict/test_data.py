import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from eoca.data import (
    DataValidationError,
    PlatformData,
    cdnow_path,
    load_cdnow,
    load_randhie,
    randhie_path,
    synthetic_platform,
)


def _tables():
    users = pd.DataFrame({"user_id": ["a", "b"], "age": [30, 40]})
    funds = pd.DataFrame({"fund_id": ["bond", "equity"], "risk_level": [1, 4]})
    imps = pd.DataFrame(
        {
            "user_id": ["a", "b"],
            "fund_id": ["bond", "equity"],
            "click": [1, 0],
            "conversion": [1, 0],
            "amount": [50.0, 0.0],
        }
    )
    return users, funds, imps


def test_valid_tables_are_accepted():
    users, funds, imps = _tables()
    data = PlatformData(users, funds, imps)
    assert list(data.user_ids) == ["a", "b"] and data.user_features == ["age"]


@pytest.mark.parametrize(
    "column, value, fragment",
    [
        ("user_id", "zz", "'zz'"),
        ("fund_id", "cash", "'cash'"),
        ("amount", -5.0, "negative"),
        ("click", 2, "'click'"),
    ],
)
def test_bad_impressions_name_field_and_value(column, value, fragment):
    users, funds, imps = _tables()
    imps.loc[1, column] = value
    with pytest.raises(DataValidationError, match=fragment) as info:
        PlatformData(users, funds, imps)
    assert isinstance(info.value, ValueError)
    assert column in str(info.value)


def test_conversion_without_click_and_amount_without_conversion():
    users, funds, imps = _tables()
    bad = imps.copy()
    bad.loc[0, "click"] = 0
    with pytest.raises(DataValidationError, match="without a click"):
        PlatformData(users, funds, bad)
    bad = imps.copy()
    bad.loc[1, "amount"] = 3.0
    with pytest.raises(DataValidationError, match="without a conversion"):
        PlatformData(users, funds, bad)


def test_duplicate_ids_and_missing_columns():
    users, funds, imps = _tables()
    with pytest.raises(DataValidationError, match="duplicate ids \\['a'\\]"):
        PlatformData(pd.concat([users, users.iloc[:1]]), funds, imps)
    with pytest.raises(DataValidationError, match="'amount'"):
        PlatformData(users, funds, imps.drop(columns="amount"))
    pay = pd.DataFrame({"user_id": ["ghost"], "merchant_id": ["m1"]})
    with pytest.raises(DataValidationError, match="payments"):
        PlatformData(users, funds, imps, payments=pay)


def test_time_split_is_ordered_and_keeps_later_behaviour_out():
    data = synthetic_platform(300, 5, seed=1, impressions_per_user=2).data
    train, valid, test = data.split((0.6, 0.2, 0.2))
    assert len(train.impressions) + len(valid.impressions) + len(test.impressions) == len(data.impressions)
    assert train.impressions["time"].max() <= valid.impressions["time"].min()
    assert valid.impressions["time"].max() <= test.impressions["time"].min()
    assert (test.behaviours["time"] < test.impressions["time"].min()).all()


def test_split_without_time_is_a_seeded_partition():
    data = synthetic_platform(200, 4, seed=1, impressions_per_user=2).data
    data = data.with_impressions(data.impressions.drop(columns="time"))
    a = data.split(seed=5)
    b = data.split(seed=5)
    assert a[2].impressions.index.equals(b[2].impressions.index)
    idx = np.concatenate([part.impressions.index for part in a])
    assert sorted(idx) == list(data.impressions.index)
    with pytest.raises(DataValidationError, match="fractions"):
        data.split((0.5, 0.6, 0.1))


def test_synthetic_platform_is_reproducible_and_matches_its_truth():
    a = synthetic_platform(4000, 6, seed=11)
    b = synthetic_platform(4000, 6, seed=11)
    pd.testing.assert_frame_equal(a.data.impressions, b.data.impressions)
    truth = a.true_pctcvr * np.expm1(a.true_mu + a.true_sigma**2 / 2)
    np.testing.assert_allclose(a.true_etv, truth)
    imps = a.data.impressions
    u = a.data.user_ids.get_indexer(imps["user_id"])
    f = a.data.fund_ids.get_indexer(imps["fund_id"])
    p = a.true_pctcvr.to_numpy()[u, f]
    # realised conversions agree with the true pCTCVR (4-sigma binomial band)
    assert abs(imps["conversion"].sum() - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum())
    conv = imps["conversion"].to_numpy() == 1
    v = np.log1p(imps["amount"].to_numpy()[conv])
    mu = a.true_mu.to_numpy()[u, f][conv]
    assert abs((v - mu).mean()) < 0.1
    # heteroscedastic: the spread depends on the user
    assert float(a.true_sigma.std()) > 0.1


def test_capital_is_only_in_the_graph():
    s = synthetic_platform(2000, 4, seed=2)
    assert "capital" not in s.data.users.columns and "balance" not in s.data.users.columns
    pay = s.data.payments
    mean_log_pay = np.log(pay.groupby("user_id")["amount"].mean()).reindex(s.data.user_ids)
    assert np.corrcoef(mean_log_pay, s.capital)[0, 1] > 0.7
    visible = synthetic_platform(200, 4, seed=2, capital_in_graph_only=False)
    assert "balance" in visible.data.users.columns


def test_synthetic_rejects_bad_sizes():
    with pytest.raises(DataValidationError, match="impressions_per_user"):
        synthetic_platform(10, 3, impressions_per_user=4)
    with pytest.raises(DataValidationError, match="base_ctr"):
        synthetic_platform(10, 3, impressions_per_user=2, base_ctr=1.5)


def test_cdnow_is_read_from_the_wheel_without_importing_lifetimes():
    raw = pd.read_csv(cdnow_path(), sep=r"\s+")
    assert len(raw) == 69659
    data = load_cdnow()
    assert len(data.users) == 23570 and list(data.fund_ids) == ["cdnow"]
    imps = data.impressions
    assert 0.2 < imps["conversion"].mean() < 0.4
    hold = raw.iloc[:, 1].astype(str) > "19970930"
    assert imps["amount"].sum() == pytest.approx(raw.iloc[:, 3][hold].sum(), rel=1e-6)
    code = "import sys; from eoca.data import load_cdnow; load_cdnow(n_users=50); print('lifetimes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_randhie_is_read_from_the_wheel_and_labels_the_last_year_from_the_earlier_ones():
    raw = pd.read_csv(randhie_path())
    assert len(raw) == 20190
    data = load_randhie()
    assert len(data.users) == raw["zper"].nunique() == 5912 and list(data.fund_ids) == ["health"]
    # the label is each person's spending in their last year, the history that of the years before
    raw["user_id"] = raw["zper"].astype("int64").astype(str)
    last = raw.loc[raw.groupby("user_id")["year"].idxmax()].set_index("user_id")
    imps = data.impressions.set_index("user_id")
    np.testing.assert_allclose(imps["amount"], last["meddol"].reindex(imps.index).round(2), atol=0.006)
    assert 0.7 < imps["conversion"].mean() < 0.85  # zero-inflated: about a fifth spend nothing
    users = data.users.set_index("user_id")
    before = raw[raw["year"] < raw.groupby("user_id")["year"].transform("max")].groupby("user_id")["meddol"]
    np.testing.assert_allclose(users.loc[before.mean().index, "prior_mean_spend"], before.mean().round(2), atol=0.006)
    assert (users.loc[~users.index.isin(before.mean().index), "n_prior_years"] == 0).all()
    assert not users.isna().any().any() and "meddol" not in users.columns
    code = "import sys; from eoca.data import load_randhie; load_randhie(n_users=50); print('statsmodels' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
