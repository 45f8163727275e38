"""The production profile for real: Redis online store and a SQL registry in PostgreSQL.

Uses the services every machine runs (Redis 127.0.0.1:6379, PostgreSQL 127.0.0.1:5432,
database ``test``). Skipped with the reason where they are not reachable, except under CI,
where their absence is a failure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.features import store as feature_store


@pytest.fixture()
def production_store(feature_world, production_profile):
    with production_profile(feature_world.config) as (config, store):
        yield config, store


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
