"""This project's faster paths into Feast, all in one place. Each stands in for a Feast call
and returns what that call returns (``tests/features/test_feast_switch.py`` runs both):

- the embedded online store (``online_store.LeanSqliteOnlineStore``: one row per customer
  and view) and its bulk writes, a frame or a few encoded rows at a time;
- the readers: request-time views computed from just their inputs (``ServiceReads``), Feast's
  online response and offline table converted a column at a time;
- what Feast has no call for: deleting and counting a customer's online rows (erasure).

``FeastSettings.accelerated`` (``INDICATORS_FEAST_ACCELERATED=false``) turns the first two
off: Feast's own SQLite store, reads and writes. ``store.py`` asks ``on(store)`` which to use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
from feast import FeatureStore, FeatureView, ValueType
from feast.infra.online_stores.sqlite import SqliteOnlineStore
from feast.online_response import OnlineResponse
from feast.type_map import NULL_TIMESTAMP_INT_VALUE, feast_value_type_to_python_type

from feature_repo.entities import customer
from training.features.online_store import EncodedRows, LeanSqliteOnlineStore


def on(store: FeatureStore) -> bool:
    """Whether this project's paths serve ``store`` (``store.IndicatorStore.accelerated``)."""
    return bool(getattr(store, "accelerated", False))


def lean_store(store: FeatureStore) -> LeanSqliteOnlineStore | None:
    """The embedded store in its one-row layout, if ``store`` writes to one."""
    online = store._get_provider().online_store
    return online if isinstance(online, LeanSqliteOnlineStore) and online.covers(store.config) else None


# --- writes ---------------------------------------------------------------------------------


def write_frame(store: FeatureStore, view_name: str, frame: pd.DataFrame) -> bool:
    """``write_to_online_store(view_name, frame)`` without Feast's per-value conversion, on the
    embedded store; False (nothing written) on any other."""
    lean = lean_store(store)
    if lean is None:
        return False
    lean.write_frame(store.config, store.get_feature_view(view_name), frame)
    return True


def encode_rows(store: FeatureStore, view: FeatureView, rows: list[dict[str, Any]]) -> EncodedRows | None:
    """``rows`` encoded as the embedded store keeps them, so the work is done before any lock
    is taken; None on any other store."""
    lean = lean_store(store)
    return None if lean is None else lean.encode_rows(store.config, view, rows)


def write_encoded(store: FeatureStore, encoded: list[EncodedRows]) -> None:
    """Rows of one or more views encoded by ``encode_rows``, in one transaction."""
    if encoded:
        store._get_provider().online_store.write_encoded(store.config, encoded)


# --- reads ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceReads:
    """How a feature service is read: stored views through Feast, request-time views by their
    own transformation (from ``feature_repo/``) over just the columns they take.

    Feast's route for a python-mode on-demand view converts the whole result, every column
    twice (short and long names), to Python objects first, which was close to half of a read,
    offline and online.
    """

    stored: tuple[str, ...]  # "view:feature" references read from the store
    # per request-time view: its transformation, the columns it takes, the features it makes
    on_demand: tuple[tuple[Callable[[dict], dict], tuple[str, ...], tuple[str, ...]], ...]

    @classmethod
    def of(cls, store: FeatureStore, service_name: str) -> ServiceReads:
        request_time_views = {view.name: view for view in store.list_on_demand_feature_views()}
        stored, on_demand = [], []
        for projection in store.get_feature_service(service_name).feature_view_projections:
            names = [f.name for f in projection.features]
            view = request_time_views.get(projection.name)
            if view is None:
                stored += [f"{projection.name_to_use()}:{name}" for name in names]
                continue
            if view.mode != "python":
                raise ValueError(f"on-demand view '{view.name}' is in {view.mode} mode; the readers run python mode")
            sources = [(source.name_to_use(), f.name) for source in view.source_feature_view_projections.values() for f in source.features]
            stored += [f"{source}:{name}" for source, name in sources]
            requests = [f.name for source in view.source_request_sources.values() for f in source.schema]
            on_demand.append((view.feature_transformation.udf, tuple([*(name for _, name in sources), *requests]), tuple(names)))
        return cls(tuple(dict.fromkeys(stored)), tuple(on_demand))

    def request_time(self, values: dict[str, list]) -> dict[str, list]:
        """Every request-time feature from ``values`` (stored features and request fields)."""
        computed: dict[str, list] = {}
        for transformation, inputs, outputs in self.on_demand:
            result = transformation({name: values[name] for name in inputs})
            computed.update({name: result[name] for name in outputs})
        return computed

    def historical(self, store: FeatureStore, entity_df: pd.DataFrame) -> pa.Table:
        """``get_historical_features`` of the service, as an Arrow table."""
        table = store.get_historical_features(entity_df=entity_df, features=list(self.stored)).to_arrow()
        inputs = sorted({name for _, names, _ in self.on_demand for name in names})
        for name, values in self.request_time(python_columns(table.select(inputs))).items():
            table = table.append_column(name, pa.array(values, type=pa.float64()))
        return table

    def online(self, store: FeatureStore, customer_ids: list[str], request: dict[str, list]) -> dict[str, list]:
        """``get_online_features(...).to_dict()`` of the service, with the ``request`` fields."""
        response = store.get_online_features(features=list(self.stored), entity_rows={customer.join_key: list(customer_ids)})
        values = response_columns(response)
        values.update(self.request_time({**values, **request}))
        return values


