"""The embedded online store: SQLite with one row per customer and feature view.

Feast's own SQLite store keeps one row per (customer, feature): 15 rows a customer for the
prediction view and up to 60 for a feature view, each an entry in three B-trees (the table,
its primary key and an index on the customer) with the customer's key repeated. Writing a
million customers' predictions spent 60 s in SQLite's upserts alone (82 s in all, measured);
here it takes about 15 s. A customer's values for a view are one row, as Redis keeps them in
one hash:

- ``{table}__rows``: ``entity_key`` (Feast's serialized key, the primary key), ``layout``,
  ``feature_values`` (the values as one Feast ``RepeatedValue``: each the ``Value`` protobuf
  Feast's store keeps, missing ones empty), ``event_ts`` and ``created_ts`` (epoch seconds,
  as Feast's store keeps them);
- ``{table}__layouts``: which feature names the values are, in order (a view's schema can
  change between writes; each row says which one it was written with).

Reads return what Feast's SQLite store returns after the same writes (tested for every view,
partial writes and mixed times included), with one difference: a write of all of a view's
features replaces the customer's row, in the view's order. Features since dropped from the
view are gone (Feast's store keeps them, though ``get_online_features`` never returns them),
and the row's time is that write's (Feast's is its last-created feature row's, which partial
writes after such changes can tell apart). A write of some features keeps the others, as
Feast's per-feature upsert does. ``write_frame``
serializes a frame a column at a time, not a protobuf object per value.

The database runs in WAL mode, so the endpoint keeps reading while a batch writes, with
``synchronous=NORMAL``: what it holds is derived from the raw log, rebuilt by ``indicators features``. A store in
Feast's layout is converted on the next ``apply`` (``update``), in one transaction.

Selected in ``store.repo_config`` with the custom-store ``type`` Feast documents.
Configurations that query Feast's own tables (vector and text search, the OpenAI-compatible
numeric column) go to Feast's own methods and tables, which this layout leaves empty.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import groupby
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from feast import Entity, FeatureView, RepoConfig, ValueType
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import (
    SqliteOnlineStore,
    SqliteOnlineStoreConfig,
    _quote_id,
    _table_id,
    adapt_datetime_epoch,
)
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import RepeatedValue
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import python_values_to_proto_values
from feast.utils import _coerce_datetime, to_naive_utc

STORE_TYPE = "training.features.online_store.LeanSqliteOnlineStore"
CONVERT_ROWS = 50_000  # customers per write when converting Feast's layout: bounds memory
READ_KEYS = 10_000  # keys per SELECT: SQLite caps the variables of one statement (32,766 by default)
_FIELD_TAG = b"\x0a"  # RepeatedValue.val: field 1, length-delimited
_EMPTY = _FIELD_TAG + b"\x00"  # a missing value: an empty Value
_DOUBLE_HEAD = _FIELD_TAG + b"\x09\x29"  # 9 bytes: Value.double_val (field 5, fixed64) and 8 more


class StoreNotWritten(RuntimeError):
    """The online store has no table for a feature view: the repo was never applied to it."""


@dataclass(frozen=True)
class EncodedRows:
    """A view's rows as this store keeps them, ready to write (``write_encoded``)."""

    view: FeatureView
    entity_keys: list[bytes]
    blobs: list[bytes]
    event_ts: list[int]
    created_ts: list[int | None]

    def at(self, epoch_seconds: int) -> EncodedRows:
        """The same rows, written at another time."""
        return replace(self, event_ts=[epoch_seconds] * len(self.entity_keys))

    def subset(self, positions: Sequence[int]) -> EncodedRows:
        return replace(self, entity_keys=[self.entity_keys[i] for i in positions], blobs=[self.blobs[i] for i in positions],
                       event_ts=[self.event_ts[i] for i in positions], created_ts=[self.created_ts[i] for i in positions])


def _uses_feasts_tables(config: RepoConfig) -> bool:
    settings = config.online_store
    return bool(
        settings.vector_enabled or settings.text_search_enabled or getattr(settings, "enable_openai_compatible_store", False)
    )


class LeanSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    type: Literal["training.features.online_store.LeanSqliteOnlineStore"] = STORE_TYPE  # type: ignore[assignment]


class LeanSqliteOnlineStore(SqliteOnlineStore):
    @staticmethod
    def covers(config: RepoConfig) -> bool:
        """True where this store's layout is used (else Feast's own methods and tables are)."""
        return config.online_store.type == STORE_TYPE and not _uses_feasts_tables(config)

    _wal_connection: sqlite3.Connection | None = None  # the connection that saw WAL mode set

    def _get_conn(self, config: RepoConfig) -> sqlite3.Connection:
        conn = super()._get_conn(config)
        if self._wal_connection is not conn and self.covers(config) and not conn.in_transaction:
            # Readers go on while a batch writes. The first switch needs the file to itself:
            # while another process holds it, it fails and is tried again on the next call.
            try:
                if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal":
                    # A commit survives a killed process without waiting for the disk; a power
                    # cut may take the last ones, which the raw log and its journal rebuild.
                    conn.execute("PRAGMA synchronous = NORMAL")
                    self._wal_connection = conn
            except sqlite3.OperationalError as error:
                logging.getLogger(__name__).warning("online store not yet in WAL mode: %s", error)
        return conn

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        """Create the tables of kept views (converting any written in Feast's layout) and drop
        those of deleted views, in one transaction: readers see the store before or after."""
        if not self.covers(config):
            return super().update(config, tables_to_delete, tables_to_keep, entities_to_delete, entities_to_keep, partial)
        conn = self._get_conn(config)
        converted = 0
        with conn:
            conn.execute("BEGIN")  # else each CREATE TABLE commits on its own
            for view in tables_to_keep:
                rows, layouts = (_quote_id(name) for name in _tables(config, view))
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {rows} (entity_key BLOB PRIMARY KEY, layout INTEGER, "
                    "feature_values BLOB, event_ts INTEGER, created_ts INTEGER)"
                )
                conn.execute(f"CREATE TABLE IF NOT EXISTS {layouts} (id INTEGER PRIMARY KEY, names TEXT UNIQUE)")
                converted += self._convert_feasts_table(config, conn, view)
            for view in tables_to_delete:
                for table in (*_tables(config, view), _feasts_table(config, view)):
                    conn.execute(f"DROP TABLE IF EXISTS {_quote_id(table)}")
        if converted:
            conn.execute("VACUUM")  # Feast's layout took several times the space: give it back
        return None

    def write_frame(self, config: RepoConfig, table: FeatureView, frame: pd.DataFrame) -> None:
        """Write a batch view's rows (join keys, features, timestamps): what Feast's
        ``write_to_online_store`` would store (tested), without a protobuf object per value.

        Unlike Feast's route it also writes a frame whose features are all empty (which clears
        what was stored for those customers).
        """
        if not self.covers(config):
            raise ValueError(f"write_frame does not cover this online store configuration: {config.online_store}")
        names = tuple(feature.name for feature in table.features)
        if not names or frame.empty:
            return
        frame = frame.rename(columns=table.batch_source.field_mapping or {})
        join_keys = {entity.name: entity.dtype.to_value_type() for entity in table.entity_columns}
        keys = list(join_keys)
        # Key order: SQLite's B-trees take rows in key order several times faster (stable: the
        # last of duplicate keys still wins, as in Feast's row order).
        frame = frame.sort_values(keys, kind="stable") if len(keys) == 1 else frame
        self._write_batch(config, table, pa.RecordBatch.from_pandas(frame, preserve_index=False))

    def _write_batch(self, config: RepoConfig, table: FeatureView, batch: pa.RecordBatch) -> None:
        self.write_encoded(config, [self._encode(config, table, batch)])

    def _encode(self, config: RepoConfig, table: FeatureView, batch: pa.RecordBatch) -> EncodedRows:
        join_keys = {entity.name: entity.dtype.to_value_type() for entity in table.entity_columns}
        keys = list(join_keys)
        key_values = {name: _proto_values(batch.column(name), kind) for name, kind in join_keys.items()}
        version = config.entity_key_serialization_version
        entity_keys = [
            serialize_entity_key(EntityKeyProto(join_keys=keys, entity_values=list(values)), entity_key_serialization_version=version)
            for values in zip(*key_values.values(), strict=True)
        ]
        columns = [_framed(batch.column(f.name), f.dtype.to_value_type()) for f in table.features]
        blobs = list(map(b"".join, zip(*columns, strict=True)))
        source = table.batch_source
        event_ts = _epochs(batch.column(source.timestamp_field))
        created_ts = _epochs(batch.column(source.created_timestamp_column)) if source.created_timestamp_column else [None] * batch.num_rows
        return EncodedRows(table, entity_keys, blobs, event_ts, created_ts)

    def encode_rows(self, config: RepoConfig, table: FeatureView, rows: Sequence[dict[str, Any]]) -> EncodedRows:
        """A few rows given as dicts (aware datetimes), encoded as ``write_frame`` would store
        them: the work of a write but the database's, to do before taking a lock."""
        if not self.covers(config):
            raise ValueError(f"encode_rows does not cover this online store configuration: {config.online_store}")
        return self._encode(config, table, pa.RecordBatch.from_pylist(list(rows), schema=_arrow_schema(table)))

    def write_encoded(self, config: RepoConfig, encoded: Sequence[EncodedRows]) -> None:
        """Write rows of one or more views in one transaction."""
        conn = self._get_conn(config)
        with conn:
            for rows in encoded:
                if not rows.entity_keys:
                    continue
                layout = _layout_id(conn, config, rows.view, tuple(f.name for f in rows.view.features))
                _upsert(conn, config, rows.view, zip(rows.entity_keys, [layout] * len(rows.entity_keys), rows.blobs,
                                                     rows.event_ts, rows.created_ts, strict=True))

    def write_rows(self, config: RepoConfig, table: FeatureView, rows: Sequence[dict[str, Any]]) -> None:
        """``write_frame`` for a few rows given as dicts (aware datetimes), as events arrive:
        an Arrow batch of a few rows costs a fraction of a pandas frame to build and convert."""
        if rows:
            self.write_encoded(config, [self.encode_rows(config, table, rows)])

    def delete_entity_keys(self, config: RepoConfig, views: Sequence[FeatureView], entity_keys: list[bytes]) -> int:
        """Delete these serialized entity keys from every view's rows (Feast's tables too); rows deleted."""
        conn = self._get_conn(config)
        deleted = 0
        with conn:
            for table in self._key_tables(conn, config, views):
                deleted += conn.executemany(f"DELETE FROM {table} WHERE entity_key = ?", [(k,) for k in entity_keys]).rowcount
        return deleted

    def count_entity_keys(self, config: RepoConfig, views: Sequence[FeatureView], entity_keys: list[bytes]) -> int:
        conn = self._get_conn(config)
        marks = ",".join("?" * len(entity_keys))
        return sum(
            conn.execute(f"SELECT count(*) FROM {table} WHERE entity_key IN ({marks})", entity_keys).fetchone()[0]
            for table in self._key_tables(conn, config, views)
        ) if entity_keys else 0

    @staticmethod
    def _key_tables(conn: sqlite3.Connection, config: RepoConfig, views: Sequence[FeatureView]) -> list[str]:
        """The quoted tables holding the views' rows, in this layout and Feast's."""
        existing = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        names = [name for view in views for name in (_tables(config, view)[0], _feasts_table(config, view))]
        return [_quote_id(name) for name in names if name in existing]

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        if not self.covers(config):
            return super().online_write_batch(config, table, data, progress)
        version = config.entity_key_serialization_version
        written = [row for row in data if row[1]]  # Feast writes nothing for a customer without values
        keys = [serialize_entity_key(entity_key, entity_key_serialization_version=version) for entity_key, *_ in written]
        view_names = {feature.name for feature in table.features}
        conn = self._get_conn(config)
        with conn:
            conn.execute("BEGIN IMMEDIATE")  # what is merged below cannot change meanwhile
            # A customer written with only some of the view's features keeps the others, as in
            # Feast's store, which upserts each (customer, feature) on its own.
            partial = {key for key, (_, values, _, _) in zip(keys, written, strict=True) if not view_names <= values.keys()}
            stored = self._fetch(config, conn, table, list(partial))
            layouts: dict[tuple[str, ...], int] = {}
            rows = []
            for key, (_, values, timestamp, created) in zip(keys, written, strict=True):
                times = (
                    adapt_datetime_epoch(to_naive_utc(timestamp)),
                    adapt_datetime_epoch(to_naive_utc(created)) if created is not None else None,
                )
                if key in stored:
                    kept_times, kept = stored[key]
                    merged = {**kept, **values}
                    if next(reversed(merged)) not in values:
                        # Feast reads a customer's time off its last-created feature row (the
                        # last in this order: new features go last); not rewritten, it keeps its time.
                        times = kept_times
                    values = merged
                if key in partial:
                    stored[key] = (times, values)  # a key written twice in one batch builds on the first write
                names = tuple(values)
                if names not in layouts:
                    layouts[names] = _layout_id(conn, config, table, names)
                rows.append((key, layouts[names], RepeatedValue(val=list(values.values())).SerializeToString(), *times))
            _upsert(conn, config, table, rows)
        if progress:
            progress(len(data))
        return None

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        if not self.covers(config):
            return super().online_read(config, table, entity_keys, requested_features)
        version = config.entity_key_serialization_version
        keys = [serialize_entity_key(key, entity_key_serialization_version=version) for key in entity_keys]
        found = self._fetch(config, self._get_conn(config), table, keys)
        # The time as Feast's converter reads it (naive local time), then marked UTC.
        return [
            (datetime.fromtimestamp(found[key][0][0]).replace(tzinfo=UTC), found[key][1]) if key in found else (None, None)
            for key in keys
        ]

    def _fetch(
        self, config: RepoConfig, conn: sqlite3.Connection, table: FeatureView, keys: list[bytes]
    ) -> dict[bytes, tuple[tuple[int, int | None], dict[str, ValueProto]]]:
        """The stored rows of ``keys``: their times (epoch seconds) and values by feature name.

        One statement joins each row to its layout, so a write committed meanwhile is seen
        whole or not at all.
        """
        rows_table, layouts_table = (_quote_id(name) for name in _tables(config, table))
        names: dict[str, tuple[str, ...]] = {}
        found: dict[bytes, tuple[tuple[int, int | None], dict[str, ValueProto]]] = {}
        try:
            for start in range(0, len(keys), READ_KEYS):
                chunk = keys[start : start + READ_KEYS]
                for key, text, blob, event_ts, created_ts in conn.execute(
                    f"SELECT r.entity_key, l.names, r.feature_values, r.event_ts, r.created_ts FROM {rows_table} AS r "
                    f"JOIN {layouts_table} AS l ON l.id = r.layout WHERE r.entity_key IN ({','.join('?' * len(chunk))})",
                    chunk,
                ):
                    if text not in names:
                        names[text] = tuple(json.loads(text))
                    found[key] = ((event_ts, created_ts), dict(zip(names[text], RepeatedValue.FromString(blob).val, strict=True)))
        except sqlite3.OperationalError as error:
            if "no such table" not in str(error):
                raise
            raise _not_written(config, table) from error
        return found

    def _convert_feasts_table(self, config: RepoConfig, conn: sqlite3.Connection, view: FeatureView) -> int:
        """Move what a table in Feast's layout holds for ``view`` into this layout, then drop
        it; returns the rows moved. A customer in both keeps the newer row (Feast's store can
        write the file after an apply, through the `feast` CLI with its own store type, say)."""
        legacy = _feasts_table(config, view)
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({_quote_id(legacy)})")}
        if not {"entity_key", "feature_name", "value", "event_ts"} <= columns:
            return 0
        # Feast reads a customer's rows in this order (its entity-key index) and takes the
        # time of the last.
        stored = conn.execute(
            "SELECT entity_key, feature_name, value, CAST(event_ts AS INTEGER), CAST(created_ts AS INTEGER) "
            f"FROM {_quote_id(legacy)} ORDER BY entity_key, rowid"
        )
        layouts: dict[tuple[str, ...], int] = {}
        rows: list[tuple] = []
        moved = 0
        for key, group in groupby(stored, key=lambda row: row[0]):
            features = list(group)
            values = {name: blob for _, name, blob, _, _ in features}
            names = tuple(values)
            if names not in layouts:
                layouts[names] = _layout_id(conn, config, view, names)
            _, _, _, event_ts, created_ts = features[-1]
            rows.append((key, layouts[names], b"".join(map(_frame, values.values())), event_ts, created_ts))
            moved += len(features)
            if len(rows) == CONVERT_ROWS:
                _upsert(conn, config, view, rows, newer_only=True)
                rows = []
        _upsert(conn, config, view, rows, newer_only=True)
        conn.execute(f"DROP TABLE {_quote_id(legacy)}")
        return moved


