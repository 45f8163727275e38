"""The production profile chosen by configuration, for real: `INDICATORS_PROFILE=production`
runs ingest -> train -> score -> serve with Redis as the online store, the Feast registry and
MLflow in PostgreSQL (the machine's services, a throwaway database and Feast project), and two
service processes on the same Redis answer alike."""

from __future__ import annotations

import contextlib
import os
import uuid
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.cli import app
from tests.conftest import API_KEY, AUTH, POSTGRES_URL, REDIS, _reachable
from training.config import ConfigError, config_from_env

pytestmark = pytest.mark.services


def test_the_profile_comes_from_the_environment_and_names_what_is_missing() -> None:
    production = {
        "INDICATORS_PROFILE": "production", "INDICATORS_REDIS": "redis.internal:6379,password=secret",
        "INDICATORS_FEAST_REGISTRY": "postgresql+psycopg://feast@db/feast",
        "INDICATORS_MLFLOW_TRACKING_URI": "postgresql+psycopg://mlflow@db/mlflow", "INDICATORS_MLFLOW_ARTIFACTS": "s3://bucket/mlflow",
    }
    config = config_from_env(environ=production)
    assert (config.feast.online_store, config.feast.registry) == ("redis", "sql")
    assert config.feast.redis_connection == "redis.internal:6379,password=secret"
    assert config.mlflow_tracking_uri == "postgresql+psycopg://mlflow@db/mlflow"
    assert config.artifact_location("clv") == "s3://bucket/mlflow/clv"
    assert config_from_env(environ=production, tracking_uri=None).mlflow_tracking_uri.startswith("postgresql")  # None: not given
    embedded = config_from_env(environ={})
    assert (embedded.feast.online_store, embedded.mlflow_tracking_uri[:7]) == ("sqlite", "sqlite:")
    with pytest.raises(ConfigError, match="INDICATORS_REDIS .*INDICATORS_MLFLOW_TRACKING_URI"):
        config_from_env(environ={"INDICATORS_PROFILE": "production", "INDICATORS_FEAST_REGISTRY": "postgresql://x"})
    with pytest.raises(ConfigError, match="embedded"):
        config_from_env(environ={"INDICATORS_PROFILE": "cloud"})


def test_a_settings_file_chooses_the_profile_and_may_not_hold_a_password(tmp_path: Path) -> None:
    settings = tmp_path / "production.yaml"
    settings.write_text(
        "INDICATORS_PROFILE: production\n"
        "INDICATORS_FEAST_REGISTRY: postgresql+psycopg://feast@db/feast\n"
        "INDICATORS_MLFLOW_TRACKING_URI: postgresql+psycopg://mlflow@db/mlflow\n"
        "INDICATORS_FEAST_PROJECT: shop\n"
    )
    environ = {"INDICATORS_SETTINGS": str(settings), "INDICATORS_REDIS": "redis.internal:6379,password=secret"}
    config = config_from_env(environ=environ)
    assert (config.feast.online_store, config.feast.project, config.feast.redis_connection) == (
        "redis", "shop", "redis.internal:6379,password=secret",
    )
    assert config_from_env(environ={**environ, "INDICATORS_FEAST_PROJECT": "other"}).feast.project == "other"  # env wins
    for line, match in (
        ("INDICATORS_MLFLOW_TRACKING_URI: postgresql+psycopg://mlflow:hunter2@db/mlflow", "holds a password"),
        ("INDICATORS_REDIS: redis.internal:6379,password=hunter2", "holds a password"),
        ("INDICATORS_REDIS_PASSWORD: x", "unknown setting"),
    ):
        settings.write_text(line + "\n")
        with pytest.raises(ConfigError, match=match):
            config_from_env(environ={"INDICATORS_SETTINGS": str(settings)})


