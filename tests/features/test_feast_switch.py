"""``FeastSettings.accelerated`` selects this project's online store and readers or Feast's own:
the same data gives the same training sets, online reads, event writes and erasure both ways."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from feast.infra.online_stores.sqlite import SqliteOnlineStore

from serving.events import EventSink
from tests.conftest import event_world
from training.config import config_from_env
from training.features import accelerated
from training.features import store as feature_store
from training.features.online_store import LeanSqliteOnlineStore
from training.features.snapshots import data_end


@pytest.fixture(scope="module")
def worlds(generated_dir, tmp_path_factory):
    """The same raw log, built into this project's store and into Feast's own."""
    return {
        switch: event_world(generated_dir, tmp_path_factory.mktemp(f"switch-{switch}"), accelerated=switch)
        for switch in (True, False)
    }


def _sample(config, n: int, seed: int = 3) -> list[str]:
    ids = pd.read_parquet(config.paths.features / "customer_profile.parquet", columns=["customer_id"])["customer_id"]
    return sorted(ids.drop_duplicates().sample(n, random_state=seed))


def test_the_switch_selects_the_online_store_and_is_read_from_the_environment(worlds) -> None:
    ours, feasts = (feature_store.feature_store(worlds[switch]) for switch in (True, False))
    assert isinstance(ours._get_provider().online_store, LeanSqliteOnlineStore) and accelerated.on(ours)
    online = feasts._get_provider().online_store
    assert type(online) is SqliteOnlineStore and not accelerated.on(feasts)
    assert not config_from_env(environ={"INDICATORS_FEAST_ACCELERATED": "false"}).feast.accelerated
    assert config_from_env(environ={}).feast.accelerated
    with pytest.raises(ValueError, match="INDICATORS_FEAST_ACCELERATED must be true or false"):
        config_from_env(environ={"INDICATORS_FEAST_ACCELERATED": "maybe"})


def test_training_sets_are_the_same_both_ways(worlds) -> None:
    config = worlds[True]
    end = data_end(config.paths)
    ids = _sample(config, 200)
    rows = pd.DataFrame({"customer_id": ids * 2, "cutoff": [end] * len(ids) + [end - timedelta(days=45)] * len(ids)})
    ours, feasts = (feature_store.training_frame(feature_store.feature_store(worlds[s]), rows) for s in (True, False))
    assert ours["days_since_last_purchase"].notna().any()
    pd.testing.assert_frame_equal(ours, feasts, check_exact=True)


def _read(config, ids: list[str], as_of) -> dict[str, list]:
    return feature_store.OnlineReader.of(feature_store.feature_store(config)).read(ids, as_of)


def test_online_reads_are_the_same_both_ways(worlds) -> None:
    ids = [*_sample(worlds[True], 40), "NO-SUCH-CUSTOMER"]
    as_of = data_end(worlds[True].paths) + timedelta(days=2)
    ours, feasts = (_read(worlds[s], ids, as_of) for s in (True, False))
    assert list(ours) == list(feasts) and ours["customer_id"] == ids
    for column in ours:
        assert [type(v) for v in ours[column]] == [type(v) for v in feasts[column]], column
        assert ours[column] == feasts[column], column
    assert ours["signup_at"][-1] is None


def test_events_write_the_same_rows_both_ways(worlds) -> None:
    ids = _sample(worlds[True], 3, seed=11)
    now = data_end(worlds[True].paths) + timedelta(days=1)
    events = [
        {"event_id": f"switch-{k}", "kind": "transaction", "customer_id": ids[k % 3],
         "timestamp": (now - timedelta(hours=k)).isoformat(), "amount": 20.0 + k}
        for k in range(6)
    ]
    before = _read(worlds[True], ids, now)
    for switch in (True, False):
        assert EventSink(worlds[switch]).accept(events, now=now).accepted == len(events)
    ours, feasts = (_read(worlds[s], ids, now) for s in (True, False))
    assert ours["days_since_last_purchase"] != before["days_since_last_purchase"]  # the events were written
    for column in ours:
        if column.startswith(("days_since", "customer_id")) or not isinstance(ours[column][0], float):
            assert ours[column] == feasts[column], column
        else:
            np.testing.assert_allclose(np.array(ours[column], float), np.array(feasts[column], float), rtol=1e-12, err_msg=column)


def test_erasure_deletes_a_customers_rows_both_ways(worlds) -> None:
    ids = _sample(worlds[True], 2, seed=5)
    for switch in (True, False):
        store = feature_store.feature_store(worlds[switch])
        assert accelerated.supports_erasure(store)
        present = accelerated.online_rows(store, ids)
        assert present >= 2 * len(feature_store.BATCH_VIEWS)  # each customer's row of every batch view
        assert accelerated.erase_online(store, ids) >= present
        assert accelerated.online_rows(store, ids) == 0
        assert all(value is None for value in _read(worlds[switch], ids, data_end(worlds[switch].paths))["signup_at"])
