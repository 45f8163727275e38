"""Feature snapshots per customer and snapshot date, computed with DuckDB SQL.

The SQL lives beside the Feast definitions (``feature_repo/sql``); this module only runs it
over the raw tables, once per snapshot date, and writes one Parquet file per feature view.
Rows are bounded by the number of snapshot dates, not customers x days.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

import feature_repo
from training.config import Paths, as_utc
from training.data.suppression import data_lock

SQL_DIR = Path(feature_repo.__file__).resolve().parent / "sql"
SNAPSHOT_VIEWS = {"customer_transactions": "transactions.sql", "customer_behaviour": "behaviour.sql"}
PROFILE_VIEW = "customer_profile"
EMPTY_EVENTS = "SELECT NULL::VARCHAR AS customer_id, NULL::TIMESTAMPTZ AS \"timestamp\", NULL::VARCHAR AS event_type WHERE false"


def connect(paths: Paths, memory_limit: str = "6GB", threads: int = 2) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with views ``transactions``, ``events`` and ``customers`` over raw files.

    Events are optional (an empty table stands in); without a customers table, each customer's
    signup is their first transaction or event and profile attributes are NULL.
    """
    tx_file = paths.raw_table("transactions")
    if not tx_file.exists():
        raise FileNotFoundError(
            f"no transaction log at {tx_file}: run `indicators generate` or `indicators ingest` first"
        )
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET threads = {threads}")
    spill = paths.data_dir / ".duckdb_tmp"
    con.execute(f"SET temp_directory = '{spill}'")
    con.execute(f"CREATE VIEW transactions AS SELECT * FROM {_with_columns(con, tx_file, _TRANSACTION_COLUMNS)}")
    events_file = paths.raw_table("events")
    source = f"read_parquet('{events_file}')" if events_file.exists() else f"({EMPTY_EVENTS})"
    con.execute(f"CREATE VIEW events AS SELECT customer_id, \"timestamp\", event_type FROM {source}")
    customers_file = paths.raw_table("customers")
    if customers_file.exists():
        con.execute(f"CREATE VIEW customers AS SELECT * FROM {_with_columns(con, customers_file, _PROFILE_COLUMNS)}")
    else:
        con.execute(
            "CREATE VIEW customers AS SELECT customer_id, min(\"timestamp\") AS signup_at, "
            + ", ".join(f"NULL::{kind} AS {name}" for name, kind in _PROFILE_COLUMNS)
            + " FROM (SELECT customer_id, \"timestamp\" FROM transactions UNION ALL "
            "SELECT customer_id, \"timestamp\" FROM events) GROUP BY customer_id"
        )
    return con


_PROFILE_COLUMNS = [
    ("age_band", "VARCHAR"),
    ("region", "VARCHAR"),
    ("income_band", "VARCHAR"),
    ("acquisition_channel", "VARCHAR"),
    ("preferred_contact_channel", "VARCHAR"),
    ("contact_frequency", "VARCHAR"),
    ("marketing_consent", "BOOLEAN"),
    ("profiling_consent", "BOOLEAN"),
    ("interest_sustainable", "BOOLEAN"),
    ("interest_premium", "BOOLEAN"),
    ("interest_deals", "BOOLEAN"),
]


# Optional columns of the transaction log: a log may lack any of them (features reading them are NULL).
_TRANSACTION_COLUMNS = [
    ("order_id", "VARCHAR"),
    ("product_id", "VARCHAR"),
    ("quantity", "DOUBLE"),
    ("unit_price", "DOUBLE"),
    ("category", "VARCHAR"),
    ("channel", "VARCHAR"),
    ("discount", "DOUBLE"),
]


def _with_columns(con: duckdb.DuckDBPyConnection, file: Path, optional: list[tuple[str, str]]) -> str:
    """``file`` with every optional column it lacks filled with NULL, so the SQL can name them all."""
    present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{file}')").fetchall()}
    extra = [f"NULL::{kind} AS {name}" for name, kind in optional if name not in present]
    select = ", ".join(["*", *extra])
    return f"(SELECT {select} FROM read_parquet('{file}'))"


def read_sql(name: str) -> str:
    return (SQL_DIR / name).read_text()


def snapshot_frame(con: duckdb.DuckDBPyConnection, view: str, cutoff: datetime):
    """One view's features for every customer as of ``cutoff`` (inclusive), as a DuckDB relation.

    The orders of the line items are grouped once per connection (``orders.sql``), not once
    per snapshot date."""
    con.execute(read_sql("orders.sql"))
    return con.sql(read_sql(SNAPSHOT_VIEWS[view]), params={"cutoff": as_utc(cutoff)})


def data_end(paths: Paths) -> datetime:
    """Midnight (UTC) after the latest raw transaction or event: the default 'now' of the data."""
    con = connect(paths)
    try:
        latest = con.execute(
            "SELECT max(ts) FROM (SELECT max(\"timestamp\") AS ts FROM transactions "
            "UNION ALL SELECT max(\"timestamp\") FROM events)"
        ).fetchone()[0]
    finally:
        con.close()
    latest = as_utc(latest)
    midnight = latest.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight if midnight == latest else midnight + timedelta(days=1)


def build_snapshots(
    paths: Paths,
    cutoffs: Sequence[datetime],
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Write ``features/<view>.parquet`` for every snapshot view and the profile view.

    Each file is built under a temporary name and renamed, so readers never see a partial
    file; the data directory's lock is held, so an erasure never runs in between.
    """
    with data_lock(paths):
        return _build_snapshots(paths, cutoffs, on_step)


def _build_snapshots(paths: Paths, cutoffs: Sequence[datetime], on_step: Callable[[str], None] | None) -> dict[str, Path]:
    cutoffs = sorted({as_utc(c) for c in cutoffs})
    paths.features.mkdir(parents=True, exist_ok=True)
    con = connect(paths)
    written: dict[str, Path] = {}
    try:
        for view in SNAPSHOT_VIEWS:
            parts = paths.features / f".{view}.parts"
            parts.mkdir(parents=True, exist_ok=True)
            for old in parts.glob("*.parquet"):
                old.unlink()
            for k, cutoff in enumerate(cutoffs):
                part = parts / f"{k:04d}.parquet"
                snapshot_frame(con, view, cutoff).write_parquet(str(part), compression="zstd")
                if on_step is not None:
                    on_step(f"{view} @ {cutoff:%Y-%m-%d}")
            written[view] = _combine(con, parts, paths.features / f"{view}.parquet")
        profile = paths.features / f"{PROFILE_VIEW}.parquet"
        partial = profile.with_name(profile.name + ".partial")
        con.sql(read_sql("profile.sql")).write_parquet(str(partial), compression="zstd")
        partial.replace(profile)
        written[PROFILE_VIEW] = profile
        if on_step is not None:
            on_step(PROFILE_VIEW)
    finally:
        con.close()
    return written


def _combine(con: duckdb.DuckDBPyConnection, parts: Path, target: Path) -> Path:
    partial = target.with_name(target.name + ".partial")
    con.execute(
        f"COPY (SELECT * FROM read_parquet('{parts}/*.parquet')) TO '{partial}' "
        "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 500000)"
    )
    partial.replace(target)
    for part in parts.glob("*.parquet"):
        part.unlink()
    parts.rmdir()
    return target
