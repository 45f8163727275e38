"""The Feast feature store of this project: configuration, apply, online writes, training sets.

Definitions come from ``feature_repo/`` (the only place features are defined); here they are
pointed at the configured data directory and registered with a store built from ``Config``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
from feast import FeatureService, FeatureStore, FeatureView, RepoConfig, ValueType
from feast.infra.offline_stores.file_source import FileSource
from feast.online_response import OnlineResponse
from feast.type_map import NULL_TIMESTAMP_INT_VALUE, feast_value_type_to_python_type

from feature_repo.entities import customer
from feature_repo.feature_services import customer_indicators_v1
from feature_repo.feature_views import (
    customer_behaviour,
    customer_predictions,
    customer_profile,
    customer_transactions,
)
from feature_repo.on_demand_views import customer_recency, request_time
from training.config import Config, Paths
from training.data import journal
from training.data.suppression import data_lock
from training.features import online_store, registry_file, snapshots

DEFAULT_SERVICE = customer_indicators_v1.name
BATCH_VIEWS = (customer_transactions, customer_behaviour, customer_profile)
REQUEST_TIME = "as_of"


def repo_config(config: Config) -> RepoConfig:
    """Embedded default (file registry + SQLite, written in bulk) or production (SQL registry + Redis)."""
    paths = config.paths
    paths.feast.mkdir(parents=True, exist_ok=True)
    settings = config.feast
    if settings.registry == "sql":
        if not settings.registry_path:
            raise ValueError("feast.registry 'sql' needs feast.registry_path (a SQLAlchemy URL)")
        registry = {"registry_type": "sql", "path": settings.registry_path, "cache_ttl_seconds": settings.registry_cache_seconds}
    else:
        registry = {"registry_type": "file", "path": str(paths.feast / "registry.db"), "cache_ttl_seconds": settings.registry_cache_seconds,
                    "registry_store_type": registry_file.STORE_TYPE}
    if settings.online_store == "redis":
        online = {"type": "redis", "connection_string": settings.redis_connection}
    else:
        online = {"type": online_store.STORE_TYPE, "path": str(paths.feast / "online_store.db")}
    return RepoConfig(
        project=settings.project,
        provider="local",
        registry=registry,
        online_store=online,
        offline_store={"type": "duckdb"},
        entity_key_serialization_version=3,
        repo_path=str(config.feature_repo),
    )


def definitions(paths: Paths) -> list:
    """Feast objects from ``feature_repo/``, with file sources pointed at ``paths.features``."""
    views = [_rebased(view, paths.features) for view in BATCH_VIEWS]
    by_name = {view.name: view for view in views}
    recency = copy.copy(customer_recency)
    recency.source_feature_view_projections = {
        name: by_name[name].projection for name in customer_recency.source_feature_view_projections
    }
    predictions = _rebased(customer_predictions, paths.features)
    return [customer, request_time, *views, recency, predictions, customer_indicators_v1]


def _rebased(view: FeatureView, features_dir: Path) -> FeatureView:
    rebased = copy.deepcopy(view)
    for source in (rebased.batch_source, getattr(rebased.stream_source, "batch_source", None)):
        if source is not None:
            assert isinstance(source, FileSource)
            source.file_options.uri = str(features_dir / Path(source.path).name)
    return rebased


def feature_store(config: Config) -> FeatureStore:
    return FeatureStore(config=repo_config(config))


def apply(store: FeatureStore, paths: Paths) -> None:
    """Register (or update) every definition in the store's registry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store.apply(definitions(paths))


def write_latest_online(store: FeatureStore, paths: Paths) -> dict[str, int]:
    """Write each customer's latest snapshot of every batch view to the online store (under
    the data directory's lock, as every writer of customer rows)."""
    with data_lock(paths):
        return _write_latest_online(store, paths)


