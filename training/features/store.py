"""The Feast feature store of this project: configuration, apply, online writes, training sets.

Definitions come from ``feature_repo/`` (the only place features are defined); here they are
pointed at the configured data directory and registered with a store built from ``Config``.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

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

DEFAULT_SERVICE = customer_indicators_v1.name
BATCH_VIEWS = (customer_transactions, customer_behaviour, customer_profile)
REQUEST_TIME = "as_of"


def repo_config(config: Config) -> RepoConfig:
    """Embedded default (file registry + SQLite) or production (SQL registry + Redis)."""
    paths = config.paths
    paths.feast.mkdir(parents=True, exist_ok=True)
    settings = config.feast
    if settings.registry == "sql":
        if not settings.registry_path:
            raise ValueError("feast.registry 'sql' needs feast.registry_path (a SQLAlchemy URL)")
        registry = {"registry_type": "sql", "path": settings.registry_path, "cache_ttl_seconds": 60}
    else:
        registry = {"registry_type": "file", "path": str(paths.feast / "registry.db"), "cache_ttl_seconds": 60}
    if settings.online_store == "redis":
        online = {"type": "redis", "connection_string": settings.redis_connection}
    else:
        online = {"type": "sqlite", "path": str(paths.feast / "online_store.db")}
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
    source = rebased.batch_source
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
    """Write each customer's latest snapshot of every batch view to the online store."""
    written: dict[str, int] = {}
    for view in BATCH_VIEWS:
        source_file = paths.features / Path(view.batch_source.path).name
        ts = view.batch_source.timestamp_field
        # Only each customer's latest row is read into memory, not every snapshot.
        latest = duckdb.sql(
            f"SELECT * FROM read_parquet('{source_file}') "
            f"QUALIFY row_number() OVER (PARTITION BY customer_id ORDER BY {ts} DESC) = 1"
        ).df()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            store.write_to_online_store(view.name, latest)
        written[view.name] = len(latest)
    return written


def service(store: FeatureStore, name: str = DEFAULT_SERVICE) -> FeatureService:
    return store.get_feature_service(name)


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
        job = store.get_historical_features(entity_df=entity_df, features=service(store, service_name))
        frame = job.to_df()
    frame = frame.sort_values("_row").reset_index(drop=True)
    frame = frame.drop(columns=["_row", REQUEST_TIME]).rename(columns={"event_timestamp": "cutoff"})
    return frame


def online_features(
    store: FeatureStore, customer_ids: list[str], as_of: pd.Timestamp, service_name: str = DEFAULT_SERVICE
) -> dict[str, list]:
    """Latest feature values for ``customer_ids`` from the online store, ages taken at ``as_of``."""
    as_of = pd.Timestamp(as_of)
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    rows = [{"customer_id": cid, REQUEST_TIME: as_of.to_pydatetime()} for cid in customer_ids]
    return store.get_online_features(features=service(store, service_name), entity_rows=rows).to_dict()
