"""Buy-till-you-die models on the served features, on the real CDNOW sample: carrying a learned
horizon to a longer one (``training.carry``), and the classical model served in place of a
learnt one that loses to it (``training.classical``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.btyd import Rfm
from training.carry import RFM_FEATURES, CarriedTiming, CarriedValue, Carry
from training.classical import ClassicalClv, classical_model, fit_classical, is_classical
from training.config import Paths
from training.features.snapshots import build_snapshots
from training.models import ClvModel, CountModel, PurchaseTimingModel
from training.structural import CORRECTION_READS, customer_summary, rfm_of

from .test_cdnow import cdnow_file

CUTOFF = pd.Timestamp("1997-09-30", tz="UTC")


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    sample = pd.read_csv(cdnow_file("CDNOW_sample.txt"), sep=r"\s+", header=None,
                         names=["customer_id", "index", "date", "cds", "amount"])
    return pd.DataFrame({
        "customer_id": sample["customer_id"].astype(str),
        "timestamp": pd.to_datetime(sample["date"].astype(str), format="%Y%m%d", utc=True),
        "amount": sample["amount"].astype(float),
    })


@pytest.fixture(scope="module")
def carry(log: pd.DataFrame) -> Carry:
    return Carry.fitted(log, CUTOFF)


def rfm_features(frequency, recency, T) -> np.ndarray:
    """The three served features of a customer with this (x, t_x, T)."""
    frequency, recency, T = (np.asarray(v, dtype=float) for v in (frequency, recency, T))
    return np.c_[frequency + 1, T, T - recency]


def test_served_features_give_the_fitted_models_own_ratio(log: pd.DataFrame, carry: Carry) -> None:
    summary = customer_summary(log, CUTOFF)
    rfm = Rfm(*(summary[c].to_numpy(float) for c in ("frequency", "recency", "T")))
    ratio = carry.count_ratio(rfm_features(summary["frequency"], summary["recency"], summary["T"]), 90, 365)
    expected = carry.fit.expected(rfm, 365) / carry.fit.expected(rfm, 90)
    np.testing.assert_allclose(ratio, np.maximum(expected, 1.0), rtol=1e-9)
    # expected purchases accumulate at a falling rate: more than the learned 90 days, less than linear
    assert (ratio >= 1.0).all() and (ratio <= 365 / 90 + 1e-9).all()


def test_a_more_recent_purchase_never_raises_carried_churn(carry: Carry) -> None:
    since_last = np.array([1.0, 30.0, 90.0, 180.0, 250.0])
    rfm = np.c_[np.full(5, 4.0), np.full(5, 260.0), since_last]
    p_none_90 = np.full(5, 0.6)
    survival = carry.survival_ratio(rfm, 90, 365, p_none_90)
    assert ((survival >= 0) & (survival <= 1)).all()
    assert np.all(np.diff(survival) >= -1e-12)  # later last purchase: likelier to stay silent
    counts = carry.count_ratio(rfm, 90, 365)
    assert np.all(np.diff(counts) <= 1e-12)


def test_customers_who_never_bought_are_carried_at_a_constant_rate(carry: Carry) -> None:
    never = np.array([[0.0, np.nan, np.nan], [np.nan, np.nan, np.nan]])
    np.testing.assert_allclose(carry.count_ratio(never, 90, 360), 4.0)
    np.testing.assert_allclose(carry.survival_ratio(never, 90, 360, np.array([0.9, 0.5])), [0.9**3, 0.5**3])


def _features(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    days = rng.integers(1, 8, n).astype(float)
    age = rng.uniform(30, 260, n)
    return pd.DataFrame({
        "customer_id": [f"C{i}" for i in range(n)],
        "purchase_days_total": days,
        "days_since_first_purchase": age,
        "days_since_last_purchase": age * rng.uniform(0, 1, n),
        "revenue_90d": rng.gamma(2.0, 30.0, n) * (days > 1),
        "purchase_days_90d": np.minimum(days, rng.integers(0, 3, n)).astype(float),
        "gap_mean_days": np.where(days > 1, age / np.maximum(days - 1, 1), np.nan),
        "gap_std_days": np.where(days > 2, rng.uniform(0, 30, n), np.nan),
        "region": rng.choice(["north", "south"], n),
    })


def test_carried_models_keep_the_learned_horizons_and_extend_the_rest(carry: Carry) -> None:
    features = _features(600, 1)
    rng = np.random.default_rng(2)
    since_last = features["days_since_last_purchase"].to_numpy()
    sets = {}
    for h in (7, 30, 90):
        y = (rng.random(len(features)) < np.exp(-since_last / 120) * h / 90).astype(float)
        sets[h] = (features, y, features, y)
    timing = PurchaseTimingModel(horizons=(7, 30, 90), churn_horizon=90, max_rounds=30).fit(sets)
    carried = CarriedTiming.wrap(timing, carry, horizons=(7, 30, 90, 180, 365), churn_horizon=180)
    curve = carried.purchase_curve(features)
    np.testing.assert_allclose(curve[["p_purchase_7d", "p_purchase_30d", "p_purchase_90d"]], timing.purchase_curve(features))
    assert (np.diff(curve.to_numpy(), axis=1) >= 0).all()
    out = carried.predict(features)
    np.testing.assert_allclose(out["p_churn"], 1 - curve["p_purchase_180d"])
    assert out["next_purchase_days"].max() > 90  # read off the carried part of the curve

    # The CLV model reads no lifetime aggregates: the carried encoder adds them after its columns.
    revenue = rng.gamma(1.0, 50.0, len(features)) * (rng.random(len(features)) < 0.5)
    clv = ClvModel(horizon=90, max_rounds=30).fit(features, revenue, features, revenue)
    assert "purchase_days_total" not in clv.encoder_.columns_
    value = CarriedValue.wrap(clv, carry, horizon=365)
    assert set(RFM_FEATURES) <= set(value.encoder_.columns_)
    ratio = carry.count_ratio(features[list(RFM_FEATURES)].to_numpy(float), 90, 365)
    learned, served = clv.predict(features), value.predict(features)
    for column in ("expected_revenue", "expected_revenue_p10", "expected_revenue_p90"):
        np.testing.assert_allclose(served[column], learned[column] * ratio)
    x, contributions = value.explain(features.head(5))
    own = clv.contributions(clv.encoder_.matrix(features.head(5)))
    assert contributions.shape == (5, len(x.columns) + 1)
    for k, column in enumerate(x.columns):  # each contribution stays with its feature's name
        expected = own[:, clv.encoder_.columns_.index(column)] if column in clv.encoder_.columns_ else 0.0
        np.testing.assert_allclose(contributions[:, k], expected)
    np.testing.assert_allclose(contributions[:, -1], own[:, -1])


def test_the_classical_model_serves_buyers_and_the_learnt_one_the_others(log: pd.DataFrame) -> None:
    fitted = fit_classical(log, CUTOFF, "pareto_nbd", 90, corrected=False)
    features = _features(400, 3)
    features.loc[:49, ["purchase_days_total", "days_since_first_purchase", "days_since_last_purchase"]] = [0, np.nan, np.nan]
    features["revenue_total"] = features["purchase_days_total"] * 40.0
    rng = np.random.default_rng(4)
    revenue = rng.gamma(1.0, 50.0, len(features)) * (rng.random(len(features)) < 0.5)
    learnt = ClvModel(horizon=90, max_rounds=30).fit(features, revenue, features, revenue)
    served = classical_model("clv", learnt, fitted, horizon=365)
    assert isinstance(served, ClassicalClv) and is_classical(served) and not is_classical(learnt)
    out, own = served.predict(features), learnt.predict(features)
    never = features.index < 50
    np.testing.assert_allclose(out.loc[never, "expected_revenue"], own.loc[never, "expected_revenue"])
    days = features.loc[~never, "purchase_days_total"].to_numpy()
    customers = Rfm(days - 1, (features["days_since_first_purchase"] - features["days_since_last_purchase"])[~never].to_numpy(),
                    features.loc[~never, "days_since_first_purchase"].to_numpy())
    spend = 40.0 if fitted.spend is None else fitted.spend.expected_spend(days - 1, np.full(len(days), 40.0))
    np.testing.assert_allclose(out.loc[~never, "expected_revenue"], fitted.carry.fit.expected(customers, 365) * spend)
    assert (out["expected_revenue_p10"] <= out["expected_revenue"]).all()
    assert (out["expected_revenue"] <= out["expected_revenue_p90"]).all()

    sets = {h: (features, (rng.random(len(features)) < h / 120).astype(float), features,
                (rng.random(len(features)) < h / 120).astype(float)) for h in (30, 90)}
    timing = PurchaseTimingModel(horizons=(30, 90), churn_horizon=90, max_rounds=30).fit(sets)
    classical_timing = classical_model("purchase_timing", timing, fitted, horizons=(30, 90), churn_horizon=90)
    churn = classical_timing.predict(features)["p_churn"].to_numpy()
    np.testing.assert_allclose(churn[~never], fitted.carry.fit.p_no_purchase(customers, 90), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(churn[never], timing.predict(features)["p_churn"].to_numpy()[never])


def _served_at(log: pd.DataFrame, cutoff: pd.Timestamp, tmp_path) -> pd.DataFrame:
    """The served features of the log's customers at ``cutoff``, from the feature SQL."""
    paths = Paths(tmp_path)
    paths.raw.mkdir(parents=True)
    log.to_parquet(paths.raw_table("transactions"), index=False)
    build_snapshots(paths, [cutoff])
    served = pd.read_parquet(paths.features / "customer_transactions.parquet")
    for name, column in (("days_since_first_purchase", "first_purchase_at"), ("days_since_last_purchase", "last_purchase_at")):
        served[name] = (cutoff - pd.to_datetime(served[column], utc=True)).dt.total_seconds() / 86_400
    return served


