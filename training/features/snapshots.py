"""Feature snapshots per customer and snapshot date, computed with DuckDB SQL.

The SQL lives beside the Feast definitions (``feature_repo/sql``); this module only runs it
over the raw tables, once per snapshot date, and writes one Parquet file per feature view.
Rows are bounded by the number of snapshot dates, not customers x days.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

import feature_repo
from training.config import Paths, as_utc
from training.data import journal
from training.data.suppression import data_lock

SQL_DIR = Path(feature_repo.__file__).resolve().parent / "sql"
SNAPSHOT_VIEWS = {"customer_transactions": "transactions.sql", "customer_behaviour": "behaviour.sql"}
PROFILE_VIEW = "customer_profile"


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
_KEY = [("customer_id", "VARCHAR")]
_TRANSACTION_LOG = [*_KEY, ("timestamp", "TIMESTAMPTZ"), ("amount", "DOUBLE"), *_TRANSACTION_COLUMNS]
_EVENT_LOG = [*_KEY, ("timestamp", "TIMESTAMPTZ"), ("event_type", "VARCHAR")]
_CUSTOMER_ROWS = [*_KEY, ("signup_at", "TIMESTAMPTZ"), *_PROFILE_COLUMNS]


def connect(paths: Paths, memory_limit: str = "6GB", threads: int = 2) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with views ``transactions``, ``events`` and ``customers`` over the
    raw log: the raw Parquet tables and the event journal (``training.data.journal``).

    Events are optional (an empty table stands in); without a customers table, each customer's
    signup is their first transaction or event and profile attributes are NULL.
    """
    tx_file = paths.raw_table("transactions")
    accepted = journal.journal_file(paths).exists()
    if not tx_file.exists() and not accepted:
        raise FileNotFoundError(
            f"no transaction log at {tx_file}: run `indicators generate` or `indicators ingest` first"
        )
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET threads = {threads}")
    spill = paths.data_dir / ".duckdb_tmp"
    con.execute(f"SET temp_directory = '{spill}'")
    raw = {t: f"read_parquet('{paths.raw_table(t)}')" for t in journal.TABLES if paths.raw_table(t).exists()}
    journaled = {}
    if accepted:
        with closing(journal.connect(paths)) as connection:
            journaled = journal.frames(connection)
    create_log_views(con, raw, journaled)
    return con


def create_log_views(con: duckdb.DuckDBPyConnection, raw: dict[str, Any], journaled: dict[str, pd.DataFrame]) -> None:
    """Views ``transactions``, ``events`` and ``customers``: each raw table (a relation's SQL
    text, or a frame or Arrow table to scan) with the journal's rows of that table.

    The batch build and the per-customer recomputation of accepted events (``live``) both read
    the log through these views, so both run the same SQL over the same columns and types.
    """
    con.execute("SET TimeZone = 'UTC'")
    sources: dict[str, list[str]] = {}
    for table in journal.TABLES:
        sources[table] = []
        if table in raw:
            sources[table].append(_relation(con, f"_raw_{table}", raw[table]))
        rows = journaled.get(table)
        if rows is not None and len(rows):
            sources[table].append(_relation(con, f"_journal_{table}", rows))
    for table, columns in (("transactions", _TRANSACTION_LOG), ("events", _EVENT_LOG)):
        selects = [_canonical(con, source, columns) for source in sources[table]] or [_empty(columns)]
        con.execute(f"CREATE VIEW {table} AS " + " UNION ALL ".join(selects))
    if "customers" in raw:
        base = _canonical(con, sources["customers"][0], _CUSTOMER_ROWS, order="0")
    else:
        base = (
            "SELECT customer_id, min(\"timestamp\") AS signup_at, "
            + ", ".join(f"NULL::{kind} AS {name}" for name, kind in _PROFILE_COLUMNS)
            + ", 0 AS _seq FROM (SELECT customer_id, \"timestamp\" FROM transactions UNION ALL "
            "SELECT customer_id, \"timestamp\" FROM events) GROUP BY customer_id"
        )
    changes = [s for s in sources["customers"] if s.startswith("_journal_")]
    rows = " UNION ALL ".join([base, *(_canonical(con, s, _CUSTOMER_ROWS, order="seq") for s in changes)])
    # Per column, the latest value given: a journal row may carry a changed consent alone.
    # The earliest signup given stays the signup.
    latest = ", ".join(
        f"arg_max({name}, _seq) FILTER (WHERE {name} IS NOT NULL) AS {name}" for name, _ in _PROFILE_COLUMNS
    )
    con.execute(
        f"CREATE VIEW customers AS SELECT customer_id, arg_min(signup_at, _seq) FILTER (WHERE signup_at IS NOT NULL) "
        f"AS signup_at, {latest} FROM ({rows}) GROUP BY customer_id"
    )


