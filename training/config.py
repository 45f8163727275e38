"""One configuration object, built once by the CLI and passed down (no globals).

The experiment part (seed, snapshot plan, model settings) also lives in a YAML file,
``training/experiment.yaml`` by default: ``indicators train --config FILE --set models.trials=4``
reads it, every run logs the resolved file, and ``--from-run RUN_ID`` replays one.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

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

    @property
    def access(self) -> Path:
        """API keys, the erasure suppression list and its audit log (never customer ids in clear)."""
        return self.data_dir / "access"

    @property
    def api_keys(self) -> Path:
        return self.access / "api_keys.json"

    @property
    def suppression(self) -> Path:
        """Keyed hashes of erased customers (``training.erasure``)."""
        return self.access / "suppression.json"

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
    # A running endpoint re-reads the registry this often; meanwhile, and while the registry's
    # database is away, it serves from its copy.
    registry_cache_seconds: int = 60
    # This project's faster online store (embedded) and reads (every store), which return what
    # Feast's own return; off: Feast's own SQLite store and calls (INDICATORS_FEAST_ACCELERATED).
    accelerated: bool = True


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
    # Models are fitted and backtested on a seeded random sample of at most this many customers
    # (0: everyone). Every (customer, cutoff) is a row: 100k customers give 1.3M rows and 7 GiB,
    # which meets every target; 1M would need ~70 GiB and teach trees little more.
    max_customers: int = 100_000
    plots: bool = True  # evaluation and SHAP plots in each model's MLflow run (a temporary backtest draws none)


CONSENT_POLICIES = ("score", "skip")


@dataclass(frozen=True)
class ScoringSettings:
    """Who may be scored. A recorded refusal of profiling is never scored; a customer with no
    consent record (a transaction-only import has none) is scored under ``unknown_consent``
    "score" (the default) and left out under "skip"."""

    unknown_consent: str = "score"

    def __post_init__(self) -> None:
        if self.unknown_consent not in CONSENT_POLICIES:
            raise ConfigError(f"unknown_consent must be one of {CONSENT_POLICIES}, got {self.unknown_consent!r}")


DEFAULT_DATA_DIR = PROJECT_ROOT / "data"
DEFAULT_MLFLOW_DIR = PROJECT_ROOT / "mlflow"


def owned_mlflow_dir(data_dir: Path) -> Path:
    """The MLflow store a data directory owns: the repository's ``mlflow/`` for the default
    ``data/``, ``<data_dir>/mlflow`` for any other, so champions trained on one data set are
    never served with another's features."""
    if Path(data_dir).resolve() == DEFAULT_DATA_DIR.resolve():
        return DEFAULT_MLFLOW_DIR
    return Path(data_dir) / "mlflow"


