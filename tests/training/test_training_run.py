"""End to end: every model trained, compared with baselines, tracked, registered and gated."""

from __future__ import annotations

import json
import multiprocessing

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import TRAINED_CUSTOMERS
from training import evaluation, tracking
from training.catalogue import MODEL_NAMES
from training.dataset import features_at
from training.features import store as feature_store
from training.models import ClvModel, CountModel, PurchaseTimingModel

MODELS = MODEL_NAMES


def _latest_features(config, result, n: int = 300) -> pd.DataFrame:
    store = feature_store.feature_store(config)
    profile = pd.read_parquet(config.paths.features / "customer_profile.parquet")
    rows = pd.DataFrame({"customer_id": profile["customer_id"].head(n), "cutoff": result.data_window[1]})
    return features_at(store, rows)


def test_every_model_is_compared_with_baselines_and_the_oracle(trained) -> None:
    _, result = trained
    indicators = {r.indicator for r in result.reports}
    assert {"churn", "expected_purchases", "expected_revenue", "lookalike_top_value", "lookalike_sustainable"} <= indicators
    for report in result.reports:
        assert np.isfinite(report.model_value), report.indicator
        assert report.baselines, report.indicator
        if not report.indicator.startswith("lookalike"):
            assert {"btyd", "rfm"} <= set(report.baselines)
            assert report.oracle is not None and np.isfinite(report.oracle)
    churn = next(r for r in result.reports if r.indicator == "churn")
    assert 0.6 < churn.model_value <= churn.oracle + 0.02  # learns, and never beats the truth by much


def test_mlflow_holds_runs_trials_artifacts_and_champions(trained) -> None:
    config, _ = trained
    client = tracking.setup_tracking(config)
    for name in MODELS:
        version = client.get_model_version_by_alias(name, tracking.CHAMPION)
        challenger = client.get_model_version_by_alias(name, tracking.CHALLENGER)
        if version.tags.get("model_kind") == "baseline":  # the learnt lookalike lost to the baseline served instead
            assert name.startswith("lookalike") and "loses to baseline" in challenger.tags["loses_to_baseline"]
        else:
            assert challenger.version == version.version
        run = client.get_run(version.run_id)
        if not name.startswith("lookalike"):  # lookalikes are nested in one parent run
            assert run.data.params["customers_modelled"] == str(TRAINED_CUSTOMERS), name
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"backtest_metrics.csv", "model_card.md", "promotion_decision.json"} <= artifacts, name
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots/shap")}
        assert any("beeswarm" in p for p in plots) and any("dependence" in p for p in plots), name
    experiment = client.get_experiment_by_name("purchase_timing")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(trials) >= 2
    assert experiment.artifact_location.startswith((config.mlflow_artifacts).as_uri())


def test_registered_models_return_indicators_not_labels(trained) -> None:
    config, result = trained
    features = _latest_features(config, result)
    pyfunc = mlflow.pyfunc.load_model("models:/purchase_timing@champion")
    model = pyfunc.unwrap_python_model().model
    example = features[model.encoder_.columns_]
    out = pyfunc.predict(example.astype({c: float for c in model.encoder_.numeric_}))
    assert {"p_churn", "p_purchase_30d", "next_purchase_days"} <= set(out.columns)
    assert out["p_churn"].between(0, 1).all() and out["p_churn"].nunique() > 10


def test_probabilities_never_fall_as_the_horizon_grows_and_churn_agrees(trained) -> None:
    config, result = trained
    model: PurchaseTimingModel = tracking.load_model(config, "purchase_timing")
    out = model.predict(_latest_features(config, result))
    curve = out[[f"p_purchase_{h}d" for h in model.horizons]].to_numpy()
    assert (np.diff(curve, axis=1) >= -1e-12).all()
    np.testing.assert_allclose(out["p_churn"], 1 - out[f"p_purchase_{model.churn_horizon}d"])
    assert (out["next_purchase_days_p10"] <= out["next_purchase_days"]).all()
    assert (out["next_purchase_days"] <= out["next_purchase_days_p90"]).all()