def _relation(con: duckdb.DuckDBPyConnection, name: str, source: Any) -> str:
    if isinstance(source, str):
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM {source}")
    else:
        con.register(name, source)
    return name


def _canonical(con: duckdb.DuckDBPyConnection, relation: str, columns: list[tuple[str, str]], order: str | None = None) -> str:
    """``relation`` with exactly ``columns``, typed; columns it lacks are NULL."""
    present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()}
    select = [f"CAST({_quoted(n)} AS {kind}) AS {_quoted(n)}" if n in present else f"NULL::{kind} AS {_quoted(n)}" for n, kind in columns]
    if order is not None:
        select.append(f"{order} AS _seq")
    return f"SELECT {', '.join(select)} FROM {relation}"


def _empty(columns: list[tuple[str, str]]) -> str:
    return "SELECT " + ", ".join(f"NULL::{kind} AS {_quoted(n)}" for n, kind in columns) + " WHERE false"


def _quoted(name: str) -> str:
    return f'"{name}"'


def read_sql(name: str) -> str:
    return (SQL_DIR / name).read_text()


def snapshot_frame(con: duckdb.DuckDBPyConnection, view: str, cutoff: datetime):
    """One view's features for every customer as of ``cutoff`` (inclusive), as a DuckDB relation.

    The orders of the line items are grouped once per connection (``orders.sql``), not once
    per snapshot date."""
    con.execute(read_sql("orders.sql"))
    return con.sql(read_sql(SNAPSHOT_VIEWS[view]), params={"cutoff": as_utc(cutoff)})


def data_end(paths: Paths) -> datetime:
    """Midnight (UTC) after the latest raw transaction or event, journal included: the default
    'now' of the data."""
    con = connect(paths)
    try:
        latest = con.execute(
            "SELECT max(ts) FROM (SELECT max(\"timestamp\") AS ts FROM transactions "
            "UNION ALL SELECT max(\"timestamp\") FROM events)"
        ).fetchone()[0]
    finally:
        con.close()
    return midnight_after(latest)


def journal_mark(paths: Paths) -> int:
    """The latest accepted event the feature files include (0: none, or built before events)."""
    mark = paths.features / JOURNAL_MARK
    return int(mark.read_text()) if mark.exists() else 0


def write_private_text(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def midnight_after(latest: datetime) -> datetime:
    """``latest`` itself if it is a midnight (UTC), else the next midnight."""
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


JOURNAL_MARK = "journal_seq.txt"  # in features/: the latest accepted event the files include


def _build_snapshots(paths: Paths, cutoffs: Sequence[datetime], on_step: Callable[[str], None] | None) -> dict[str, Path]:
    cutoffs = sorted({as_utc(c) for c in cutoffs})
    paths.features.mkdir(parents=True, exist_ok=True)
    seq = journal.max_seq(paths)  # read before the journal is: the build holds at least this much
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
        write_private_text(paths.features / JOURNAL_MARK, str(seq))
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
