"""The production profile for real: Redis online store and a SQL registry in PostgreSQL.

Uses the services every machine runs (Redis 127.0.0.1:6379, PostgreSQL 127.0.0.1:5432,
database ``test``). Skipped with the reason where they are not reachable, except under CI,
where their absence is a failure.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from feast.errors import ProjectObjectNotFoundException

from training.config import FeastSettings
from training.features import store as feature_store

POSTGRES_URL = os.environ.get("INDICATORS_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("INDICATORS_TEST_REDIS", "127.0.0.1:6379")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture()
def production_store(feature_world):
    missing = [name for name, port in (("PostgreSQL", 5432), ("Redis", 6379)) if not _reachable("127.0.0.1", port)]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{', '.join(missing)} not reachable on 127.0.0.1 under CI")
        pytest.skip(f"{', '.join(missing)} not reachable on 127.0.0.1")
    project = f"indicators_test_{uuid.uuid4().hex[:8]}"
    settings = FeastSettings(
        project=project, online_store="redis", redis_connection=REDIS, registry="sql", registry_path=POSTGRES_URL
    )
    config = replace(feature_world.config, feast=settings)
    store = feature_store.feature_store(config)
    yield config, store
    store.teardown()  # drops this project's keys in Redis and its objects in the registry
    with contextlib.suppress(ProjectObjectNotFoundException):
        store.registry.delete_project(project, commit=True)


@pytest.mark.services
def test_redis_and_postgres_serve_what_the_offline_store_computed(production_store, feature_world) -> None:
    config, store = production_store
    feature_store.apply(store, config.paths)
    assert {v.name for v in feature_store.BATCH_VIEWS} | {"customer_predictions"} == {view.name for view in store.list_feature_views()}
    feature_store.write_latest_online(store, config.paths)
    latest = feature_world.cutoffs[-1]
    ids = pd.read_parquet(config.paths.features / "customer_profile.parquet")["customer_id"].sample(30, random_state=3)
    online = pd.DataFrame(feature_store.online_features(store, ids.tolist(), latest))
    offline = feature_store.training_frame(
        feature_world.store, pd.DataFrame({"customer_id": ids, "cutoff": latest})
    )
    for column in ("purchase_days_365d", "revenue_total", "sessions_90d", "days_since_last_purchase"):
        np.testing.assert_allclose(online[column].astype(float), offline[column].astype(float), err_msg=column)
    assert online["region"].tolist() == offline["region"].tolist()
