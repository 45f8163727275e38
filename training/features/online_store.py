"""Feast's SQLite online store with leaner writes and reads; same tables, same results.

- **Write**: Feast's ``online_write_batch`` runs one upsert per (customer, feature): 0.13 ms per
  customer of the 15-value prediction view, more than half of a batch write (measured on 17,550
  customers). Here the same rows go through one ``executemany``.
- **Read**: Feast converts the timestamp of every row it reads (one per feature) and keeps the
  last; here it is converted once per customer: 9 of 43 ms when reading 100 profiles.

Selected in ``store.repo_config`` with the custom-store ``type`` Feast documents.
Configurations these methods do not cover (vector search, the OpenAI-compatible numeric
column) go to Feast's own methods.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from feast import FeatureView, RepoConfig
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.infra.online_stores.sqlite import (
    SqliteOnlineStore,
    SqliteOnlineStoreConfig,
    _quote_id,
    _table_id,
    adapt_datetime_epoch,
)
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.utils import to_naive_utc

STORE_TYPE = "training.features.online_store.LeanSqliteOnlineStore"


def _not_covered(config: RepoConfig) -> bool:
    settings = config.online_store
    return bool(settings.vector_enabled or getattr(settings, "enable_openai_compatible_store", False))


class LeanSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    type: Literal["training.features.online_store.LeanSqliteOnlineStore"] = STORE_TYPE  # type: ignore[assignment]


class LeanSqliteOnlineStore(SqliteOnlineStore):
    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        if _not_covered(config):
            return super().online_write_batch(config, table, data, progress)
        settings = config.online_store
        table_name = _quote_id(_table_id(config.project, table, config.registry.enable_online_feature_view_versioning))
        version = config.entity_key_serialization_version
        # value_text only serves Feast's text search; timestamps are stored as epoch seconds,
        # exactly as Feast's adapter stores them, converted once per customer, not per value.
        with_text = settings.text_search_enabled
        rows = []
        for entity_key, values, timestamp, created in data:
            key = serialize_entity_key(entity_key, entity_key_serialization_version=version)
            event_ts = adapt_datetime_epoch(to_naive_utc(timestamp))
            created_ts = adapt_datetime_epoch(to_naive_utc(created)) if created is not None else None
            for name, value in values.items():
                text = extract_text_and_num(value, False)[0] if with_text else None
                rows.append((key, name, value.SerializeToString(), text, event_ts, created_ts))
        conn = self._get_conn(config)
        with conn:
            conn.executemany(
                f"INSERT INTO {table_name} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
                "value = excluded.value, value_text = excluded.value_text, "
                "event_ts = excluded.event_ts, created_ts = excluded.created_ts",
                rows,
            )
        if progress:
            progress(len(data))

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        if _not_covered(config):
            return super().online_read(config, table, entity_keys, requested_features)
        table_name = _quote_id(_table_id(config.project, table, config.registry.enable_online_feature_view_versioning))
        version = config.entity_key_serialization_version
        keys = [serialize_entity_key(key, entity_key_serialization_version=version) for key in entity_keys]
        rows = self._get_conn(config).execute(
            # CAST: the raw epoch seconds, not Feast's per-row datetime conversion
            f"SELECT entity_key, feature_name, value, CAST(event_ts AS INTEGER) FROM {table_name} "
            f"WHERE entity_key IN ({','.join('?' * len(keys))})",
            keys,
        ).fetchall()
        values: dict[bytes, dict[str, ValueProto]] = {}
        epochs: dict[bytes, int] = {}  # the last row's, as Feast keeps it
        for key, name, blob, epoch in rows:
            values.setdefault(key, {})[name] = ValueProto.FromString(blob)
            epochs[key] = epoch
        # The timestamp as Feast's converter reads it (naive local time), then marked UTC.
        return [
            (datetime.fromtimestamp(epochs[key]).replace(tzinfo=UTC), values[key]) if key in values else (None, None)
            for key in keys
        ]
