"""A trainer is a function of the config and the modelling data: it fits and backtests with
no MLflow at all, and returns what tracking logs and gates."""

from __future__ import annotations

import shutil
from datetime import datetime

import mlflow
import numpy as np
import pandas as pd
import pytest

from training import baselines, catalogue, publish, tracking, trainers
from training.config import Config, ModelSettings, SnapshotPlan
from training.evaluation import best_baseline, headline_value
from training.pipeline import prepare


@pytest.fixture(scope="module")
def modelling_data(generated_dir, tmp_path_factory):
    """The generated data set's raw tables in a directory of their own, prepared for training."""
    root = tmp_path_factory.mktemp("trainers")
    shutil.copytree(generated_dir / "raw", root / "raw")
    shutil.copytree(generated_dir / "truth", root / "truth")
    config = Config(
        data_dir=root, mlflow_dir=root / "mlflow", snapshots=SnapshotPlan(months=1, step_days=30),
        models=ModelSettings(trials=1, max_rounds=60, max_customers=1_000),
    )
    data, _store = prepare(config, lambda _: None, {})
    return config, data


@pytest.fixture()
def no_mlflow(monkeypatch: pytest.MonkeyPatch):
    """Any use of MLflow fails the test."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("a trainer used MLflow")

    for name in ("start_run", "log_metric", "log_metrics", "log_params", "set_tag", "set_tags", "log_artifact"):
        monkeypatch.setattr(mlflow, name, refuse)


def test_every_catalogue_model_has_a_trainer() -> None:
    trained_by = {"lookalike" if m.lookalike else m.name for m in catalogue.MODELS}
    assert set(trainers.TRAINERS) == trained_by


def test_a_trainer_fits_and_backtests_without_mlflow(modelling_data, no_mlflow) -> None:
    config, data = modelling_data
    steps: list[str] = []
    [trained] = trainers.train_expected_purchases(config, data, steps.append)
    assert steps == ["expected purchases fitted"]
    gate, metrics = trained.gate, trained.evaluation.metrics
    assert (gate.name, gate.headline, gate.higher_is_better) == ("expected_purchases", "mae", False)
    assert {"model", "btyd", "pareto_nbd", "rfm", "oracle"} <= set(metrics["method"])  # all on the same rows
    rows = metrics.query("metric == 'rows'")["value"]
    assert rows.nunique() == 1 and rows.iloc[0] == len(gate.test) > 0
    assert (gate.test["cutoff"] == gate.window.test).all()  # backtested on its test window only
    assert gate.window.test > max(gate.window.fit) and gate.window.tune < gate.window.test

    predicted = trained.model.predict(gate.test)["expected_purchases"].to_numpy()
    assert np.isfinite(predicted).all() and (predicted >= 0).all()
    value = headline_value(metrics, "mae")
    assert value == pytest.approx(np.mean(np.abs(gate.test["future_purchase_days_90d"].to_numpy(float) - predicted)))
    assert trained.champion_value(trained.model) == pytest.approx(value)  # a champion is judged on the same rows
    assert len(trained.studies) == 1 and len(trained.studies[0].trials) == 1

    best = best_baseline(metrics, "mae", False)
    if trained.fallback is not None:  # offered only to replace a model that loses to it
        assert trained.fallback.baseline == best[0] and trained.fallback.value < value
    assert trained.fallback is None or trained.fallback_note is None


def test_the_baselines_fitted_ahead_are_the_ones_fitted_in_process(modelling_data) -> None:
    """``BtydAhead`` fits PyMC-Marketing's models in a process of its own, at the cutoffs the
    trainers being run compare at, in the order they ask; what comes back is what the trainer
    would have fitted itself, with spend (Gamma-Gamma) only where the CLV trainer reads it."""
    config, data = modelling_data
    plan, settings = data.plan, config.models
    grid, count_horizon, revenue_horizon = trainers._learned_horizons(plan, settings)
    churn_test, clv_test = (data.windows[h].test for h in (plan.learned_on_grid(settings.churn_horizon_days), revenue_horizon))
    cutoffs, spend_at = trainers.btyd_cutoffs(plan, settings, tuple(trainers.TRAINERS))
    assert cutoffs[0] == churn_test and set(cutoffs) == {data.windows[h].test for h in (*grid, count_horizon, revenue_horizon)}
    assert spend_at == {clv_test} and trainers.btyd_cutoffs(plan, settings, ("expected_purchases",))[1] == set()
    assert trainers.start_btyd(data.transactions, plan, settings, ("lookalike",)) is None  # compares no BG/NBD

    ahead = trainers.start_btyd(data.transactions, plan, settings, ("clv",))
    try:
        in_process = baselines.btyd_predictions(data.transactions, clv_test, grid, count_horizon, revenue_horizon)
        pd.testing.assert_frame_equal(ahead.predictions(clv_test), in_process)
        assert ahead.predictions(churn_test if churn_test != clv_test else data.data_end) is None  # not asked for: fitted in place
    finally:
        ahead.close()


def test_a_trainer_takes_the_baselines_fitted_ahead_and_fits_what_they_lack(modelling_data, monkeypatch) -> None:
    config, data = modelling_data
    cutoff = data.windows[90].test
    ahead_frame = pd.DataFrame({"customer_id": ["C1"], "p_purchase_90d": [0.5]})  # fitted without spend

    class Ahead:
        def predictions(self, at):
            return ahead_frame if at == cutoff else None

    fitted_here: list[datetime] = []

    def fit_here(transactions, at, *horizons):
        fitted_here.append(at)
        return ahead_frame.assign(expected_revenue=1.0)

    monkeypatch.setattr(baselines, "btyd_predictions", fit_here)
    own = trainers.ModelingData(data.rows, data.plan, data.data_start, data.data_end, data.transactions, None, btyd_ahead=Ahead())
    assert trainers._btyd(own, config, cutoff, "p_purchase_90d") is ahead_frame and not fitted_here
    assert "expected_revenue" in trainers._btyd(own, config, cutoff, "expected_revenue") and fitted_here == [cutoff]
    trainers._btyd(own, config, data.data_end, "p_purchase_90d")  # not fitted ahead
    assert fitted_here == [cutoff, data.data_end]


def test_the_lookalike_trainer_offers_the_activity_baseline_beside_each_seed(modelling_data, no_mlflow) -> None:
    config, data = modelling_data
    results = trainers.train_lookalikes(config, data, lambda _: None)
    assert [t.gate.name for t in results] == list(catalogue.LOOKALIKES)
    for trained in results:
        assert trained.own_run and trained.gate.window is None
        assert trained.fallback.baseline == trainers.ACTIVITY_BASELINE
        metric = trained.gate.headline
        assert trained.fallback.value == headline_value(trained.evaluation.metrics, metric, trainers.ACTIVITY_BASELINE)
        assert set(trained.fallback.evaluation.metrics["method"]) == {"model"}  # the baseline's own rows
        assert not trained.gate.test["customer_id"].isin(trained.model.seed_ids_).any()  # seed members are not ranked


def test_tracking_reports_what_the_trainer_measured(modelling_data) -> None:
    config, data = modelling_data
    [trained] = trainers.train_expected_purchases(config, data, lambda _: None)
    previous = mlflow.get_tracking_uri()  # other tests read the global URI
    client = tracking.setup_tracking(config)

    def no_history(*_args, **_kwargs):
        raise AssertionError("a metric's history was read back: the model was logged after its metrics")

    try:
        mlflow.set_experiment(experiment_id=tracking.experiment(client, config, "expected_purchases"))
        with pytest.MonkeyPatch.context() as patch, mlflow.start_run(run_name="train-expected_purchases"):
            patch.setattr(mlflow.MlflowClient, "get_metric_history", no_history)
            [report] = publish.publish(config, client, trained)
        [model] = mlflow.search_logged_models(filter_string=f"source_run_id = '{report.run_id}'", output_format="list")
        model_metrics = {m.key: m.value for m in model.metrics}
    finally:
        mlflow.set_tracking_uri(previous)
    assert report.model_value == headline_value(trained.evaluation.metrics, "mae")
    assert model_metrics["expected_purchases.mae"] == pytest.approx(report.model_value)  # the model carries its metrics
    assert report.version == "1"  # the first version of an empty registry
    assert report.promoted != bool(report.served_baseline)  # promoted, or a baseline served in its place
    logged = client.get_run(report.run_id).data
    assert logged.metrics["expected_purchases.mae"] == pytest.approx(report.model_value)
    assert logged.tags["promotion.promoted"] == str(report.promoted)
