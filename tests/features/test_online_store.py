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


def _table_names(path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))


def test_the_store_is_feasts_configured_online_store(feature_world) -> None:
    assert isinstance(feature_world.store._get_provider().online_store, LeanSqliteOnlineStore)


def test_batch_writes_read_as_feasts_do(feature_world, tmp_path) -> None:
    """Feast's ``online_write_batch``, then later writes of some features (the same customer
    twice in one batch, and an empty write): both stores read back the same values and times;
    unwritten features keep their values."""
    store = feature_world.store
    view = store.get_feature_view("customer_profile")
    day = [pd.Timestamp(f"2026-01-0{d}T03:04:05Z").to_pydatetime() for d in (1, 2, 3, 4)]
    c1, c2, c3, c4 = _keys(["C1", "C2", "C3", "C4"])
    writes = [
        [
            (key, {"age_band": Value(string_val=band), "email_opt_in": Value(bool_val=True), "region": Value()}, day[0], None)
            for key, band in ((c1, "18-24"), (c2, "25-34"), (c3, "35-44"))
        ],
        [(c1, {"age_band": Value(string_val="65+")}, day[1], None), (c4, {}, day[1], None)],
        [(c2, {"region": Value(string_val="north")}, day[2], day[2]), (c2, {"email_opt_in": Value(bool_val=False)}, day[3], None)],
    ]
    reads = {}
    for name, online_store in (("lean", LeanSqliteOnlineStore()), ("feast", SqliteOnlineStore())):
        config = _config(store, tmp_path / f"{name}.db")
        online_store.update(config, [], [view], [], [], partial=False)
        for data in writes:
            online_store.online_write_batch(config, view, data, progress=None)
            reads.setdefault(name, []).append(online_store.online_read(config, view, [c1, c2, c3, c4]))
        online_store.teardown(config, [view], [])
    assert reads["lean"] == reads["feast"]
    last = reads["lean"][-1]
    assert last[0][1]["age_band"].string_val == "65+" and last[0][1]["email_opt_in"].bool_val is True
    assert last[0][0] == day[0]  # Feast's time: its last-created row's (region), not rewritten
    assert last[1][1]["region"].string_val == "north" and last[1][1]["email_opt_in"].bool_val is False
    assert last[1][0] == day[2]
    assert last[3] == (None, None)


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
            values = rng.random(len(frame)) * rng.choice([-1.0, 1e6], len(frame))
            values[[0, 5, 11, 17]] = [0.0, -0.0, np.inf, -np.inf]
            frame[field.name] = values
        else:
            frame[field.name] = rng.choice(["low", "mid", "top" * 50], len(frame))  # one longer than 127 bytes
    frame["scored_at"] = pd.Timestamp("2026-10-31", tz="UTC")
    return frame


@pytest.mark.parametrize("view_name", ["customer_transactions", "customer_behaviour", "customer_profile", "customer_predictions"])
def test_frame_writes_read_as_feasts_writes(feature_world, tmp_path, view_name: str) -> None:
    """``write_frame`` (and ``write_rows``, the same rows as dicts, a few at a time) reads back what Feast's
    ``write_to_online_store`` route (its provider's conversion, then its own SQLite store)
    reads back, for every type the views hold, missing values, zeros and a duplicate customer
    included; over a second write too."""
    store = feature_world.store
    view = store.get_feature_view(view_name)
    frame = _with_gaps(_view_frame(feature_world, view), keep=("customer_id", view.batch_source.timestamp_field))
    second = frame.iloc[::-1].assign(customer_id=frame["customer_id"].to_numpy())  # other values, same customers
    keys = _keys([*frame["customer_id"].astype(str), "NO-SUCH-CUSTOMER"])
    reads = {}
    for name, online_store in (("lean", LeanSqliteOnlineStore()), ("rows", LeanSqliteOnlineStore()), ("feast", SqliteOnlineStore())):
        config = _config(store, tmp_path / f"{name}.db")
        online_store.update(config, [], [view], [], [], partial=False)
        for written in (frame, second):
            if name == "lean":
                online_store.write_frame(config, view, written)
            elif name == "rows":
                rows = written.astype(object).where(written.notna(), None).to_dict("records")
                for start in range(0, len(rows), 7):  # as events write: a few rows at a time
                    online_store.write_rows(config, view, rows[start : start + 7])
            else:
                online_store.online_write_batch(config, view, PassthroughProvider._prep_rows_to_write_for_ingestion(view, written), None)
            reads.setdefault(name, []).append(online_store.online_read(config, view, keys))
        online_store.teardown(config, [view], [])
    assert reads["lean"] == reads["feast"]
    assert reads["rows"] == reads["feast"]
    first_read = reads["lean"][0]
    assert first_read[-1] == (None, None)
    assert all(len(values) == len(view.features) for _, values in first_read[:-1])
    assert reads["lean"][0] != reads["lean"][1]