def python_columns(table: pa.Table) -> dict[str, list]:
    """``table.to_pydict()`` built faster: timestamps come from NumPy, marked UTC, instead of
    pyarrow's zoned conversion one value at a time (most of a large retrieval's conversion).
    The values are what Feast passes a request-time view: aware datetimes."""
    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_timestamp(column.type):
            naive = column.to_numpy().astype("datetime64[us]").astype(object).tolist()
            columns[name] = [None if value is None else value.replace(tzinfo=UTC) for value in naive]
        else:
            columns[name] = column.to_pylist()
    return columns


# Value kinds returned as they are; a timestamp becomes a UTC datetime, as in Feast's to_dict.
_PLAIN_KINDS = frozenset({"double_val", "float_val", "int64_val", "int32_val", "string_val", "bool_val", "bytes_val"})
_UUID_TYPES = (ValueType.UUID, ValueType.TIME_UUID)


def response_columns(response: OnlineResponse) -> dict[str, list]:
    """``response.to_dict()`` for scalar features at a fraction of its cost.

    Feast dispatches on the type of every value (a third of reading 100 profiles); here each
    column is checked once and read directly. Columns of any other kind (lists, maps, JSON) go
    through Feast's own conversion, so the result is always ``to_dict``'s (tested).
    """
    types = getattr(response, "_feature_types", {})  # declared types: UUIDs stored as strings
    columns: dict[str, list] = {}
    for name, vector in zip(response.proto.metadata.feature_names.val, response.proto.results, strict=True):
        values = vector.values
        kinds = [value.WhichOneof("val") for value in values]
        present = set(kinds) - {None}
        if present <= _PLAIN_KINDS and types.get(name) not in _UUID_TYPES:
            columns[name] = [None if kind is None else getattr(value, kind) for value, kind in zip(values, kinds, strict=True)]
        elif present == {"unix_timestamp_val"}:
            columns[name] = [
                None if kind is None or value.unix_timestamp_val == NULL_TIMESTAMP_INT_VALUE
                else datetime.fromtimestamp(value.unix_timestamp_val, tz=UTC)
                for value, kind in zip(values, kinds, strict=True)
            ]
        else:
            columns[name] = [feast_value_type_to_python_type(value, types.get(name)) for value in values]
    return columns


# --- erasure: a customer's online rows, deleted or counted ------------------------------------


class UnsupportedStore(ValueError):
    """An online store erasure cannot reach (only the embedded SQLite store and Redis)."""


def _entity_keys(store: FeatureStore, customer_ids: list[str]) -> list[bytes]:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    version = store.config.entity_key_serialization_version
    return [
        serialize_entity_key(
            EntityKeyProto(join_keys=[customer.join_key], entity_values=[ValueProto(string_val=cid)]),
            entity_key_serialization_version=version,
        )
        for cid in customer_ids
    ]


def _redis(store: FeatureStore) -> Any:
    from feast.infra.online_stores.redis import RedisOnlineStore

    online = store._get_provider().online_store
    return online._get_client(store.config.online_store) if isinstance(online, RedisOnlineStore) else None


def supports_erasure(store: FeatureStore) -> bool:
    """Whether ``erase_online`` can delete from this store: SQLite (either layout) or Redis."""
    return isinstance(store._get_provider().online_store, SqliteOnlineStore) or _redis(store) is not None


def _by_key(store: FeatureStore, customer_ids: list[str], sqlite_op: str, redis_op: str) -> int:
    """``sqlite_op`` of the embedded store (``delete_entity_keys``, ``count_entity_keys``: on
    both layouts' tables) or Redis's ``redis_op`` (``delete``, ``exists``) on the customers' keys."""
    keys = _entity_keys(store, customer_ids)
    online = store._get_provider().online_store
    if isinstance(online, SqliteOnlineStore):
        sqlite = online if isinstance(online, LeanSqliteOnlineStore) else LeanSqliteOnlineStore()
        return getattr(sqlite, sqlite_op)(store.config, store.list_feature_views(), keys)
    client = _redis(store)
    if client is None:
        raise UnsupportedStore(f"a {type(online).__name__} online store: only the embedded SQLite store and Redis")
    project = store.config.project.encode()  # Feast's Redis key: the entity key, then the project
    return int(getattr(client, redis_op)(*[key + project for key in keys])) if keys else 0


def erase_online(store: FeatureStore, customer_ids: list[str]) -> int:
    """Delete the customers from the online store, every view; returns the rows (SQLite) or
    keys (Redis: one hash per customer) deleted."""
    return _by_key(store, customer_ids, "delete_entity_keys", "delete")


def online_rows(store: FeatureStore, customer_ids: list[str]) -> int:
    """How many online rows (SQLite) or hashes (Redis) the customers still have."""
    return _by_key(store, customer_ids, "count_entity_keys", "exists")