def test_a_more_recent_purchase_never_raises_churn_risk(trained) -> None:
    config, result = trained
    model: PurchaseTimingModel = tracking.load_model(config, "purchase_timing")
    features = _latest_features(config, result)
    bought = features[features["days_since_last_purchase"].notna()].copy()
    base = model.predict(bought)["p_churn"].to_numpy()
    for days in (1, 10, 30):
        recent = bought.copy()
        recent["days_since_last_purchase"] = np.minimum(recent["days_since_last_purchase"], days)
        recent["recency_to_usual_gap"] = recent["days_since_last_purchase"] / recent["gap_mean_days"]
        assert (model.predict(recent)["p_churn"].to_numpy() <= base + 1e-9).all()


def test_more_past_spend_never_lowers_clv_or_expected_purchases(trained) -> None:
    config, result = trained
    clv: ClvModel = tracking.load_model(config, "clv")
    counts: CountModel = tracking.load_model(config, "expected_purchases")
    features = _latest_features(config, result)
    richer = features.copy()
    for column in ("revenue_total", "revenue_365d", "revenue_180d", "revenue_90d", "avg_order_value"):
        richer[column] = richer[column].fillna(0) + 250.0
    before, after = clv.predict(features), clv.predict(richer)
    assert (after["expected_revenue"].to_numpy() >= before["expected_revenue"].to_numpy() - 1e-9).all()
    assert (before["expected_revenue_p10"] <= before["expected_revenue"]).all()
    assert (before["expected_revenue"] <= before["expected_revenue_p90"]).all()
    assert (counts.predict(richer)["expected_purchases"] >= counts.predict(features)["expected_purchases"] - 1e-9).all()


def test_a_worse_challenger_never_replaces_the_champion(trained) -> None:
    config, _ = trained
    client = tracking.setup_tracking(config)
    champion = client.get_model_version_by_alias("clv", tracking.CHAMPION)
    experiment = tracking.experiment(client, config, "clv")
    with mlflow.start_run(experiment_id=experiment, run_name="worse-challenger"):
        decision = tracking.register_and_gate(
            client, "clv", f"runs:/{champion.run_id}/clv", "normalized_gini",
            challenger_value=0.10, champion_value=0.50, higher_is_better=True, tolerance=0.002,
        )
    assert not decision.promoted and "worse" in decision.reason
    assert client.get_model_version_by_alias("clv", tracking.CHAMPION).version == champion.version
    assert str(client.get_model_version_by_alias("clv", tracking.CHALLENGER).version) == decision.challenger_version


def test_every_gate_decision_weighs_the_best_baseline_on_the_same_window(trained) -> None:
    config, result = trained
    client = tracking.setup_tracking(config)
    headline: dict[str, object] = {}
    for r in result.reports:  # the first report of a model is the one its gate decided on
        headline.setdefault(r.name, r)
    for report in headline.values():
        decision = json.loads(mlflow.artifacts.load_text(f"runs:/{report.run_id}/promotion_decision.json"))
        best, value = report.best_baseline
        assert (decision["baseline"], decision["baseline_value"]) == (best, pytest.approx(value)), report.name
        loses = report.model_value < value - 0.002 if report.higher_is_better else report.model_value > value
        loses |= evaluation.level_shortfall(report.metrics, report.metric, best) is not None  # a ranking headline's level
        assert decision["loses_to_baseline"] == loses, report.name
        assert (report.gate_note is not None) == loses and (not loses or "loses to baseline" in report.gate_note)
        tags = client.get_run(report.run_id).data.tags
        assert tags["promotion.baseline"] == best and tags["promotion.loses_to_baseline"] == str(loses)


def test_a_failed_run_registers_nothing(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.pipeline import run_training

    config, _ = trained
    client = MlflowClient(config.mlflow_tracking_uri)
    before = {v.version for v in client.search_model_versions("name='expected_purchases'")}
    champion = client.get_model_version_by_alias("expected_purchases", tracking.CHAMPION).version

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(CountModel, "fit", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run_training(config, models=("expected_purchases",))
    assert not multiprocessing.active_children()  # the process fitting BG/NBD ahead is stopped too
    after = {v.version for v in client.search_model_versions("name='expected_purchases'")}
    assert after == before
    assert client.get_model_version_by_alias("expected_purchases", tracking.CHAMPION).version == champion