def test_the_corrected_classical_model_reads_what_its_correction_learned_from(log: pd.DataFrame, tmp_path) -> None:
    """The correction is learned on features computed from the log (``customer_summary``) and
    served on the feature SQL's: both must hold the same numbers, and the served model must
    apply the correction's factor to the classical rate."""
    summary = customer_summary(log, CUTOFF).set_index("customer_id")
    served = _served_at(log, CUTOFF, tmp_path).set_index("customer_id").loc[summary.index]
    # Customers whose orders were all free are first purchases for nothing to the log's summary
    # and non-buyers to the features; the classical model serves buyers only.
    buyers = served["purchase_days_total"].to_numpy() >= 1
    assert 0.9 < buyers.mean() < 1
    summary, served = summary[buyers], served[buyers]
    for column in CORRECTION_READS:
        np.testing.assert_allclose(served[column].to_numpy(float), summary[column].to_numpy(float), rtol=1e-9, err_msg=column)

    fitted = fit_classical(log, CUTOFF, "pareto_nbd", 180)
    assert fitted.correction.level != 1.0 or fitted.correction.booster is not None, "the sample supports no correction"
    assert fitted.label.startswith("Pareto/NBD + ")
    features = served.reset_index()
    y = np.random.default_rng(5).poisson(1.0, len(features)).astype(float)
    counts = classical_model("expected_purchases", CountModel(horizon=90, max_rounds=20).fit(features, y, features, y), fitted, horizon=180)
    factor = fitted.correction.factor(summary.reset_index(), fitted.carry.fit)
    np.testing.assert_allclose(counts.predict(features)["expected_purchases"],
                               fitted.carry.fit.expected(rfm_of(summary), 180) * factor, rtol=1e-6)
    plain = fit_classical(log, CUTOFF, "pareto_nbd", 180, corrected=False)
    assert plain.label == "Pareto/NBD" and plain.correction.booster is None