def _tables(config: RepoConfig, view: FeatureView) -> tuple[str, str]:
    """The names of the view's rows and layouts tables."""
    base = _feasts_table(config, view)
    return f"{base}__rows", f"{base}__layouts"


def _feasts_table(config: RepoConfig, view: FeatureView) -> str:
    """The name of the view's table in Feast's own layout."""
    return _table_id(config.project, view, config.registry.enable_online_feature_view_versioning)


def _not_written(config: RepoConfig, view: FeatureView) -> StoreNotWritten:
    return StoreNotWritten(
        f"the online store {config.online_store.path} has no table for feature view '{view.name}': apply the feature "
        "repo and write it (`make train` or `indicators features`; a store written in Feast's own layout is converted "
        "by any apply, `indicators score` included)"
    )


def _layout_id(conn: sqlite3.Connection, config: RepoConfig, view: FeatureView, names: tuple[str, ...]) -> int:
    """The id of this layout of ``view``'s features (added if new): every write asks first."""
    layouts = _quote_id(_tables(config, view)[1])
    text = json.dumps(names)
    try:
        conn.execute(f"INSERT OR IGNORE INTO {layouts} (names) VALUES (?)", (text,))
    except sqlite3.OperationalError as error:
        if "no such table" not in str(error):
            raise
        raise _not_written(config, view) from error
    return conn.execute(f"SELECT id FROM {layouts} WHERE names = ?", (text,)).fetchone()[0]