def test_a_store_in_feasts_layout_is_converted_on_apply(feature_world, tmp_path) -> None:
    """A store written by Feast's own SQLite store, a later write of some features included,
    reads the same after this store's ``update``, and Feast's table is gone."""
    store = feature_world.store
    view = store.get_feature_view("customer_behaviour")
    frame = _with_gaps(_view_frame(feature_world, view), keep=("customer_id", view.batch_source.timestamp_field))
    keys = _keys([*frame["customer_id"].astype(str), "NO-SUCH-CUSTOMER"])
    config = _config(store, tmp_path / "old.db")
    feasts = SqliteOnlineStore()
    feasts.update(config, [], [view], [], [], partial=False)
    feasts.online_write_batch(config, view, PassthroughProvider._prep_rows_to_write_for_ingestion(view, frame), None)
    later = pd.Timestamp("2030-01-01", tz="UTC").to_pydatetime()
    first_feature, last_feature = view.features[0].name, view.features[-1].name
    feasts.online_write_batch(config, view, [(keys[0], {first_feature: Value(double_val=1.5)}, later, None),
                                             (keys[1], {last_feature: Value(double_val=2.5)}, later, None)], None)
    before = feasts.online_read(config, view, keys)
    assert before[0][0] != before[1][0] == later
    lean = LeanSqliteOnlineStore()
    lean.update(config, [], [view], [], [], partial=False)
    assert lean.online_read(config, view, keys) == before
    assert all(name.endswith(("__rows", "__layouts")) for name in _table_names(tmp_path / "old.db"))


def test_a_view_never_applied_says_what_to_run(feature_world, tmp_path) -> None:
    config = _config(feature_world.store, tmp_path / "empty.db")
    view = feature_world.store.get_feature_view("customer_profile")
    with pytest.raises(StoreNotWritten, match="customer_profile.*make train"):
        LeanSqliteOnlineStore().online_read(config, view, _keys(["C1"]))
    with pytest.raises(StoreNotWritten, match="customer_profile.*make train"):
        LeanSqliteOnlineStore().write_frame(config, view, _view_frame(feature_world, view))


def test_a_customer_in_both_layouts_keeps_the_newer_row(feature_world, tmp_path) -> None:
    """Feast's own store can write the file after an apply (the `feast` CLI with its store
    type, say): converting then keeps, per customer, whichever row is newer."""
    store = feature_world.store
    view = store.get_feature_view("customer_profile")
    config = _config(store, tmp_path / "both.db")
    day = [pd.Timestamp(f"2026-02-0{d}", tz="UTC").to_pydatetime() for d in (1, 2, 3)]
    x, y = _keys(["X", "Y"])

    def row(key, band, when):
        return (key, {"age_band": Value(string_val=band), "email_opt_in": Value(bool_val=True)}, when, None)

    lean, feasts = LeanSqliteOnlineStore(), SqliteOnlineStore()
    lean.update(config, [], [view], [], [], partial=False)
    lean.online_write_batch(config, view, [row(x, "lean", day[1]), row(y, "lean", day[0])], None)
    feasts.update(config, [], [view], [], [], partial=False)
    feasts.online_write_batch(config, view, [row(x, "feast", day[0]), row(y, "feast", day[2])], None)
    lean.update(config, [], [view], [], [], partial=False)
    read = lean.online_read(config, view, [x, y])
    assert [values["age_band"].string_val for _, values in read] == ["lean", "feast"]
    assert [when for when, _ in read] == [day[1], day[2]]


def test_wal_is_set_once_the_file_is_free(feature_world, tmp_path) -> None:
    """The switch to WAL needs the file to itself: with another reader in it, the store works
    on and switches on a later call."""
    store = feature_world.store
    view = store.get_feature_view("customer_profile")
    config = _config(store, tmp_path / "shared.db")
    feasts = SqliteOnlineStore()
    feasts.update(config, [], [view], [], [], partial=False)
    other = sqlite3.connect(config.online_store.path)
    other.execute("BEGIN")
    other.execute("SELECT count(*) FROM sqlite_master").fetchall()  # holds a read lock
    lean = LeanSqliteOnlineStore()
    lean._get_conn(config)  # the store's first connection: the switch waits out its timeout, then gives up
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    other.rollback()
    lean.update(config, [], [view], [], [], partial=False)
    assert lean.online_read(config, view, _keys(["C1"])) == [(None, None)]
    other.close()
    assert sqlite3.connect(config.online_store.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reads_go_on_while_a_write_is_open(feature_world, tmp_path) -> None:
    """The endpoint reads while a batch writes: another connection holding the write lock
    (an exclusive transaction) does not block a read (it did in Feast's journal mode)."""
    store = feature_world.store
    view = store.get_feature_view("customer_predictions")
    config = _config(store, tmp_path / "busy.db")
    writer_store, reader_store = LeanSqliteOnlineStore(), LeanSqliteOnlineStore()
    writer_store.update(config, [], [view], [], [], partial=False)
    writer_store.write_frame(config, view, _view_frame(feature_world, view))
    ids = _view_frame(feature_world, view)["customer_id"].astype(str).tolist()[:3]
    writer = sqlite3.connect(config.online_store.path, timeout=0.1)
    try:
        writer.execute("BEGIN EXCLUSIVE")
        rows_table = next(name for name in _table_names(config.online_store.path) if name.endswith("__rows"))
        writer.execute(f'DELETE FROM "{rows_table}"')  # not committed
        reader_store._get_conn(config).execute("PRAGMA busy_timeout = 100")
        read = reader_store.online_read(config, view, _keys(ids))
    finally:
        writer.rollback()
        writer.close()
    assert all(values for _, values in read)


def test_a_registry_write_that_fails_leaves_the_previous_registry_readable(feature_world, monkeypatch) -> None:
    """Feast's file store truncates the registry before writing it (a process killed between
    left it empty); ours replaces it whole, so a failed write leaves the last one in place."""
    import os

    from training.features import registry_file

    store = feature_world.store
    registry = store._registry
    assert isinstance(registry._registry_store, registry_file.AtomicFileRegistryStore)
    path = registry._registry_store._filepath
    before = path.read_bytes()

    def killed(*_args):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        registry._registry_store.update_registry_proto(registry._get_registry_proto(project=None))
    monkeypatch.undo()
    assert path.read_bytes() == before and not list(path.parent.glob("*.partial"))