@pytest.mark.parametrize("corrected_mae, ranking_mae, served", [(0.90, 0.99, "corrected"), (1.05, 0.99, "ranking"), (1.05, 1.01, "plain")])
def test_the_served_classical_model_keeps_its_correction_only_if_it_holds_on_the_test_window(
    log: pd.DataFrame, corrected_mae: float, ranking_mae: float, served: str
) -> None:
    """A learnt model that loses to Pareto/NBD gets Pareto/NBD served, corrected on an inner
    window if the corrected fit holds against plain Pareto/NBD on the same test window, with its
    ranking correction alone if only that holds, plain if neither (and the summary says why)."""
    from training import trainers
    from training.windows import Windows

    features = _features(300, 6)
    y = np.random.default_rng(6).poisson(1.0, len(features)).astype(float)
    learnt = CountModel(horizon=90, max_rounds=20).fit(features, y, features, y)
    window = Windows(90, (CUTOFF - pd.Timedelta(days=120),), CUTOFF - pd.Timedelta(days=60), CUTOFF)
    data = trainers.ModelingData(features, None, CUTOFF - pd.Timedelta(days=270), CUTOFF, log, None)

    def evaluate(candidate_at) -> trainers.Evaluation:
        candidate = candidate_at(window.test)
        correction = None if candidate is learnt else candidate.correction
        if correction is None:
            mae = 1.20
        elif correction.level != 1:
            mae = corrected_mae
        else:
            mae = ranking_mae if correction.booster else 0.95
        rows = [("model", mae), ("pareto_nbd", 1.00), ("btyd", 1.10)]
        return trainers.Evaluation(pd.DataFrame(
            [{"indicator": "expected_purchases", "method": m, "metric": "mae", "value": v} for m, v in rows]
        ))

    trained = trainers._with_classical_fallback(
        data, trainers.Gate.of("expected_purchases", window, features), learnt, learnt, evaluate, lambda _: 0.0,
        {"horizon": 90}, {"horizon": 180},
    )
    fallback = trained.fallback
    assert fallback is not None and fallback.baseline == "pareto_nbd"
    model = fallback.build()
    assert is_classical(model) and model.horizon == 180
    if served == "corrected":
        assert fallback.label == "Pareto/NBD (corrected on an inner window)" and fallback.value == 0.90
        assert fallback.correction_note is None and model.baseline.startswith("Pareto/NBD + level x")
        assert fallback.description.endswith("so they flatter it slightly")  # kept on the window it is shown on
    elif served == "ranking":
        assert fallback.label == "Pareto/NBD (ranking corrected on an inner window)" and fallback.value == 0.99
        assert fallback.correction_note.endswith("are dropped: corrected on an inner window (mae 1.0500)")
        assert model.baseline == "Pareto/NBD + LightGBM correction" and model.correction.level == 1.0
    else:
        assert fallback.label == "Pareto/NBD" and fallback.value == 0.95 and "flatter" not in fallback.description
        assert "do not hold against plain Pareto/NBD on the test window (mae 1.0000) are dropped" in fallback.correction_note
        assert fallback.correction_note.endswith("(mae 1.0500); ranking corrected on an inner window (mae 1.0100)")
        assert model.baseline == "Pareto/NBD" and model.correction.booster is None
