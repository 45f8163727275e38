"""The Feast feature store of this project: configuration, apply, online writes, training sets
and online reads, through Feast's public API.

Definitions come from ``feature_repo/`` (the only place features are defined); here they are
pointed at the configured data directory and registered with a store built from ``Config``.
Where ``FeastSettings.accelerated`` is on (the default), writes and reads take this project's
faster paths (``accelerated``), which return what Feast's own calls return.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
from feast import FeatureService, FeatureStore, FeatureView, RepoConfig
from feast.infra.offline_stores.file_source import FileSource

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
from training.features import accelerated, online_store, registry_file, snapshots
from training.features.online_store import EncodedRows

DEFAULT_SERVICE = customer_indicators_v1.name
BATCH_VIEWS = (customer_transactions, customer_behaviour, customer_profile)
REQUEST_TIME = "as_of"


class IndicatorStore(FeatureStore):
    """Feast's ``FeatureStore``, and whether this project's faster paths serve it."""

    def __init__(self, repo_config: RepoConfig, accelerated: bool) -> None:
        super().__init__(config=repo_config)
        self.accelerated = accelerated


def repo_config(config: Config) -> RepoConfig:
    """Embedded default (file registry + SQLite) or production (SQL registry + Redis)."""
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
    else:  # this project's one-row layout, or Feast's own store, in the same file
        kind = online_store.STORE_TYPE if settings.accelerated else "sqlite"
        online = {"type": kind, "path": str(paths.feast / "online_store.db")}
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


def feature_store(config: Config) -> IndicatorStore:
    return IndicatorStore(repo_config(config), config.feast.accelerated)


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
    """``write_to_online_store`` in slices: Feast holds a Python object per value while it
    writes (60 values a customer: 6 GB at a million customers in one call)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, len(frame), ONLINE_WRITE_ROWS):
            chunk = frame.iloc[start : start + ONLINE_WRITE_ROWS]
            if not (accelerated.on(store) and accelerated.write_frame(store, view_name, chunk)):
                store.write_to_online_store(view_name, chunk)


class Pusher:
    """Feast's push (``FeatureStore.push``) in two steps, so an event's rows are prepared
    before the lock that writes them is taken: a push source's rows go to every view it feeds.
    The views are looked up once: Feast's own ``push`` reads them from the registry twice a
    call, converting every definition."""

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
        """What ``write`` writes for ``rows`` (dicts: join key and features; aware times)."""
        prepared = []
        for view in self._views_fed_by(push_source_name):
            features = [f.name for f in view.features]
            if not any(row.get(name) is not None for row in rows for name in features):
                continue  # as Feast's push: rows without values write nothing
            ids = [row[customer.join_key] for row in rows]
            encoded = None
            if accelerated.on(self.store):
                timed = [{**row, view.batch_source.timestamp_field: _EPOCH} for row in rows]
                encoded = accelerated.encode_rows(self.store, view, timed)
            prepared.append(PreparedWrite(view, ids, rows if encoded is None else encoded))
        return prepared

    def write(self, prepared: list[PreparedWrite], written_at: datetime) -> None:
        """Write prepared rows with the time ``written_at`` (encoded ones in one transaction)."""
        accelerated.write_encoded(
            self.store, [p.rows.at(int(written_at.timestamp())) for p in prepared if isinstance(p.rows, EncodedRows)]
        )
        for p in prepared:
            if not isinstance(p.rows, EncodedRows) and p.rows:
                # Every feature of the view, missing ones null, as the encoded rows have them.
                names = [customer.join_key, *(f.name for f in p.view.features)]
                frame = pd.DataFrame([{name: row.get(name) for name in names} for row in p.rows])
                frame[p.view.batch_source.timestamp_field] = pd.Timestamp(written_at)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.store.write_to_online_store(p.view.name, frame)

    def push(self, push_source_name: str, rows: list[dict[str, Any]], written_at: datetime) -> None:
        self.write(self.prepare(push_source_name, rows), written_at)


@dataclass(frozen=True)
class PreparedWrite:
    """One view's rows ready to write: encoded for the embedded store, else as dicts."""

    view: FeatureView
    customer_ids: list[str]
    rows: EncodedRows | list[dict[str, Any]]

    def only(self, customer_ids: set[str]) -> PreparedWrite:
        keep = [i for i, c in enumerate(self.customer_ids) if c in customer_ids]
        rows = self.rows.subset(keep) if isinstance(self.rows, EncodedRows) else [self.rows[i] for i in keep]
        return PreparedWrite(self.view, [self.customer_ids[i] for i in keep], rows)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def service(store: FeatureStore, name: str = DEFAULT_SERVICE) -> FeatureService:
    return store.get_feature_service(name)


def service_columns(store: FeatureStore, name: str = DEFAULT_SERVICE) -> tuple[str, ...]:
    """The entity key and every feature of the service, in its order."""
    return (customer.join_key, *(f.name for p in service(store, name).feature_view_projections for f in p.features))


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if accelerated.on(store):
            frame = accelerated.ServiceReads.of(store, service_name).historical(store, entity_df).to_pandas()
        else:
            frame = store.get_historical_features(entity_df=entity_df, features=service(store, service_name)).to_df()
    frame = frame.sort_values("_row").reset_index(drop=True)
    order = ["customer_id", "event_timestamp", *service_columns(store, service_name)[1:]]
    return frame[order].rename(columns={"event_timestamp": "cutoff"})


def online_features(
    store: FeatureStore, customer_ids: list[str], as_of: pd.Timestamp | datetime, service_name: str = DEFAULT_SERVICE
) -> dict[str, list]:
    """Latest feature values for ``customer_ids`` from the online store, ages taken at ``as_of``."""
    return OnlineReader.of(store, service_name).read(customer_ids, as_of)


@dataclass(frozen=True)
class OnlineReader:
    """A feature service read from the online store: what the endpoint does per request."""

    store: FeatureStore
    service: FeatureService
    columns: tuple[str, ...]  # the entity key and the service's features
    reads: accelerated.ServiceReads | None  # the faster route, where it is on

    @classmethod
    def of(cls, store: FeatureStore, service_name: str = DEFAULT_SERVICE) -> OnlineReader:
        reads = accelerated.ServiceReads.of(store, service_name) if accelerated.on(store) else None
        return cls(store, service(store, service_name), service_columns(store, service_name), reads)

    def read(self, customer_ids: list[str], as_of: pd.Timestamp | datetime) -> dict[str, list]:
        moment = pd.Timestamp(as_of)
        moment = (moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")).to_pydatetime()
        if self.reads is not None:
            values = self.reads.online(self.store, customer_ids, {REQUEST_TIME: [moment] * len(customer_ids)})
        else:
            rows = [{customer.join_key: cid, REQUEST_TIME: moment} for cid in customer_ids]
            values = self.store.get_online_features(features=self.service, entity_rows=rows).to_dict()
        return {name: values[name] for name in self.columns}