def _upsert(conn: sqlite3.Connection, config: RepoConfig, view: FeatureView, rows: Iterable[tuple], newer_only: bool = False) -> None:
    """Write whole rows; with ``newer_only`` a customer's stored row stays unless this one is as new."""
    table = _quote_id(_tables(config, view)[0])
    conn.executemany(
        f"INSERT INTO {table} (entity_key, layout, feature_values, event_ts, created_ts) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(entity_key) DO UPDATE SET layout = excluded.layout, feature_values = excluded.feature_values, "
        "event_ts = excluded.event_ts, created_ts = excluded.created_ts" + (f" WHERE excluded.event_ts >= {table}.event_ts" if newer_only else ""),
        rows,
    )


_ARROW_TYPES = {
    ValueType.STRING: pa.string(),
    ValueType.INT64: pa.int64(),
    ValueType.INT32: pa.int32(),
    ValueType.DOUBLE: pa.float64(),
    ValueType.FLOAT: pa.float32(),
    ValueType.BOOL: pa.bool_(),
    ValueType.UNIX_TIMESTAMP: pa.timestamp("us", tz="UTC"),
}


def _arrow_schema(view: FeatureView) -> pa.Schema:
    """A view's rows as Arrow columns: join keys, features and timestamps."""
    fields = [pa.field(e.name, _ARROW_TYPES[e.dtype.to_value_type()]) for e in view.entity_columns]
    fields += [pa.field(f.name, _ARROW_TYPES[f.dtype.to_value_type()]) for f in view.features]
    source = view.batch_source
    for name in (source.timestamp_field, source.created_timestamp_column):
        if name:
            fields.append(pa.field(name, pa.timestamp("us", tz="UTC")))
    return pa.schema(fields)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _proto_values(column: pa.Array, kind: ValueType) -> list[ValueProto]:
    """The column's values as Feast converts them (from the same NumPy view of the column)."""
    return python_values_to_proto_values(column.to_numpy(zero_copy_only=False), kind)