def _write_latest_online(store: FeatureStore, paths: Paths) -> dict[str, int]:
    written: dict[str, int] = {}
    # Customers whose rows accepted events wrote from later journal rows than the files hold
    # keep those: they are newer.
    fresher = journal.applied_after(paths, snapshots.journal_mark(paths))
    for view in BATCH_VIEWS:
        source_file = paths.features / Path(view.batch_source.path).name
        ts = view.batch_source.timestamp_field
        # Only each customer's latest row is read into memory, not every snapshot.
        latest = duckdb.sql(
            f"SELECT * FROM read_parquet('{source_file}') "
            f"QUALIFY row_number() OVER (PARTITION BY customer_id ORDER BY {ts} DESC) = 1"
        ).df()
        # Rows carry the time of this write: Feast's Redis store keeps a row only when it is
        # newer than the stored one, which rows pushed by accepted events may be.
        written_at = pd.Timestamp.now(tz="UTC")
        latest[ts] = pd.to_datetime(latest[ts], utc=True).clip(lower=written_at)
        if fresher:
            latest = latest[~latest["customer_id"].isin(fresher)]
        write_online(store, view.name, latest)
        written[view.name] = len(latest)
    return written


ONLINE_WRITE_ROWS = 100_000


def write_online(store: FeatureStore, view_name: str, frame: pd.DataFrame) -> None:
    """Write ``frame`` to the online store in slices: Feast holds a Python object per value
    while it writes (60 values a customer: 6 GB at a million customers in one call).

    The embedded store takes each slice as a frame (``LeanSqliteOnlineStore.write_frame``:
    the same rows, without Feast's per-value conversion); other stores through Feast.
    """
    online = store._get_provider().online_store
    lean = isinstance(online, online_store.LeanSqliteOnlineStore) and online.covers(store.config)
    view = store.get_feature_view(view_name) if lean else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, len(frame), ONLINE_WRITE_ROWS):
            chunk = frame.iloc[start : start + ONLINE_WRITE_ROWS]
            if lean:
                online.write_frame(store.config, view, chunk)
            else:
                store.write_to_online_store(view_name, chunk)


class Pusher:
    """Feast's push (``FeatureStore.push``): a push source's rows go to every view it feeds,
    through the provider's ``ingest_df``, or the embedded store's ``write_frame`` (the same
    rows without Feast's per-value conversion). The views are looked up once: Feast's own
    ``push`` reads them from the registry twice a call, converting every definition."""

    def __init__(self, store: FeatureStore, paths: Paths) -> None:
        self.store = store
        self.paths = paths
        self._views: dict[str, list[FeatureView]] = {}

    def _fed_by(self, push_source_name: str) -> list[FeatureView]:
        return [v for v in self.store.list_feature_views(allow_cache=False)
                if v.stream_source is not None and v.stream_source.name == push_source_name]

    def _views_fed_by(self, push_source_name: str) -> list[FeatureView]:
        views = self._views.get(push_source_name)
        if views is None:
            views = self._fed_by(push_source_name)
            if not views:  # a registry applied before the views had push sources: apply them
                apply(self.store, self.paths)
                views = self._fed_by(push_source_name)
            if not views:
                raise ValueError(f"no feature view is fed by push source {push_source_name!r}")
            self._views[push_source_name] = views
        return views

    def prepare(self, push_source_name: str, rows: list[dict[str, Any]]) -> list[PreparedWrite]:
        """What ``write`` writes for ``rows`` (dicts: join key and features; aware times): on the
        embedded store the encoded rows, so the encoding happens before any lock is taken."""
        provider = self.store._get_provider()
        online = provider.online_store
        lean = isinstance(online, online_store.LeanSqliteOnlineStore) and online.covers(self.store.config)
        prepared = []
        for view in self._views_fed_by(push_source_name):
            features = [f.name for f in view.features]
            if not any(row.get(name) is not None for row in rows for name in features):
                continue  # as Feast's push: rows without values write nothing
            ids = [row[customer.join_key] for row in rows]
            timed = [{**row, view.batch_source.timestamp_field: _EPOCH} for row in rows]
            prepared.append(PreparedWrite(view, ids, online.encode_rows(self.store.config, view, timed) if lean else rows))
        return prepared

    def write(self, prepared: list[PreparedWrite], written_at: datetime) -> None:
        """Write prepared rows with the time ``written_at``: on the embedded store in one
        transaction, else through the provider's ``ingest_df``, view by view."""
        provider = self.store._get_provider()
        encoded = [p.rows.at(int(written_at.timestamp())) for p in prepared if isinstance(p.rows, online_store.EncodedRows)]
        if encoded:
            provider.online_store.write_encoded(self.store.config, encoded)
        for p in prepared:
            if not isinstance(p.rows, online_store.EncodedRows) and p.rows:
                frame = pd.DataFrame(p.rows).assign(**{p.view.batch_source.timestamp_field: pd.Timestamp(written_at)})
                provider.ingest_df(p.view, frame)

    def push(self, push_source_name: str, rows: list[dict[str, Any]], written_at: datetime) -> None:
        self.write(self.prepare(push_source_name, rows), written_at)