@pytest.fixture()
def production_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The production profile's environment on a database and a Feast project of their own."""
    missing = [name for name, port in (("PostgreSQL", 5432), ("Redis", 6379)) if not _reachable(port)]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{', '.join(missing)} not reachable on 127.0.0.1 under CI")
        pytest.skip(f"{', '.join(missing)} not reachable on 127.0.0.1")
    import psycopg

    server, _, _ = POSTGRES_URL.rpartition("/")
    admin = server.replace("postgresql+psycopg", "postgresql") + "/postgres"
    database = f"indicators_prod_{uuid.uuid4().hex[:8]}"
    project = f"indicators_prod_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    env = {
        "INDICATORS_PROFILE": "production", "INDICATORS_REDIS": REDIS, "INDICATORS_FEAST_REGISTRY": POSTGRES_URL,
        "INDICATORS_MLFLOW_TRACKING_URI": f"{server}/{database}", "INDICATORS_FEAST_PROJECT": project,
        "INDICATORS_DATA_DIR": str(tmp_path / "data"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        yield env
    finally:
        from feast.errors import ProjectObjectNotFoundException

        from training.features import store as feature_store

        store = feature_store.feature_store(config_from_env())
        with contextlib.suppress(Exception):
            store.teardown()  # this project's keys in Redis, its objects in the registry
        with contextlib.suppress(ProjectObjectNotFoundException):
            store.registry.delete_project(project, commit=True)
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def test_ingest_train_score_serve_on_the_production_profile(production_env, tmp_path: Path) -> None:
    import httpx
    import redis

    from serving.server import ServerFailed, running_server
    from training.data.generate import GenerationSpec, generate

    generated = tmp_path / "generated"
    generate(GenerationSpec(customers=500, seed=5, start=date(2023, 11, 1), days=1095, transactions_only=True), generated)
    export = generated / "orders.csv"
    pd.read_parquet(generated / "raw" / "transactions.parquet").to_csv(export, index=False)
    runner = CliRunner()
    for args in (
        ["ingest", "--transactions", str(export), "--as-of", "2100-01-01"],
        ["train", "--trials", "1", "--set", "models.max_rounds=80", "--set", "models.timeout_seconds=30"],
        ["score"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, f"{args[0]}: {result.output}"

    config = config_from_env()
    data = Path(production_env["INDICATORS_DATA_DIR"])
    assert not (data / "feast" / "online_store.db").exists() and not (config.mlflow_store / "mlflow.db").exists()
    project = production_env["INDICATORS_FEAST_PROJECT"].encode()
    assert any(project in key for key in redis.Redis.from_url(f"redis://{REDIS}").scan_iter(count=1000))
    import psycopg

    with psycopg.connect(production_env["INDICATORS_MLFLOW_TRACKING_URI"].replace("postgresql+psycopg", "postgresql")) as db:
        [(registered,)] = db.execute("SELECT count(*) FROM registered_models").fetchall()
    assert registered >= 3

    scores = pd.read_parquet(data / "predictions" / "scores.parquet").set_index("customer_id")
    customers = scores.index[:5].tolist()
    answers = []
    try:
        with running_server(config, api_key=API_KEY) as first, running_server(config, api_key=API_KEY) as second:  # two processes, one Redis
            for url in (first, second):
                response = httpx.post(f"{url}/profile", json={"customer_ids": customers, "as_of": "2026-10-31T00:00:00Z"}, headers=AUTH, timeout=60)
                assert response.status_code == 200, response.text
                answers.append(response.json()["profiles"])
            # Reads go on while a batch writes to Redis: every request answered in full.
            import subprocess
            import sys

            batch = subprocess.Popen([str(Path(sys.executable).with_name("indicators")), "score"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            during = []
            while batch.poll() is None:
                response = httpx.post(f"{first}/profile", json={"customer_ids": customers, "reasons": 0}, headers=AUTH, timeout=60)
                during.append((response.status_code, len(response.json().get("profiles", []))))
            assert batch.returncode == 0, batch.stderr.read()[-2000:]
            assert during and all(answer == (200, len(customers)) for answer in during), during
            # An event accepted by one process is read at once by the other: one Redis.
            from datetime import UTC, datetime, timedelta

            from training.features import store as feature_store

            target, moment = customers[2], datetime.now(UTC).replace(microsecond=0)
            midnight = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0)
            online = feature_store.feature_store(config)
            revenue = feature_store.online_features(online, [target], midnight)["revenue_total"][0]
            asked = {"customer_ids": [target], "reasons": 0, "as_of": midnight.isoformat()}
            before = httpx.post(f"{second}/profile", json=asked, headers=AUTH, timeout=60).json()["profiles"]
            event = {"event_id": "redis-1", "kind": "transaction", "customer_id": target, "timestamp": moment.isoformat(), "amount": 25.0}
            posted = httpx.post(f"{first}/events", json={"events": [event]}, headers=AUTH, timeout=60)
            assert posted.status_code == 200 and posted.json()["accepted"] == 1, posted.text
            after = httpx.post(f"{second}/profile", json=asked, headers=AUTH, timeout=60).json()["profiles"]
            assert after[0]["indicators"] != before[0]["indicators"]
            assert feature_store.online_features(online, [target], midnight)["revenue_total"][0] == pytest.approx(revenue + 25.0)
    except ServerFailed as error:
        pytest.fail(str(error))
    assert [p["customer_id"] for p in answers[0]] == customers
    assert answers[0] == answers[1]

    # Erasure reaches Redis: the customer's hash is gone, and a scan of Redis finds no trace.
    from training.erasure import find_traces, roots_of
    from training.features import store as feature_store

    victim = customers[0]
    online = feature_store.feature_store(config)
    assert find_traces([], [victim], online)  # the scan does look into Redis
    result = runner.invoke(app, ["erase", "--customer-id", victim])
    assert result.exit_code == 0, result.output
    assert "verified: no erased id" in result.output and "possible trace" not in result.output
    assert find_traces(roots_of(config), [victim], online) == []
    assert find_traces([], [customers[1]], online)  # only the erased customer went