def _framed(column: pa.Array, kind: ValueType) -> list[bytes]:
    """Each value as an element of a serialized ``RepeatedValue``: the Value Feast's converter
    makes (missing values empty), behind its field tag and length."""
    values = column.to_numpy(zero_copy_only=False)
    if kind == ValueType.DOUBLE and values.dtype == np.float64:
        # Feast's rule for doubles: NaN is an empty Value, anything else its double_val (which,
        # in a oneof, is written even when zero): 11 bytes each, packed by NumPy.
        packed = np.empty(len(values), dtype=[("head", "S3"), ("value", "<f8")])
        packed["head"], packed["value"] = _DOUBLE_HEAD, values
        # Sliced from the bytes: a NumPy bytes view would strip trailing zeros (of 0.0, say).
        data, size = packed.tobytes(), packed.dtype.itemsize
        framed = [data[i : i + size] for i in range(0, len(data), size)]
        for i in np.flatnonzero(np.isnan(values)).tolist():
            framed[i] = _EMPTY
        return framed
    if values.dtype.kind == "f":  # other floats: no de-duplication (it would merge 0.0 and -0.0)
        return [_frame(proto.SerializeToString()) for proto in python_values_to_proto_values(values, kind)]
    if len(values) <= _FEW_ROWS:  # the rows of a batch of events: factorizing costs more than it saves
        return [_framed_value(values[i : i + 1], kind) for i in range(len(values))]
    codes, distinct = pd.factorize(values)  # missing values get code -1
    converted = python_values_to_proto_values(np.asarray(distinct, dtype=values.dtype), kind)
    missing = np.flatnonzero(codes < 0)
    if len(missing):  # converted as it is in the column (None, NaN or NaT): blobs[-1]
        converted += python_values_to_proto_values(values[missing[:1]], kind)
    blobs = [_frame(proto.SerializeToString()) for proto in converted]
    return [blobs[code] for code in codes.tolist()]