@dataclass(frozen=True)
class PreparedWrite:
    """One view's rows ready to write: encoded for the embedded store, else as dicts."""

    view: FeatureView
    customer_ids: list[str]
    rows: online_store.EncodedRows | list[dict[str, Any]]

    def only(self, customer_ids: set[str]) -> PreparedWrite:
        keep = [i for i, c in enumerate(self.customer_ids) if c in customer_ids]
        rows = self.rows.subset(keep) if isinstance(self.rows, online_store.EncodedRows) else [self.rows[i] for i in keep]
        return PreparedWrite(self.view, [self.customer_ids[i] for i in keep], rows)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
    """Whether ``erase_online`` can delete from this store: the embedded SQLite one or Redis."""
    return isinstance(store._get_provider().online_store, online_store.LeanSqliteOnlineStore) or _redis(store) is not None


class UnsupportedStore(ValueError):
    """An online store erasure cannot reach (only the embedded SQLite store and Redis)."""


def _by_key(store: FeatureStore, customer_ids: list[str], sqlite_op: str, redis_op: str) -> int:
    """``sqlite_op`` of the embedded store (``delete_entity_keys``, ``count_entity_keys``) or
    Redis's ``redis_op`` (``delete``, ``exists``) on the customers' entity keys."""
    keys = _entity_keys(store, customer_ids)
    online = store._get_provider().online_store
    if isinstance(online, online_store.LeanSqliteOnlineStore):
        return getattr(online, sqlite_op)(store.config, store.list_feature_views(), keys)
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


def service(store: FeatureStore, name: str = DEFAULT_SERVICE) -> FeatureService:
    return store.get_feature_service(name)


@dataclass(frozen=True)
class ServiceReads:
    """How a feature service is read: stored views through Feast, request-time views by their
    own transformation (from ``feature_repo/``) over just the columns they take.

    Feast's route for a python-mode on-demand view converts the whole result, every column
    twice (short and long names), to Python objects first, which was close to half of a read,
    offline and online. Here the view gets its inputs only. Both paths equal Feast's read of the whole service (tested).
    """

    stored: tuple[str, ...]  # "view:feature" references read from the store
    # per request-time view: its transformation, the columns it takes, the features it makes
    on_demand: tuple[tuple[Callable[[dict], dict], tuple[str, ...], tuple[str, ...]], ...]
    columns: tuple[str, ...]  # the entity key and the service's features

    @classmethod
    def of(cls, store: FeatureStore, service_name: str = DEFAULT_SERVICE) -> ServiceReads:
        feature_service = service(store, service_name)
        request_time_views = {view.name: view for view in store.list_on_demand_feature_views()}
        stored, on_demand, columns = [], [], ["customer_id"]
        for projection in feature_service.feature_view_projections:
            names = [f.name for f in projection.features]
            columns += names
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
        return cls(tuple(dict.fromkeys(stored)), tuple(on_demand), tuple(columns))

    def request_time(self, values: dict[str, list]) -> dict[str, list]:
        """Every request-time feature from ``values`` (stored features and request fields)."""
        computed: dict[str, list] = {}
        for transformation, inputs, outputs in self.on_demand:
            result = transformation({name: values[name] for name in inputs})
            computed.update({name: result[name] for name in outputs})
        return computed


