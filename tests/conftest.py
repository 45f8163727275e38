"""Shared fixtures: one small generated data set with snapshots and a Feast store, per session."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("FEAST_USAGE", "False")

SMALL_CUSTOMERS = 2_000
POSTGRES_URL = os.environ.get("INDICATORS_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("INDICATORS_TEST_REDIS", "127.0.0.1:6379")


@dataclass(frozen=True)
class FeatureWorld:
    """A generated data set with its snapshots, applied Feast repo and online store."""

    config: object
    store: object
    cutoffs: list[datetime]

    @property
    def paths(self):
        return self.config.paths


@pytest.fixture(scope="session")
def generated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.data.generate import GenerationSpec, generate

    root = tmp_path_factory.mktemp("generated")
    generate(GenerationSpec(customers=SMALL_CUSTOMERS, seed=7), root)
    return root


@pytest.fixture(scope="session")
def feature_world(generated_dir: Path) -> FeatureWorld:
    from training.config import Config, SnapshotPlan
    from training.features import store as feature_store
    from training.features.snapshots import build_snapshots, data_end

    config = Config(data_dir=generated_dir, snapshots=SnapshotPlan(months=6, step_days=30))
    cutoffs = config.snapshots.dates(data_end(config.paths))
    build_snapshots(config.paths, cutoffs)
    store = feature_store.feature_store(config)
    feature_store.apply(store, config.paths)
    feature_store.write_latest_online(store, config.paths)
    return FeatureWorld(config=config, store=store, cutoffs=cutoffs)


def event_world(generated_dir: Path, root: Path, bare: bool = False, accelerated: bool = True):
    """A data directory for events: ``generated_dir``'s raw log (or its bare transaction log:
    customer_id, timestamp, amount), its latest snapshots, the Feast repo applied and written
    online (this project's store, or Feast's own unless ``accelerated``). Returns its ``Config``."""
    import shutil

    import pandas as pd

    from training.config import Config, FeastSettings, SnapshotPlan
    from training.features import store as feature_store
    from training.features.snapshots import build_snapshots, data_end

    (root / "raw").mkdir(parents=True)
    if bare:
        log = pd.read_parquet(generated_dir / "raw" / "transactions.parquet", columns=["customer_id", "timestamp", "amount"])
        log.to_parquet(root / "raw" / "transactions.parquet", index=False)
    else:
        for table in ("transactions", "events", "customers"):
            shutil.copy(generated_dir / "raw" / f"{table}.parquet", root / "raw" / f"{table}.parquet")
    config = Config(data_dir=root, snapshots=SnapshotPlan(months=1, step_days=30), feast=FeastSettings(accelerated=accelerated))
    build_snapshots(config.paths, config.snapshots.dates(data_end(config.paths)))
    store = feature_store.feature_store(config)
    feature_store.apply(store, config.paths)
    feature_store.write_latest_online(store, config.paths)
    return config


@pytest.fixture(scope="session")
def service_app():
    """The endpoint's ASGI app, built once a session (BentoML registers its metrics when it
    builds one: a second build fails). Each TestClient over it starts a service instance
    that reads the environment of its moment."""
    from serving.service import CustomerIndicators

    return CustomerIndicators.to_asgi()


TRAINED_CUSTOMERS = 1_500
# The servers the tests start accept this key with every scope (INDICATORS_API_KEY).
API_KEY = "tests-only-key-not-for-production"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


# The trained world comes in as a shop's export would: invoice lines in a CSV with its own
# column names, imported by `indicators ingest` (the other tables as CSV too).
EXPORT_COLUMNS = {
    "customer_id": "CustomerID", "timestamp": "InvoiceDate", "order_id": "InvoiceNo", "product_id": "StockCode",
    "quantity": "Quantity", "unit_price": "UnitPrice", "category": "Category", "channel": "Channel",
    "discount": "Discount",
}


def import_export(generated: Path, root: Path) -> list:
    """Write ``generated``'s raw tables as CSV exports (line items without an amount column)
    and import them into ``root`` with ``indicators ingest``'s function."""
    import pandas as pd

    from training.config import Paths
    from training.data.ingest import ImportOptions, ingest

    exports = {}
    for table in ("transactions", "events", "customers"):
        frame = pd.read_parquet(generated / "raw" / f"{table}.parquet")
        if table == "transactions":
            frame = frame.drop(columns="amount").rename(columns=EXPORT_COLUMNS)
        exports[table] = root / "export" / f"{table}.csv"
        exports[table].parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(exports[table], index=False)
    options = ImportOptions(columns=EXPORT_COLUMNS, as_of=datetime(2100, 1, 1))
    return ingest(Paths(root), exports, options)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory):
    from training.config import Config, ModelSettings
    from training.data.generate import GenerationSpec, generate
    from training.pipeline import run_training

    root = tmp_path_factory.mktemp("trained")
    generated = tmp_path_factory.mktemp("trained-export")
    spec = GenerationSpec(customers=TRAINED_CUSTOMERS, seed=5, start=date(2023, 11, 1), days=1095, line_items=True)
    generate(spec, generated)
    import_export(generated, root)
    (root / "truth").symlink_to(generated / "truth")  # the oracle baseline of generated data
    config = Config(
        data_dir=root,
        mlflow_dir=root / "mlflow",
        models=ModelSettings(trials=2, timeout_seconds=60, max_rounds=200),
    )
    result = run_training(config)
    return config, result


def pytest_configure(config: pytest.Config) -> None:
    # Feast imported now, with typeguard's checks: a command a test invokes in this process
    # would otherwise import it without them (training.features.feast_checks) for the tests after it.
    import feast  # noqa: F401


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order: fast unit tests first, heavy fixture users later (fails surface sooner)."""
    items.sort(key=lambda item: "feature_world" in getattr(item, "fixturenames", ()))


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture()
def production_profile():
    """``with production_profile(config) as (production_config, store)``: see ``_on_production_profile``."""
    return _on_production_profile


@contextlib.contextmanager
def _on_production_profile(config):
    """``config`` on the production profile: Redis online store, SQL registry in PostgreSQL,
    under a project of its own that is torn down afterwards. Skips where the local services
    are not reachable, except under CI, where their absence is a failure."""
    from feast.errors import ProjectObjectNotFoundException

    from training.config import FeastSettings
    from training.features import store as feature_store

    missing = [name for name, port in (("PostgreSQL", 5432), ("Redis", 6379)) if not _reachable(port)]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{', '.join(missing)} not reachable on 127.0.0.1 under CI")
        pytest.skip(f"{', '.join(missing)} not reachable on 127.0.0.1")
    project = f"indicators_test_{uuid.uuid4().hex[:8]}"
    settings = FeastSettings(project=project, online_store="redis", redis_connection=REDIS, registry="sql", registry_path=POSTGRES_URL)
    production = replace(config, feast=settings)
    store = feature_store.feature_store(production)
    try:
        yield production, store
    finally:
        store.teardown()  # drops this project's keys in Redis and its objects in the registry
        with contextlib.suppress(ProjectObjectNotFoundException):
            store.registry.delete_project(project, commit=True)
