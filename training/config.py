"""One configuration object, built once by the CLI and passed down (no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Paths:
    """Where every artefact lives, all below one data directory."""

    data_dir: Path

    @property
    def raw(self) -> Path:
        return self.data_dir / "raw"

    @property
    def quarantine(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def truth(self) -> Path:
        """Latent truth of generated data: read by tests and benchmarks only, never by features."""
        return self.data_dir / "truth"

    @property
    def features(self) -> Path:
        return self.data_dir / "features"

    @property
    def feast(self) -> Path:
        """Feast registry and SQLite online store of the embedded default."""
        return self.data_dir / "feast"

    @property
    def predictions(self) -> Path:
        return self.data_dir / "predictions"

    def raw_table(self, name: str) -> Path:
        return self.raw / f"{name}.parquet"


@dataclass(frozen=True)
class SnapshotPlan:
    """Which dates get a feature snapshot: a bounded set, not customers x days.

    Monthly cutoffs going back ``months`` from the end of the data, plus the latest date.
    Training cutoffs of the models are drawn from these dates.
    """

    months: int = 12
    step_days: int = 30

    def dates(self, data_end: datetime) -> list[datetime]:
        """Snapshot timestamps (UTC, end of day boundaries), oldest first, ending at ``data_end``."""
        end = as_utc(data_end)
        return [end - timedelta(days=self.step_days * k) for k in range(self.months, -1, -1)]


@dataclass(frozen=True)
class FeastSettings:
    """Embedded default (SQLite online, file registry) or production (Redis, PostgreSQL)."""

    project: str = "customer_indicators"
    online_store: str = "sqlite"  # or "redis"
    redis_connection: str = "127.0.0.1:6379"
    registry: str = "file"  # or "sql"
    registry_path: str | None = None  # SQLAlchemy URL when registry == "sql"


@dataclass(frozen=True)
class ModelSettings:
    """Horizons, backtest windows and tuning budget of ``indicators train``."""

    churn_horizon_days: int = 90
    # P(purchase within h) is modelled on this grid; next_purchase_days is read off it.
    purchase_horizons: tuple[int, ...] = (7, 14, 30, 60, 90, 180, 365)
    expected_purchases_horizon_days: int = 90
    clv_horizon_days: int = 365
    step_days: int = 30  # cutoffs lie on a grid of this step back from the end of the data
    fit_cutoffs: int = 3  # rolling origins the models are fitted on (before tune and test)
    min_history_days: int = 120  # a fit cutoff needs this much data before it
    trials: int = 8  # Optuna trials per model
    timeout_seconds: float = 300.0  # Optuna time budget per model
    max_rounds: int = 600
    lookalike_audience_percents: tuple[int, ...] = (1, 2, 3, 5, 10)
    threads: int = 2


@dataclass(frozen=True)
class Config:
    data_dir: Path = PROJECT_ROOT / "data"
    feature_repo: Path = PROJECT_ROOT / "feature_repo"
    mlflow_dir: Path = PROJECT_ROOT / "mlflow"
    tracking_uri: str | None = None  # default: sqlite:///<mlflow_dir>/mlflow.db
    snapshots: SnapshotPlan = field(default_factory=SnapshotPlan)
    feast: FeastSettings = field(default_factory=FeastSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    seed: int = 42

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{Path(self.mlflow_dir).resolve() / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return Path(self.mlflow_dir).resolve() / "artifacts"

    @property
    def paths(self) -> Paths:
        return Paths(Path(self.data_dir).resolve())


def as_utc(moment: datetime | date) -> datetime:
    """A timezone-aware UTC datetime for a date or a naive/aware datetime."""
    if not isinstance(moment, datetime):
        moment = datetime(moment.year, moment.month, moment.day)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