def training_frame(
    store: FeatureStore, entity_rows: pd.DataFrame, service_name: str = DEFAULT_SERVICE
) -> pd.DataFrame:
    """Features as they were at each row's cutoff.

    ``entity_rows`` has ``customer_id`` and ``cutoff`` (UTC). Returns one row per input row, in
    the input order, with ``customer_id``, ``cutoff`` and every feature of the service. Feast
    joins each view's latest snapshot at or before the cutoff; request-time ages use the
    cutoff itself.
    """
    missing = {"customer_id", "cutoff"} - set(entity_rows.columns)
    if missing:
        raise ValueError(f"entity rows need column(s) {sorted(missing)}")
    cutoff = pd.to_datetime(entity_rows["cutoff"], utc=True)
    entity_df = pd.DataFrame(
        {
            "customer_id": entity_rows["customer_id"].astype(str).to_numpy(),
            "event_timestamp": cutoff.to_numpy(),
            REQUEST_TIME: cutoff.to_numpy(),
            "_row": range(len(entity_rows)),
        }
    )
    reads = ServiceReads.of(store, service_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = store.get_historical_features(entity_df=entity_df, features=list(reads.stored)).to_arrow()
    inputs = sorted({name for _, names, _ in reads.on_demand for name in names})
    computed = reads.request_time(python_columns(table.select(inputs)))
    for name, values in computed.items():
        table = table.append_column(name, pa.array(values, type=pa.float64()))
    frame = table.to_pandas()
    frame = frame.sort_values("_row").reset_index(drop=True)
    order = ["customer_id", "event_timestamp", *[c for c in reads.columns if c != "customer_id"]]
    return frame[order].rename(columns={"event_timestamp": "cutoff"})


def python_columns(table: pa.Table) -> dict[str, list]:
    """``table.to_pydict()`` built faster: timestamps come from NumPy, marked UTC, instead of
    pyarrow's zoned conversion one value at a time (4.9 of 7.7 s of a 200k-row retrieval;
    4x faster here). The values are what Feast passes a request-time view: aware datetimes."""
    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_timestamp(column.type):
            naive = column.to_numpy().astype("datetime64[us]").astype(object).tolist()
            columns[name] = [None if value is None else value.replace(tzinfo=UTC) for value in naive]
        else:
            columns[name] = column.to_pylist()
    return columns


def online_features(
    store: FeatureStore, customer_ids: list[str], as_of: pd.Timestamp | datetime, service_name: str = DEFAULT_SERVICE
) -> dict[str, list]:
    """Latest feature values for ``customer_ids`` from the online store, ages taken at ``as_of``."""
    return OnlineReader(store, ServiceReads.of(store, service_name)).read(customer_ids, as_of)


@dataclass(frozen=True)
class OnlineReader:
    """A feature service read from the online store: what the endpoint does per request."""

    store: FeatureStore
    reads: ServiceReads

    @classmethod
    def of(cls, store: FeatureStore, service_name: str = DEFAULT_SERVICE) -> OnlineReader:
        return cls(store, ServiceReads.of(store, service_name))

    def read(self, customer_ids: list[str], as_of: pd.Timestamp | datetime) -> dict[str, list]:
        moment = pd.Timestamp(as_of)
        moment = (moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")).to_pydatetime()
        response = self.store.get_online_features(features=list(self.reads.stored), entity_rows={"customer_id": list(customer_ids)})
        values = response_columns(response)
        values.update(self.reads.request_time({**values, REQUEST_TIME: [moment] * len(customer_ids)}))
        return {name: values[name] for name in self.reads.columns}


# Value kinds returned as they are; a timestamp becomes a UTC datetime, as in Feast's to_dict.
_PLAIN_KINDS = frozenset({"double_val", "float_val", "int64_val", "int32_val", "string_val", "bool_val", "bytes_val"})
_UUID_TYPES = (ValueType.UUID, ValueType.TIME_UUID)


def response_columns(response: OnlineResponse) -> dict[str, list]:
    """``response.to_dict()`` for scalar features at a fraction of its cost.

    Feast dispatches on the type of every value (2.3 us each: a third of reading 100 profiles);
    here each column is checked once and read directly. Columns of any other kind (lists, maps,
    JSON) go through Feast's own conversion, so the result is always ``to_dict``'s (tested).
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
