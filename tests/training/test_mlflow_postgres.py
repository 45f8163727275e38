"""The production profile of MLflow: tracking and registry in PostgreSQL, for real.

A throwaway database on the local server (127.0.0.1:5432, trust auth) holds the runs and the
registry; the promotion gate and loading the champion work there as with SQLite.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import replace

import mlflow
import numpy as np
import pytest

from training import tracking

SERVER = os.environ.get("INDICATORS_TEST_POSTGRES_SERVER", "postgresql+psycopg://postgres@127.0.0.1:5432")


def _reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture()
def postgres_tracking_uri():
    if not _reachable():
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL not reachable on 127.0.0.1:5432 under CI")
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    import psycopg

    name = f"indicators_mlflow_{uuid.uuid4().hex[:8]}"
    admin = SERVER.replace("postgresql+psycopg", "postgresql") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{SERVER}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.services
def test_runs_registry_and_gate_live_in_postgres(trained, postgres_tracking_uri: str, tmp_path) -> None:
    config, _ = trained
    model = tracking.load_model(config, "clv")
    production = replace(config, tracking_uri=postgres_tracking_uri, mlflow_dir=tmp_path)
    try:
        client = tracking.setup_tracking(production)
        experiment = tracking.experiment(client, production, "clv")
        example = _example(config, model)
        with mlflow.start_run(experiment_id=experiment, run_name="postgres-profile"):
            uri = tracking.log_model(model, "clv", example).model_uri
            first = tracking.register_and_gate(client, "clv", uri, "normalized_gini", 0.80, None, True, 0.002)
            worse = tracking.register_and_gate(client, "clv", uri, "normalized_gini", 0.70, 0.80, True, 0.002)
        assert first.promoted and not worse.promoted
        assert str(client.get_model_version_by_alias("clv", tracking.CHAMPION).version) == first.challenger_version
        served = tracking.load_model(production, "clv")
        np.testing.assert_allclose(served.predict(example)["expected_revenue"], model.predict(example)["expected_revenue"])
        assert mlflow.get_tracking_uri().startswith("postgresql")
    finally:
        tracking.setup_tracking(config)  # back to the session's SQLite store


def _example(config, model):
    import pandas as pd

    from training.dataset import entity_rows, features_at
    from training.features import store as feature_store
    from training.features.snapshots import data_end

    profile = pd.read_parquet(config.paths.features / "customer_profile.parquet", columns=["customer_id", "signup_at"])
    rows = entity_rows(profile.head(20), [data_end(config.paths)])
    return features_at(feature_store.feature_store(config), rows)[model.encoder_.columns_ + ["customer_id"]]
