"""The embedded online store: SQLite with one row per customer and feature view.

Feast's own SQLite store keeps one row per (customer, feature): 15 rows a customer for the
prediction view and up to 60 for a feature view, each an entry in three B-trees (the table,
its primary key and an index on the customer) with the customer's key repeated. Writing a
million customers' predictions spent 60 s in SQLite's upserts alone (82 s in all, measured).
Here a customer's values for a view are one row, as Redis keeps them in one hash:

- ``{table}_rows``: ``entity_key`` (Feast's serialized key, the primary key), ``layout``,
  ``feature_values`` (the values as one Feast ``RepeatedValue``: each the ``Value`` protobuf
  Feast's store keeps, missing ones empty), ``event_ts`` and ``created_ts`` (epoch seconds,
  as Feast's store keeps them);
- ``{table}_layouts``: which feature names the values are, in order (a view's schema can
  change between writes; each row says which one it was written with).

Reads return what Feast's SQLite store returns for the same writes (tested, for every view):
a write replaces the customer's row, and a write of some of a view's features keeps the rest,
as Feast's per-feature upsert does. ``write_frame`` serializes a frame a column at a time, not
a protobuf object per value. A store written by Feast's layout is converted on the next
``apply`` (``update``), so an upgrade keeps what was written.

Selected in ``store.repo_config`` with the custom-store ``type`` Feast documents.
Configurations this layout does not cover (vector and text search, the OpenAI-compatible
numeric column: they query Feast's own tables) go to Feast's own methods and tables.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
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
_FIELD_TAG = b"\x0a"  # RepeatedValue.val: field 1, length-delimited
_EMPTY = _FIELD_TAG + b"\x00"  # a missing value: an empty Value
_DOUBLE_HEAD = _FIELD_TAG + b"\x09\x29"  # 9 bytes: Value.double_val (field 5, fixed64) and 8 more


class StoreNotWritten(RuntimeError):
    """The online store has no table for a feature view: nothing was written to it yet."""


def _not_covered(config: RepoConfig) -> bool:
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
        return config.online_store.type == STORE_TYPE and not _not_covered(config)

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        """Create the tables of kept views (converting any written in Feast's layout), drop the rest."""
        if not self.covers(config):
            return super().update(config, tables_to_delete, tables_to_keep, entities_to_delete, entities_to_keep, partial)
        conn = self._get_conn(config)
        converted = False
        with conn:
            for view in tables_to_keep:
                rows, layouts = (_quote_id(name) for name in _tables(config, view))
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {rows} (entity_key BLOB PRIMARY KEY, layout INTEGER, "
                    "feature_values BLOB, event_ts INTEGER, created_ts INTEGER)"
                )
                conn.execute(f"CREATE TABLE IF NOT EXISTS {layouts} (id INTEGER PRIMARY KEY, names TEXT UNIQUE)")
                converted |= self._convert_feasts_table(config, conn, view)
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
        frame = frame.rename(columns=table.batch_source.field_mapping or {})
        join_keys = {entity.name: entity.dtype.to_value_type() for entity in table.entity_columns}
        keys = list(join_keys)
        # Key order: SQLite's B-trees take rows in key order several times faster (stable: the
        # last of duplicate keys still wins, as in Feast's row order).
        frame = frame.sort_values(keys, kind="stable") if len(keys) == 1 else frame
        batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
        key_values = {name: _proto_values(batch.column(name), kind) for name, kind in join_keys.items()}
        version = config.entity_key_serialization_version
        entity_keys = [
            serialize_entity_key(EntityKeyProto(join_keys=keys, entity_values=list(values)), entity_key_serialization_version=version)
            for values in zip(*key_values.values(), strict=True)
        ]
        names = tuple(feature.name for feature in table.features)
        columns = [_framed(batch.column(f.name), f.dtype.to_value_type()) for f in table.features]
        blobs = list(map(b"".join, zip(*columns, strict=True))) if columns else [b""] * len(frame)
        source = table.batch_source
        event_ts = _epochs(batch.column(source.timestamp_field))
        created_ts = _epochs(batch.column(source.created_timestamp_column)) if source.created_timestamp_column else [None] * len(frame)
        conn = self._get_conn(config)
        with conn:
            layout = _layout_id(conn, config, table, names)
            _upsert(conn, config, table, zip(entity_keys, [layout] * len(frame), blobs, event_ts, created_ts, strict=True))

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
        keys = [serialize_entity_key(entity_key, entity_key_serialization_version=version) for entity_key, *_ in data]
        view_names = {feature.name for feature in table.features}
        conn = self._get_conn(config)
        with conn:
            # A customer written with only some of the view's features keeps the others, as in
            # Feast's store, which upserts each (customer, feature) on its own.
            partial = [key for key, (_, values, _, _) in zip(keys, data, strict=True) if not view_names <= values.keys()]
            stored = {key: values for key, (_, values) in zip(partial, self._read_rows(config, conn, table, partial), strict=True)}
            layouts: dict[tuple[str, ...], int] = {}
            rows = []
            for key, (_, values, timestamp, created) in zip(keys, data, strict=True):
                if key in stored:  # a key written twice in one batch builds on the first write
                    values = stored[key] = {**(stored[key] or {}), **values}
                names = tuple(values)
                if names not in layouts:
                    layouts[names] = _layout_id(conn, config, table, names)
                created_ts = adapt_datetime_epoch(to_naive_utc(created)) if created is not None else None
                blob = RepeatedValue(val=list(values.values())).SerializeToString()
                rows.append((key, layouts[names], blob, adapt_datetime_epoch(to_naive_utc(timestamp)), created_ts))
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
        return self._read_rows(config, self._get_conn(config), table, keys)

    def _read_rows(
        self, config: RepoConfig, conn: sqlite3.Connection, table: FeatureView, keys: list[bytes]
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        rows_table, layouts_table = (_quote_id(name) for name in _tables(config, table))
        try:
            names = {layout: tuple(json.loads(text)) for layout, text in conn.execute(f"SELECT id, names FROM {layouts_table}")}
            found = {
                key: (layout, blob, epoch)
                for key, layout, blob, epoch in conn.execute(
                    f"SELECT entity_key, layout, feature_values, event_ts FROM {rows_table} "
                    f"WHERE entity_key IN ({','.join('?' * len(keys))})",
                    keys,
                )
            }
        except sqlite3.OperationalError as error:
            if "no such table" not in str(error):
                raise
            raise StoreNotWritten(
                f"the online store {self._get_db_path(config)} has no table for feature view '{table.name}': "
                "write it first (`make train`, or `indicators features`)"
            ) from error
        result: list[tuple[datetime | None, dict[str, ValueProto] | None]] = []
        for key in keys:
            if key not in found:
                result.append((None, None))
                continue
            layout, blob, epoch = found[key]
            # The timestamp as Feast's converter reads it (naive local time), then marked UTC.
            when = datetime.fromtimestamp(epoch).replace(tzinfo=UTC)
            result.append((when, dict(zip(names[layout], RepeatedValue.FromString(blob).val, strict=True))))
        return result

    def _convert_feasts_table(self, config: RepoConfig, conn: sqlite3.Connection, view: FeatureView) -> bool:
        """Move what a store in Feast's layout holds for ``view`` into this layout, then drop
        Feast's table. False if there was none."""
        legacy = _feasts_table(config, view)
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (legacy,)).fetchall():
            return False
        stored = conn.execute(
            "SELECT entity_key, feature_name, value, CAST(event_ts AS INTEGER), CAST(created_ts AS INTEGER) "
            f"FROM {_quote_id(legacy)} ORDER BY entity_key, feature_name"  # the order Feast reads them in
        )
        layouts: dict[tuple[str, ...], int] = {}
        rows = []
        for key, group in groupby(stored, key=lambda row: row[0]):
            features = list(group)
            values = {name: blob for _, name, blob, _, _ in features}
            names = tuple(values)
            if names not in layouts:
                layouts[names] = _layout_id(conn, config, view, names)
            _, _, _, event_ts, created_ts = features[-1]  # the time Feast reads: its last row's
            rows.append((key, layouts[names], b"".join(map(_frame, values.values())), event_ts, created_ts))
            if len(rows) == CONVERT_ROWS:
                _upsert(conn, config, view, rows)
                rows = []
        _upsert(conn, config, view, rows)
        conn.execute(f"DROP TABLE {_quote_id(legacy)}")
        return True


def _tables(config: RepoConfig, view: FeatureView) -> tuple[str, str]:
    """The names of the view's rows and layouts tables."""
    base = _feasts_table(config, view)
    return f"{base}_rows", f"{base}_layouts"


def _feasts_table(config: RepoConfig, view: FeatureView) -> str:
    """The name of the view's table in Feast's own layout."""
    return _table_id(config.project, view, config.registry.enable_online_feature_view_versioning)


def _layout_id(conn: sqlite3.Connection, config: RepoConfig, view: FeatureView, names: tuple[str, ...]) -> int:
    layouts = _quote_id(_tables(config, view)[1])
    text = json.dumps(names)
    conn.execute(f"INSERT OR IGNORE INTO {layouts} (names) VALUES (?)", (text,))
    return conn.execute(f"SELECT id FROM {layouts} WHERE names = ?", (text,)).fetchone()[0]


def _upsert(conn: sqlite3.Connection, config: RepoConfig, view: FeatureView, rows: Iterable[tuple]) -> None:
    table = _quote_id(_tables(config, view)[0])
    conn.executemany(
        f"INSERT INTO {table} (entity_key, layout, feature_values, event_ts, created_ts) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(entity_key) DO UPDATE SET layout = excluded.layout, feature_values = excluded.feature_values, "
        "event_ts = excluded.event_ts, created_ts = excluded.created_ts",
        rows,
    )


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
        data = packed.tobytes()
        framed = [data[i : i + 11] for i in range(0, len(data), 11)]
        for i in np.flatnonzero(np.isnan(values)).tolist():
            framed[i] = _EMPTY
        return framed
    if values.dtype.kind == "f":  # other floats: no de-duplication (it would merge 0.0 and -0.0)
        return [_frame(proto.SerializeToString()) for proto in python_values_to_proto_values(values, kind)]
    codes, distinct = pd.factorize(values)  # missing values get code -1
    converted = python_values_to_proto_values(np.asarray(distinct, dtype=values.dtype), kind)
    missing = np.flatnonzero(codes < 0)
    if len(missing):  # converted as it is in the column (None, NaN or NaT): blobs[-1]
        converted += python_values_to_proto_values(values[missing[:1]], kind)
    blobs = [_frame(proto.SerializeToString()) for proto in converted]
    return [blobs[code] for code in codes.tolist()]


def _frame(serialized: bytes) -> bytes:
    return _FIELD_TAG + _varint(len(serialized)) + serialized


def _epochs(column: pa.Array) -> list[int]:
    """Timestamps as Feast's SQLite store keeps them (epoch seconds), converted once per distinct value."""
    codes, distinct = pd.factorize(pd.to_datetime(column.to_numpy(zero_copy_only=False)), use_na_sentinel=False)
    epochs = [adapt_datetime_epoch(to_naive_utc(_coerce_datetime(ts))) for ts in distinct]
    return [epochs[code] for code in codes.tolist()]