@dataclass(frozen=True)
class Config:
    data_dir: Path = DEFAULT_DATA_DIR
    feature_repo: Path = PROJECT_ROOT / "feature_repo"
    mlflow_dir: Path | None = None  # default: the store the data directory owns (owned_mlflow_dir)
    tracking_uri: str | None = None  # default: sqlite:///<mlflow store>/mlflow.db
    artifact_root: str | None = None  # where MLflow experiments keep artifacts (default: <mlflow store>/artifacts)
    snapshots: SnapshotPlan = field(default_factory=SnapshotPlan)
    feast: FeastSettings = field(default_factory=FeastSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    seed: int = 42
    workers: int = 0  # endpoint worker processes; 0: one per core

    @property
    def server_workers(self) -> int:
        """``workers``, or one per core this process may use (a container's, not the host's)."""
        return self.workers or len(os.sched_getaffinity(0)) or 1

    @property
    def mlflow_store(self) -> Path:
        """The local MLflow directory (mlflow.db, artifacts/, reports/)."""
        return Path(self.mlflow_dir if self.mlflow_dir is not None else owned_mlflow_dir(self.data_dir)).resolve()

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.mlflow_store / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow_store / "artifacts"

    def artifact_location(self, experiment: str) -> str:
        """The artifact location of a new MLflow experiment: below ``artifact_root`` (any URI
        MLflow takes: a path, s3://, ...) when one is set, else in the local MLflow store."""
        if self.artifact_root:
            return f"{self.artifact_root.rstrip('/')}/{experiment}"
        return (self.mlflow_artifacts / experiment).as_uri()

    @property
    def paths(self) -> Paths:
        return Paths(Path(self.data_dir).resolve())


PROFILES = ("embedded", "production")
# What the production profile reads from the environment, or from a settings file where they
# hold no password (``with_settings_file``). Required ones first.
PRODUCTION_ENV = {
    "INDICATORS_REDIS": "the Redis online store, as Feast takes it: host:port[,password=...,ssl=true]",
    "INDICATORS_FEAST_REGISTRY": "the Feast registry, a SQLAlchemy URL (postgresql+psycopg://user:pass@host/db)",
    "INDICATORS_MLFLOW_TRACKING_URI": "MLflow tracking and registry (postgresql+psycopg://user:pass@host/db)",
}
PRODUCTION_OPTIONAL_ENV = {
    "INDICATORS_MLFLOW_ARTIFACTS": "where MLflow keeps artifacts (a path or s3://...; default <mlflow dir>/artifacts)",
    "INDICATORS_FEAST_PROJECT": "the Feast project, so data sets can share one Redis and registry (default customer_indicators)",
    "INDICATORS_FEAST_REGISTRY_CACHE_SECONDS": "how often a running endpoint re-reads the registry (default 60)",
}


def config_from_env(
    data_dir: Path | None = None,
    mlflow_dir: Path | None = None,
    environ: dict[str, str] | None = None,
    **settings: Any,
) -> Config:
    """The config every command and the endpoint start from: options, then the environment.

    ``data_dir`` / ``mlflow_dir`` (command-line options) win over ``INDICATORS_DATA_DIR`` /
    ``INDICATORS_MLFLOW_DIR``; without either, the data directory is ``data/`` and the MLflow
    store the one it owns (``owned_mlflow_dir``). ``INDICATORS_UNKNOWN_CONSENT`` sets the
    consent policy, ``INDICATORS_WORKERS`` the endpoint's worker processes (default: cores). ``INDICATORS_PROFILE`` picks the stores: ``embedded`` (the default: SQLite
    online store, file registry, SQLite MLflow) or ``production`` (Redis, Feast registry and
    MLflow in PostgreSQL, from ``PRODUCTION_ENV``); ``INDICATORS_FEAST_ACCELERATED=false``
    Feast's own online store and calls (``FeastSettings.accelerated``). ``settings`` are further ``Config`` fields.
    The same variables may come from a settings file (``INDICATORS_SETTINGS``), the
    environment winning over it.
    """
    env = with_settings_file(os.environ if environ is None else environ)
    data = data_dir if data_dir is not None else Path(env.get("INDICATORS_DATA_DIR") or DEFAULT_DATA_DIR)
    mlflow_store = mlflow_dir if mlflow_dir is not None else env.get("INDICATORS_MLFLOW_DIR") or None
    scoring = ScoringSettings(unknown_consent=(env.get("INDICATORS_UNKNOWN_CONSENT") or "score").strip().lower())
    given = {key: value for key, value in settings.items() if value is not None}  # None: not given
    workers = (env.get("INDICATORS_WORKERS") or "0").strip()
    if not workers.isdigit():
        raise ConfigError(f"INDICATORS_WORKERS must be a whole number (0: one per core), got {workers!r}")
    profile = {"scoring": scoring, "workers": int(workers), **_profile_settings(env)}
    profile["feast"] = replace(profile.get("feast", FeastSettings()), accelerated=feast_accelerated(env))
    profile |= given
    return Config(data_dir=Path(data), mlflow_dir=Path(mlflow_store) if mlflow_store else None, **profile)


SETTINGS_FILE_ENV = "INDICATORS_SETTINGS"
SETTINGS_KEYS = (
    "INDICATORS_PROFILE", "INDICATORS_DATA_DIR", "INDICATORS_MLFLOW_DIR", "INDICATORS_UNKNOWN_CONSENT", "INDICATORS_WORKERS",
    "INDICATORS_FEAST_ACCELERATED",
    *PRODUCTION_ENV, *PRODUCTION_OPTIONAL_ENV,
)


def feast_accelerated(env: Any) -> bool:
    """``INDICATORS_FEAST_ACCELERATED`` of ``env`` (default true)."""
    switch = (env.get("INDICATORS_FEAST_ACCELERATED") or "true").strip().lower()
    if switch not in ("true", "false"):
        raise ConfigError(f"INDICATORS_FEAST_ACCELERATED must be true or false, got {switch!r}")
    return switch == "true"


def with_settings_file(env: Any) -> Any:
    """``env`` over the YAML mapping of ``SETTINGS_KEYS`` in the file ``INDICATORS_SETTINGS``
    names. A file may be committed, so it may not hold a password: those come from the
    environment only (a URL's ``user:password@``, Redis's ``password=``; or libpq's PGPASSWORD)."""
    path = env.get(SETTINGS_FILE_ENV)
    if not path:
        return env
    loaded = load_experiment(Path(path))  # a YAML mapping, its absence named
    unknown = sorted(set(loaded) - set(SETTINGS_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {unknown}; known: {list(SETTINGS_KEYS)}")
    for key, value in loaded.items():
        if value is None or isinstance(value, dict | list):
            raise ConfigError(f"{path}: {key} needs a value (text)")
        text = str(value)
        try:
            has_password = "password=" in text.lower() or ("://" in text and urlsplit(text).password is not None)
        except ValueError as error:
            raise ConfigError(f"{path}: {key} is not a valid URL: {error}") from None
        if has_password:
            raise ConfigError(f"{path}: {key} holds a password; passwords come from the environment only (set {key} there)")
    return {**{key: str(value) for key, value in loaded.items()}, **env}


def _profile_settings(env: Any) -> dict[str, Any]:
    """The ``Config`` fields of the profile ``INDICATORS_PROFILE`` names."""
    profile = (env.get("INDICATORS_PROFILE") or "embedded").strip().lower()
    if profile not in PROFILES:
        raise ConfigError(f"INDICATORS_PROFILE must be one of {PROFILES}, got {profile!r}")
    if profile == "embedded":
        return {}
    missing = [name for name in PRODUCTION_ENV if not env.get(name)]
    if missing:
        raise ConfigError(
            "the production profile needs " + "; ".join(f"{name} ({PRODUCTION_ENV[name]})" for name in missing)
        )
    cache = (env.get("INDICATORS_FEAST_REGISTRY_CACHE_SECONDS") or str(FeastSettings.registry_cache_seconds)).strip()
    if not cache.isdigit():
        raise ConfigError(f"INDICATORS_FEAST_REGISTRY_CACHE_SECONDS must be a whole number of seconds, got {cache!r}")
    feast = FeastSettings(
        registry_cache_seconds=int(cache),
        project=env.get("INDICATORS_FEAST_PROJECT") or FeastSettings.project,
        online_store="redis",
        redis_connection=env["INDICATORS_REDIS"],
        registry="sql",
        registry_path=env["INDICATORS_FEAST_REGISTRY"],
    )
    return {
        "feast": feast,
        "tracking_uri": env["INDICATORS_MLFLOW_TRACKING_URI"],
        "artifact_root": env.get("INDICATORS_MLFLOW_ARTIFACTS") or None,
    }


def as_utc(moment: datetime | date) -> datetime:
    """A timezone-aware UTC datetime for a date or a naive/aware datetime."""
    if not isinstance(moment, datetime):
        moment = datetime(moment.year, moment.month, moment.day)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# --- the experiment config (YAML): what a run depends on, apart from where files live -------

DEFAULT_EXPERIMENT = PROJECT_ROOT / "training" / "experiment.yaml"
EXPERIMENT_SECTIONS = {"snapshots": SnapshotPlan, "models": ModelSettings}


class ConfigError(ValueError):
    """A config file or override names an unknown key or gives a value of the wrong type."""


def experiment_of(config: Config) -> dict[str, Any]:
    """The experiment part of ``config`` as plain data: seed, snapshot plan, model settings."""
    plain = {"seed": config.seed}
    for section in EXPERIMENT_SECTIONS:
        plain[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(getattr(config, section)).items()}
    return plain


# Keys a config once had, under their names now: a run logged before the rename replays.
RENAMED_KEYS = {("models", "shap_plots"): "plots"}


def with_experiment(config: Config, experiment: dict[str, Any]) -> Config:
    """``config`` with the seed, snapshot plan and model settings of ``experiment`` (partial is fine)."""
    unknown = set(experiment) - {"seed", *EXPERIMENT_SECTIONS}
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}; known: seed, {', '.join(EXPERIMENT_SECTIONS)}")
    changes: dict[str, Any] = {}
    if "seed" in experiment:
        changes["seed"] = _coerce("seed", experiment["seed"], int)
    for section, kind in EXPERIMENT_SECTIONS.items():
        values = experiment.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a mapping, got {values!r}")
        values = {RENAMED_KEYS.get((section, k), k): v for k, v in values.items()}
        types = {f.name: f.type for f in fields(kind)}
        bad = set(values) - set(types)
        if bad:
            raise ConfigError(f"unknown key(s) in '{section}': {sorted(bad)}; known: {sorted(types)}")
        current = getattr(config, section)
        coerced = {k: _coerce(f"{section}.{k}", v, type(getattr(current, k)), getattr(current, k)) for k, v in values.items()}
        changes[section] = replace(current, **coerced)
    resolved = replace(config, **changes)
    horizons = resolved.models.purchase_horizons
    needed = {7, 30, 90, resolved.models.churn_horizon_days}
    if not needed <= set(horizons) or list(horizons) != sorted(set(horizons)):
        raise ConfigError(
            f"models.purchase_horizons must be increasing and hold {sorted(needed)} "
            f"(the served p_purchase_7d/30d/90d and the churn horizon), got {list(horizons)}"
        )
    return resolved


def load_experiment(path: Path) -> dict[str, Any]:
    if not Path(path).exists():
        raise ConfigError(f"config file not found: {path}")
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return loaded


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["models.trials=4", "seed=7"]`` -> a nested mapping for ``with_experiment``."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not KEY=VALUE (e.g. models.trials=4)")
        *sections, name = key.strip().split(".")
        target = nested
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = yaml.safe_load(raw)
    return nested


def experiment_yaml(config: Config) -> str:
    return yaml.safe_dump(experiment_of(config), sort_keys=False)


def _coerce(key: str, value: Any, kind: type, current: Any = None) -> Any:
    try:
        if kind is tuple:
            items = value if isinstance(value, list | tuple) else [value]
            item_kind = type(current[0]) if current else int
            return tuple(item_kind(v) for v in items)
        if kind is bool or isinstance(value, bool):  # a switch takes true or false, and true is no number
            if kind is bool and isinstance(value, bool):
                return value
            raise TypeError
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise TypeError
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"'{key}' expects {kind.__name__}, got {value!r}") from None
