"""The embedded online store (one row per customer and view) reads back exactly what Feast's
own SQLite store reads back after the same writes, and converts a store in Feast's layout."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest
from feast.infra.online_stores.sqlite import SqliteOnlineStore
from feast.infra.passthrough_provider import PassthroughProvider
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from training.features.online_store import LeanSqliteOnlineStore, StoreNotWritten


def _keys(ids: list[str]) -> list[EntityKey]:
    return [EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=cid)]) for cid in ids]


def _config(store, path) -> object:
    config = store.config.model_copy(deep=True)
    config.online_store.path = str(path)
    return config


def _tables(path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))


def test_the_store_is_feasts_configured_online_store(feature_world) -> None:
    assert isinstance(feature_world.store._get_provider().online_store, LeanSqliteOnlineStore)


def test_batch_writes_read_as_feasts_do(feature_world, tmp_path) -> None:
    """Feast's ``online_write_batch``, then a second write of one feature of one customer: both
    stores read back the same values and times; the unwritten features are kept."""
    store = feature_world.store
    view = store.get_feature_view("customer_profile")
    ts = pd.Timestamp("2026-01-02T03:04:05Z").to_pydatetime()
    data = [
        (key, {"age_band": Value(string_val=band), "email_opt_in": Value(bool_val=True), "region": Value()}, ts, None)
        for key, band in zip(_keys(["C1", "C2", "C3"]), ["18-24", "25-34", "35-44"], strict=True)
    ]
    rewritten = [(data[0][0], {"age_band": Value(string_val="65+")}, ts, None)]
    reads = {}
    for name, online_store in (("lean", LeanSqliteOnlineStore()), ("feast", SqliteOnlineStore())):
        config = _config(store, tmp_path / f"{name}.db")
        online_store.update(config, [], [view], [], [], partial=False)
        online_store.online_write_batch(config, view, data, progress=None)
        online_store.online_write_batch(config, view, rewritten, progress=None)
        reads[name] = online_store.online_read(config, view, _keys(["C1", "C2", "C3", "C4"]))
        online_store.teardown(config, [view], [])
    assert reads["lean"] == reads["feast"]
    first = reads["lean"][0][1]
    assert first["age_band"].string_val == "65+" and first["email_opt_in"].bool_val is True
    assert reads["lean"][3] == (None, None)


def _with_gaps(frame: pd.DataFrame, keep: tuple[str, ...]) -> pd.DataFrame:
    """Every other feature value of the first rows missing, as NaN, NaT or None by type, and
    one customer twice (the later row must win)."""
    frame = frame.copy()
    for k, column in enumerate(c for c in frame.columns if c not in keep):
        frame.loc[frame.index[k % 5 :: 7], column] = None
    return pd.concat([frame, frame.iloc[[2]].assign(customer_id=frame["customer_id"].iloc[0])], ignore_index=True)


def _view_frame(feature_world, view) -> pd.DataFrame:
    if view.name != "customer_predictions":
        return pd.read_parquet(feature_world.paths.features / f"{view.name}.parquet").tail(60)
    ids = pd.read_parquet(feature_world.paths.features / "customer_profile.parquet", columns=["customer_id"])["customer_id"].head(60)
    frame = pd.DataFrame({"customer_id": ids.to_numpy()[::-1]})
    rng = np.random.default_rng(3)
    for field in view.features:
        if field.dtype.to_value_type().name == "DOUBLE":
            frame[field.name] = rng.random(len(frame)) * rng.choice([0.0, -1.0, 1e6], len(frame))  # zeros, -0.0 too
        else:
            frame[field.name] = rng.choice(["low", "mid", "top" * 50], len(frame))  # one longer than 127 bytes
    frame["scored_at"] = pd.Timestamp("2026-10-31", tz="UTC")
    return frame


@pytest.mark.parametrize("view_name", ["customer_transactions", "customer_behaviour", "customer_profile", "customer_predictions"])
def test_frame_writes_read_as_feasts_writes(feature_world, tmp_path, view_name: str) -> None:
    """``write_frame`` reads back what Feast's ``write_to_online_store`` route (its provider's
    conversion, then its own SQLite store) reads back, for every type the views hold, missing
    values, zeros and a duplicate customer included; over a second write too."""
    store = feature_world.store
    view = store.get_feature_view(view_name)
    frame = _with_gaps(_view_frame(feature_world, view), keep=("customer_id", view.batch_source.timestamp_field))
    second = frame.iloc[::-1].assign(customer_id=frame["customer_id"].to_numpy())  # other values, same customers
    keys = _keys([*frame["customer_id"].astype(str), "NO-SUCH-CUSTOMER"])
    reads = {}
    for name, online_store in (("lean", LeanSqliteOnlineStore()), ("feast", SqliteOnlineStore())):
        config = _config(store, tmp_path / f"{name}.db")
        online_store.update(config, [], [view], [], [], partial=False)
        for written in (frame, second):
            if name == "lean":
                online_store.write_frame(config, view, written)
            else:
                online_store.online_write_batch(config, view, PassthroughProvider._prep_rows_to_write_for_ingestion(view, written), None)
            reads.setdefault(name, []).append(online_store.online_read(config, view, keys))
        online_store.teardown(config, [view], [])
    assert reads["lean"] == reads["feast"]
    first_read = reads["lean"][0]
    assert first_read[-1] == (None, None)
    assert all(len(values) == len(view.features) for _, values in first_read[:-1])
    assert reads["lean"][0] != reads["lean"][1]


def test_a_store_in_feasts_layout_is_converted_on_apply(feature_world, tmp_path) -> None:
    """A store written by Feast's own SQLite store reads the same after this store's ``update``,
    and Feast's table is gone."""
    store = feature_world.store
    view = store.get_feature_view("customer_behaviour")
    frame = _with_gaps(_view_frame(feature_world, view), keep=("customer_id", view.batch_source.timestamp_field))
    keys = _keys([*frame["customer_id"].astype(str), "NO-SUCH-CUSTOMER"])
    config = _config(store, tmp_path / "old.db")
    feasts = SqliteOnlineStore()
    feasts.update(config, [], [view], [], [], partial=False)
    feasts.online_write_batch(config, view, PassthroughProvider._prep_rows_to_write_for_ingestion(view, frame), None)
    before = feasts.online_read(config, view, keys)
    lean = LeanSqliteOnlineStore()
    lean.update(config, [], [view], [], [], partial=False)
    assert lean.online_read(config, view, keys) == before
    assert all("_rows" in name or "_layouts" in name for name in _tables(tmp_path / "old.db"))


def test_reading_a_view_never_written_says_what_to_run(feature_world, tmp_path) -> None:
    config = _config(feature_world.store, tmp_path / "empty.db")
    view = feature_world.store.get_feature_view("customer_profile")
    with pytest.raises(StoreNotWritten, match="customer_profile.*make train"):
        LeanSqliteOnlineStore().online_read(config, view, _keys(["C1"]))
