"""The promotion gate against the best baseline, and the activity baseline served in place of a
lookalike that loses to it."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import mlflow
import numpy as np
import pandas as pd
import pytest

from serving.scoring import champion_provenance
from training import evaluation, publish, tracking, trainers
from training.dataset import entity_rows, features_at
from training.features import store as feature_store
from training.features.snapshots import data_end
from training.models import ActivityLookalikeModel, LookalikeModel


class BlindLookalike(LookalikeModel):
    """A lookalike that ranks at random: it must lose to the activity baseline."""

    def similarity(self, features: pd.DataFrame, matrix: np.ndarray | None = None) -> np.ndarray:
        x = np.nan_to_num(self.encoder_.matrix(features) if matrix is None else matrix)
        return np.modf(np.abs(x @ np.sin(np.arange(1.0, x.shape[1] + 1))) * 997.0)[0]  # a hash of the features


def test_the_best_baseline_is_the_best_non_oracle_method_on_the_headline_indicator() -> None:
    metrics = pd.DataFrame(
        [
            ("churn", "model", "auc", 0.80), ("churn", "btyd", "auc", 0.85), ("churn", "rfm", "auc", 0.82),
            ("churn", "oracle", "auc", 0.95), ("p_purchase_30d", "btyd", "auc", 0.99),
            ("expected", "model", "mae", 0.7), ("expected", "btyd", "mae", 0.6), ("expected", "rfm", "mae", 0.65),
        ],
        columns=["indicator", "method", "metric", "value"],
    )
    assert evaluation.best_baseline(metrics, "auc", True) == ("btyd", 0.85)
    assert evaluation.best_baseline(metrics, "mae", False) == ("btyd", 0.6)
    assert evaluation.best_baseline(metrics[metrics["method"] == "model"], "auc", True) is None


def test_a_level_far_off_and_further_off_than_the_baselines_loses() -> None:
    def table(model_error: float, btyd_error: float) -> pd.DataFrame:
        return pd.DataFrame(
            [("expected_revenue", "model", "normalized_gini", 0.70), ("expected_revenue", "btyd", "normalized_gini", 0.60),
             ("expected_revenue", "model", "total_error", model_error), ("expected_revenue", "btyd", "total_error", btyd_error)],
            columns=["indicator", "method", "metric", "value"],
        )

    assert evaluation.level_shortfall(table(-0.245, 0.055), "normalized_gini", "btyd") == "total error -24.5% against +5.5%"
    assert evaluation.level_shortfall(table(-0.09, 0.01), "normalized_gini", "btyd") is None  # within +-10%: never held against it
    assert evaluation.level_shortfall(table(-0.30, -0.35), "normalized_gini", "btyd") is None  # no further off than the baseline
    assert evaluation.level_shortfall(table(-0.30, 0.0).query("metric != 'total_error' or method != 'btyd'"), "normalized_gini", "btyd") is None
    churn = pd.DataFrame([("churn", "model", "auc", 0.8), ("churn", "btyd", "auc", 0.7)], columns=["indicator", "method", "metric", "value"])
    assert evaluation.level_shortfall(churn, "auc", "btyd") is None  # a probability has no level here
    assert evaluation.level_shortfall(table(-0.245, 0.055), "mae", "btyd") is None  # MAE weighs the level itself


def test_a_challenger_that_loses_to_its_best_baseline_never_replaces_a_champion(trained) -> None:
    config, _ = trained
    client = tracking.setup_tracking(config)
    source = client.get_model_version_by_alias("clv", tracking.CHAMPION)
    experiment = tracking.experiment(client, config, "clv")
    name = "gate_check_clv"

    def gate(value: float, champion_value: float | None) -> tuple[str, tracking.GateDecision]:
        with mlflow.start_run(experiment_id=experiment, run_name="gate-check") as run:
            decision = tracking.register_and_gate(
                client, name, f"runs:/{source.run_id}/clv", "normalized_gini", value, champion_value,
                higher_is_better=True, tolerance=0.002, baseline=("btyd", 0.85),
            )
        return run.info.run_id, decision

    run_id, first = gate(0.80, None)  # no champion yet: promoted, and says loudly that it loses
    assert first.promoted and first.loses_to_baseline
    assert first.note.startswith("loses to baseline btyd (0.8000 vs 0.8500)") and "no champion yet" in first.note
    tags = client.get_run(run_id).data.tags
    assert tags["promotion.loses_to_baseline"] == "True" and tags["promotion.gate_note"] == first.note
    assert client.get_model_version(name, first.challenger_version).tags["loses_to_baseline"] == first.note
    decision = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/promotion_decision.json"))
    assert decision["baseline"] == "btyd" and decision["baseline_value"] == 0.85 and decision["loses_to_baseline"]

    _, second = gate(0.84, 0.80)  # better than the champion, still worse than the baseline
    assert not second.promoted and second.loses_to_baseline and f"champion v{first.challenger_version} kept" in second.reason
    assert str(client.get_model_version_by_alias(name, tracking.CHAMPION).version) == first.challenger_version
    assert str(client.get_model_version_by_alias(name, tracking.CHALLENGER).version) == second.challenger_version

    with mlflow.start_run(experiment_id=experiment, run_name="gate-check"):
        level = tracking.register_and_gate(
            client, name, f"runs:/{source.run_id}/clv", "normalized_gini", 0.90, 0.80, higher_is_better=True,
            tolerance=0.002, baseline=("btyd", 0.85), level_shortfall="total error -24.5% against +5.5%",
        )  # better ranked than the baseline, but its level does not hold
    assert not level.promoted and level.loses_to_baseline
    assert level.note.startswith("loses to baseline btyd on level (total error -24.5% against +5.5%)")

    _, third = gate(0.86, 0.80)  # beats both
    assert third.promoted and not third.loses_to_baseline and third.note is None
    assert "beats baseline btyd (0.8600 vs 0.8500)" in third.reason
    assert str(client.get_model_version_by_alias(name, tracking.CHAMPION).version) == third.challenger_version


@pytest.fixture()
def own_registry(trained, tmp_path):
    """The trained data with an empty MLflow store of its own; the shared one is restored after."""
    config, _ = trained
    mine = replace(config, mlflow_dir=tmp_path / "mlflow")
    yield mine, tracking.setup_tracking(mine)
    shared = tracking.setup_tracking(config)
    mlflow.set_experiment(experiment_id=tracking.experiment(shared, config, "lookalike"))  # as training left it


def test_a_lookalike_that_loses_to_the_activity_baseline_gets_the_baseline_served(
    own_registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, client = own_registry
    store = feature_store.feature_store(config)
    profile = pd.read_parquet(config.paths.features / "customer_profile.parquet", columns=["customer_id", "signup_at"])
    end = pd.Timestamp(data_end(config.paths))
    latest = features_at(store, entity_rows(profile, [end]))
    data = trainers.ModelingData(latest, {}, (end - timedelta(days=365)).to_pydatetime(), end.to_pydatetime(), pd.DataFrame(), None)
    monkeypatch.setattr(trainers, "LookalikeModel", BlindLookalike)
    experiment = tracking.experiment(client, config, "lookalike")
    mlflow.set_experiment(experiment_id=experiment)  # nested runs land here, as in run_training
    with mlflow.start_run(experiment_id=experiment, run_name="train-lookalike"):
        mlflow.log_params({"data_start": f"{data.data_start:%Y-%m-%d}", "data_end": f"{end:%Y-%m-%d}"})
        reports = [r for t in trainers.train_lookalikes(config, data, lambda _: None) for r in publish.publish(config, client, t)]

    assert {r.name for r in reports} == {"lookalike_top_value", "lookalike_sustainable"}
    for report in reports:
        assert not report.promoted
        assert report.model_value < report.baselines["activity_heuristic"]
        assert report.gate_note.startswith("loses to baseline activity_heuristic")
        assert "the baseline is served as champion instead (activity_heuristic served, v" in report.gate_note
        champion = client.get_model_version_by_alias(report.name, tracking.CHAMPION)
        challenger = client.get_model_version_by_alias(report.name, tracking.CHALLENGER)
        assert str(challenger.version) == report.version != str(champion.version)
        assert champion.tags["model_kind"] == "baseline" and champion.tags["baseline"] == "activity_heuristic"
        assert "loses to baseline" in challenger.tags["loses_to_baseline"]
        run = client.get_run(champion.run_id)
        assert "activity_heuristic baseline" in run.info.run_name and run.data.tags["model_kind"] == "baseline"
        card = mlflow.artifacts.load_text(f"runs:/{champion.run_id}/model_card.md")
        assert "Baseline, not a learnt model" in card.split("\n", 3)[2]
        decision = json.loads(mlflow.artifacts.load_text(f"runs:/{champion.run_id}/promotion_decision.json"))
        assert decision["served_baseline"] and decision["promoted"]
        provenance = champion_provenance(client, champion.run_id)
        assert provenance["data_end"] == f"{end:%Y-%m-%d}"  # nested under the training run, like the model
        served_recall = provenance["metrics"][f"{report.name}.{report.metric}"]
        assert served_recall == pytest.approx(report.baselines["activity_heuristic"])

        model = tracking.load_model(config, report.name)  # what serving loads
        assert isinstance(model, ActivityLookalikeModel) and model.baseline == "activity_heuristic"
        scores = model.score(latest, model.encoder_.matrix(latest))
        assert ((scores > 0) & (scores < 1)).all()
        assert model.contributions(model.encoder_.matrix(latest.head(3))).shape == (3, len(model.encoder_.columns_) + 1)
        pyfunc = mlflow.pyfunc.load_model(f"models:/{report.name}@champion")
        example = latest[model.encoder_.columns_].head(5).astype(float)
        assert pyfunc.predict(example)[f"{report.name}_score"].between(0, 1).all()


def test_a_failed_run_puts_every_champion_back(tmp_path) -> None:
    """Champions moved by a run that then fails go back; a model first registered by it is
    left without a champion."""
    from mlflow import MlflowClient

    from training.config import Config

    config = Config(data_dir=tmp_path / "data", mlflow_dir=tmp_path / "mlflow")
    client: MlflowClient = tracking.setup_tracking(config)
    source = tmp_path / "model"
    source.mkdir()
    for name in ("kept", "moved"):
        client.create_registered_model(name)
        for _ in range(2):
            client.create_model_version(name, str(source))
        client.set_registered_model_alias(name, tracking.CHAMPION, "1")
    before = tracking.champion_versions(client, ["kept", "moved"])
    client.set_registered_model_alias("moved", tracking.CHAMPION, "2")  # what the failed run did
    client.create_registered_model("new")
    client.create_model_version("new", str(source))
    client.set_registered_model_alias("new", tracking.CHAMPION, "1")
    tracking.restore_champions(client, before)
    assert tracking.champion_versions(client, ["kept", "moved", "new"]) == {"kept": "1", "moved": "1", "new": None}


def test_a_baseline_replaces_the_champion_only_if_the_champion_does_worse_than_it() -> None:
    from training.tracking import baseline_replaces

    assert baseline_replaces(None, 0.80, higher_is_better=True)  # no champion, or a baseline champion
    assert baseline_replaces(float("nan"), 0.80, higher_is_better=True)
    assert baseline_replaces(0.78, 0.80, higher_is_better=True)
    assert not baseline_replaces(0.81, 0.80, higher_is_better=True)  # a better champion stays
    assert not baseline_replaces(0.80, 0.80, higher_is_better=True)
    assert baseline_replaces(1.10, 1.00, higher_is_better=False)  # MAE: lower is better
    assert not baseline_replaces(0.90, 1.00, higher_is_better=False)