_FEW_ROWS = 64
_FRAMED: dict[tuple, bytes] = {}  # (kind, dtype, value) -> its framed Value, for _framed_value


def _framed_value(one: np.ndarray, kind: ValueType) -> bytes:
    """``_framed`` of a one-value array, remembered: the values of a few customers' rows repeat
    (counts, flags, categories) and Feast's converter costs tens of microseconds a call."""
    key = (kind, one.dtype.str, one[0])
    found = _FRAMED.get(key)
    if found is None:
        found = _frame(python_values_to_proto_values(one, kind)[0].SerializeToString())
        if len(_FRAMED) >= 100_000:
            _FRAMED.clear()
        if one[0] == one[0]:  # NaT and NaN never equal a key: not kept
            _FRAMED[key] = found
    return found


def _frame(serialized: bytes) -> bytes:
    return _FIELD_TAG + _varint(len(serialized)) + serialized


def _epochs(column: pa.Array) -> list[int]:
    """Timestamps as Feast's SQLite store keeps them (epoch seconds), converted once per distinct value."""
    if len(column) <= _FEW_ROWS:  # Python datetimes, as _coerce_datetime makes them
        return [adapt_datetime_epoch(to_naive_utc(ts)) for ts in column.to_pylist()]
    codes, distinct = pd.factorize(pd.to_datetime(column.to_numpy(zero_copy_only=False)), use_na_sentinel=False)
    epochs = [adapt_datetime_epoch(to_naive_utc(_coerce_datetime(ts))) for ts in distinct]
    return [epochs[code] for code in codes.tolist()]
