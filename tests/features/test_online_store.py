"""The lean SQLite online store reads and writes exactly what Feast's own SQLite store does."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import SqliteOnlineStore
from feast.infra.passthrough_provider import PassthroughProvider
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from training.features.online_store import LeanSqliteOnlineStore


def _table_rows(path: str) -> list[tuple]:
    """Every stored row but ``value_text``, which only Feast's text search reads (the lean store
    leaves it empty when that is off)."""
    with sqlite3.connect(path) as conn:
        table = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()[0][0]
        return conn.execute(f'SELECT entity_key, feature_name, value, event_ts, created_ts FROM "{table}"').fetchall()


def _keys(ids: list[str]) -> list[EntityKey]:
    return [EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=cid)]) for cid in ids]


def test_the_store_is_feasts_configured_online_store(feature_world) -> None:
    assert isinstance(feature_world.store._get_provider().online_store, LeanSqliteOnlineStore)


def test_reads_equal_feasts_reads(feature_world) -> None:
    store = feature_world.store
    view = store.get_feature_view("customer_transactions")
    profile = pd.read_parquet(feature_world.paths.features / "customer_profile.parquet", columns=["customer_id"])
    keys = _keys([*profile["customer_id"].head(25), "NO-SUCH-CUSTOMER", profile["customer_id"].iloc[3]])
    lean = LeanSqliteOnlineStore().online_read(store.config, view, keys)
    feast_own = SqliteOnlineStore().online_read(store.config, view, keys)
    assert len(lean) == len(feast_own) == len(keys)
    assert lean[-2] == (None, None)
    for (lean_ts, lean_values), (feast_ts, feast_values) in zip(lean, feast_own, strict=True):
        assert lean_ts == feast_ts
        assert lean_values == feast_values


def test_writes_equal_feasts_writes(feature_world, tmp_path) -> None:
    """Both stores write the same frame into their own database: the rows are identical, and a
    second write (new values, same customers) updates them in place."""
    store = feature_world.store
    view = store.get_feature_view("customer_profile")
    ts = pd.Timestamp("2026-01-02T03:04:05Z").to_pydatetime()
    data = [
        (key, {"age_band": Value(string_val=band), "email_opt_in": Value(bool_val=True), "region": Value()}, ts, None)
        for key, band in zip(_keys(["C1", "C2", "C3"]), ["18-24", "25-34", "35-44"], strict=True)
    ]
    tables = {}
    for name, online_store in (("lean", LeanSqliteOnlineStore()), ("feast", SqliteOnlineStore())):
        config = store.config.model_copy(deep=True)
        config.online_store.path = str(tmp_path / f"{name}.db")
        online_store.update(config, [], [view], [], [], partial=False)
        online_store.online_write_batch(config, view, data, progress=None)
        rewritten = [(data[0][0], {"age_band": Value(string_val="65+")}, ts, None)]
        online_store.online_write_batch(config, view, rewritten, progress=None)
        with sqlite3.connect(config.online_store.path) as conn:
            table = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()[0][0]
            tables[name] = sorted(
                conn.execute(f'SELECT entity_key, feature_name, value, event_ts, created_ts FROM "{table}"').fetchall()
            )
        online_store.teardown(config, [view], [])
    assert len(tables["lean"]) == 9
    assert tables["lean"] == tables["feast"]
    first_key = serialize_entity_key(data[0][0], entity_key_serialization_version=store.config.entity_key_serialization_version)
    rows = {(key, name): value for key, name, value, _, _ in tables["lean"]}
    assert Value.FromString(rows[(first_key, "age_band")]).string_val == "65+"


def _with_gaps(frame: pd.DataFrame, keep: tuple[str, ...]) -> pd.DataFrame:
    """Every other feature value of the first rows missing, as NaN, NaT or None by type, and
    one customer twice (the later row must win)."""
    frame = frame.copy()
    for k, column in enumerate(c for c in frame.columns if c not in keep):
        frame.loc[frame.index[k % 5 :: 7], column] = None
    return pd.concat([frame, frame.iloc[[2]].assign(customer_id=frame["customer_id"].iloc[0])], ignore_index=True)


@pytest.mark.parametrize("view_name", ["customer_transactions", "customer_behaviour", "customer_profile", "customer_predictions"])
def test_frame_writes_equal_feasts_writes(feature_world, tmp_path, view_name: str) -> None:
    """``write_frame`` stores the same rows and bytes as Feast's ``write_to_online_store`` route
    (its provider's conversion, then its own SQLite store), for every type the views hold,
    missing values and a duplicate customer included."""
    store = feature_world.store
    view = store.get_feature_view(view_name)
    if view_name == "customer_predictions":
        ids = pd.read_parquet(feature_world.paths.features / "customer_profile.parquet", columns=["customer_id"])["customer_id"].head(60)
        frame = pd.DataFrame({"customer_id": ids.to_numpy()[::-1]})
        rng = np.random.default_rng(3)
        for field in view.features:
            frame[field.name] = rng.random(len(frame)) if field.dtype.to_value_type().name == "DOUBLE" else rng.choice(["low", "mid", "top"], len(frame))
        frame["scored_at"] = pd.Timestamp("2026-10-31", tz="UTC")
    else:
        frame = pd.read_parquet(feature_world.paths.features / f"{view_name}.parquet").tail(60)
    frame = _with_gaps(frame, keep=("customer_id", view.batch_source.timestamp_field))
    tables = {}
    for name, online_store in (("lean", LeanSqliteOnlineStore()), ("feast", SqliteOnlineStore())):
        config = store.config.model_copy(deep=True)
        config.online_store.path = str(tmp_path / f"{name}.db")
        online_store.update(config, [], [view], [], [], partial=False)
        if name == "lean":
            online_store.write_frame(config, view, frame)
        else:
            online_store.online_write_batch(config, view, PassthroughProvider._prep_rows_to_write_for_ingestion(view, frame), None)
        tables[name] = sorted(_table_rows(config.online_store.path))
        online_store.teardown(config, [view], [])
    assert len(tables["lean"]) == (len(frame) - 1) * len(view.features)
    assert tables["lean"] == tables["feast"]
