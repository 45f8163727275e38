"""The event journal: events accepted one by one (``POST /events``, ``indicators stream``),
part of the raw log.

The raw Parquet tables are rewritten whole by an import; events arrive a few at a time and
must be durable the moment they are acknowledged. They go to ``raw/journal.db``, an SQLite
database in WAL mode with ``synchronous=FULL``: a committed batch survives ``kill -9`` and a
power cut. Each event id is kept (``accepted``), so a repeated id is recognised and applied
once. Every reader of the raw log (``training.features.snapshots.connect``) reads the journal
with the Parquet tables, so ``features``, ``train`` and ``score`` include accepted events.

Rows keep the canonical columns of their table (``training.data.schemas``); timestamps are
stored as UTC microseconds. A customer row may be partial (a changed consent alone): readers
take, per column, the customer's latest value given (``customers_view``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from training.config import Paths
from training.data.schemas import (
    BOOLEAN_CUSTOMER_COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    UTC_TIMESTAMP,
)

TABLES = ("transactions", "events", "customers")
TIME_COLUMNS = {"transactions": ("timestamp",), "events": ("timestamp",), "customers": ("signup_at",)}
COLUMNS = {table: REQUIRED_COLUMNS[table] + OPTIONAL_COLUMNS[table] for table in TABLES}
_REAL = {"amount", "quantity", "unit_price", "discount"}
_EPOCH = datetime(1970, 1, 1)


def journal_file(paths: Paths) -> Path:
    return paths.raw / "journal.db"


def _sql_type(table: str, column: str) -> str:
    if column in TIME_COLUMNS[table] or column in BOOLEAN_CUSTOMER_COLUMNS:
        return "INTEGER"
    return "REAL" if column in _REAL else "TEXT"


def _schema() -> list[str]:
    statements = [
        "CREATE TABLE IF NOT EXISTS accepted (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, "
        "kind TEXT NOT NULL, customer_id TEXT NOT NULL, accepted_at INTEGER NOT NULL)",
        "CREATE INDEX IF NOT EXISTS accepted_customer ON accepted (customer_id)",
    ]
    for table in TABLES:
        columns = ", ".join(f'"{c}" {_sql_type(table, c)}' for c in COLUMNS[table])
        statements += [
            f"CREATE TABLE IF NOT EXISTS {table} (seq INTEGER PRIMARY KEY REFERENCES accepted (seq), {columns})",
            f"CREATE INDEX IF NOT EXISTS {table}_customer ON {table} (customer_id)",
            f'CREATE INDEX IF NOT EXISTS {table}_time ON {table} ("{TIME_COLUMNS[table][0]}")',
        ]
    statements.append("CREATE INDEX IF NOT EXISTS transactions_order ON transactions (order_id)")
    # Per customer, the latest journal row the online store's rows were recomputed from.
    statements.append("CREATE TABLE IF NOT EXISTS applied (customer_id TEXT PRIMARY KEY, seq INTEGER NOT NULL)")
    return statements


def connect(paths: Paths, durable: bool = True) -> sqlite3.Connection:
    """A connection to the journal (created if absent), durable on every commit (with
    ``durable=False``, safe from corruption but not from a power cut)."""
    paths.raw.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(journal_file(paths), timeout=30, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
    connection.execute("PRAGMA busy_timeout = 30000")
    for statement in _schema():
        connection.execute(statement)
    return connection


@dataclass(frozen=True)
class Appended:
    accepted: list[str]  # event ids written now
    duplicates: list[str]  # event ids the journal (or this batch) already held


def append(connection: sqlite3.Connection, rows: Sequence[tuple[str, str, dict]], accepted_at: pd.Timestamp) -> Appended:
    """Write ``rows`` (event id, table, canonical values) in one transaction; ids already in the
    journal are skipped. On return the batch is on disk."""
    accepted, duplicates = [], []
    stamp = int(accepted_at.value // 1000)
    connection.execute("BEGIN IMMEDIATE")
    try:
        for event_id, table, values in rows:
            cursor = connection.execute(
                "INSERT OR IGNORE INTO accepted (event_id, kind, customer_id, accepted_at) VALUES (?, ?, ?, ?)",
                (event_id, table, values["customer_id"], stamp),
            )
            if not cursor.rowcount:
                duplicates.append(event_id)
                continue
            names = [c for c in COLUMNS[table] if c in values]
            marks = ", ".join("?" * (len(names) + 1))
            connection.execute(
                f"INSERT INTO {table} (seq, {', '.join(f'{chr(34)}{n}{chr(34)}' for n in names)}) VALUES ({marks})",
                (cursor.lastrowid, *(_stored(table, n, values[n]) for n in names)),
            )
            accepted.append(event_id)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return Appended(accepted, duplicates)


def _stored(table: str, column: str, value):
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA or value is pd.NaT:
        return None
    if column in TIME_COLUMNS[table]:
        return int(pd.Timestamp(value).value // 1000)
    if column in BOOLEAN_CUSTOMER_COLUMNS:
        return int(bool(value))
    return value


def rows(connection: sqlite3.Connection, customer_ids: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """Every journal table's rows as canonical dicts (``seq``: the order of acceptance), all of
    them or those of ``customer_ids``; times are naive UTC datetimes."""
    out = {}
    for table in TABLES:
        query, params = f"SELECT * FROM {table}", []
        if customer_ids is not None:
            query += f" WHERE customer_id IN ({', '.join('?' * len(customer_ids))})"
            params = list(customer_ids)
        cursor = connection.execute(query + " ORDER BY seq", params)
        names = [d[0] for d in cursor.description]
        times = [n for n in names if n in TIME_COLUMNS[table]]
        flags = [n for n in names if n in BOOLEAN_CUSTOMER_COLUMNS]
        found = []
        for values in cursor:
            row = dict(zip(names, values, strict=True))
            for name in times:
                row[name] = None if row[name] is None else _EPOCH + timedelta(microseconds=row[name])
            for name in flags:
                row[name] = None if row[name] is None else bool(row[name])
            found.append(row)
        out[table] = found
    return out


def frames(connection: sqlite3.Connection, customer_ids: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """Every journal table as canonical frames (plus ``seq``, the order of acceptance), all
    rows or those of ``customer_ids``."""
    out = {}
    for table in TABLES:
        query = f"SELECT * FROM {table}"
        params: Sequence[str] = ()
        if customer_ids is not None:
            query += f" WHERE customer_id IN ({', '.join('?' * len(customer_ids))})"
            params = list(customer_ids)
        frame = pd.read_sql_query(query + " ORDER BY seq", connection, params=params)
        out[table] = _typed(table, frame)
    return out


def _typed(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    for column in frame.columns:
        if column in TIME_COLUMNS[table]:
            frame[column] = pd.to_datetime(frame[column].astype("Int64"), unit="us", utc=True).astype(UTC_TIMESTAMP)
        elif column in BOOLEAN_CUSTOMER_COLUMNS:
            frame[column] = frame[column].astype("Int64").astype("boolean")
        elif column in _REAL:
            frame[column] = frame[column].astype("float64")
        elif column != "seq":
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


def read_frames(paths: Paths) -> dict[str, pd.DataFrame]:
    """Every journal table as canonical frames (without ``seq``); none without a journal."""
    if not journal_file(paths).exists():
        return {}
    with closing(connect(paths)) as connection:
        return {table: frame.drop(columns="seq") for table, frame in frames(connection).items()}


def latest_consents(paths: Paths) -> dict[str, bool]:
    """Each customer's latest ``profiling_consent`` given by an accepted event."""
    if not journal_file(paths).exists():
        return {}
    with closing(connect(paths)) as connection:
        rows = connection.execute(
            "SELECT customer_id, profiling_consent FROM customers WHERE profiling_consent IS NOT NULL ORDER BY seq"
        ).fetchall()
    return {customer_id: bool(value) for customer_id, value in rows}


def latest_time(connection: sqlite3.Connection) -> pd.Timestamp | None:
    """The latest transaction or behavioural event time in the journal."""
    values = [connection.execute(f'SELECT max("timestamp") FROM {t}').fetchone()[0] for t in ("transactions", "events")]
    values = [v for v in values if v is not None]
    return pd.Timestamp(max(values), unit="us", tz="UTC") if values else None


def known_customers(connection: sqlite3.Connection, customer_ids: Sequence[str]) -> set[str]:
    """The customers among ``customer_ids`` with any journal row."""
    if not customer_ids:
        return set()
    marks = ", ".join("?" * len(customer_ids))
    return {row[0] for row in connection.execute(f"SELECT DISTINCT customer_id FROM accepted WHERE customer_id IN ({marks})", list(customer_ids))}


def claim(connection: sqlite3.Connection, read: dict[str, int]) -> set[str]:
    """The customers whose rows, recomputed from the journal up to ``read[customer]``, may be
    written online: no write from a later read came first. Call under the data lock."""
    if not read:
        return set()
    ids = list(read)
    marks = ", ".join("?" * len(ids))
    done = dict(connection.execute(f"SELECT customer_id, seq FROM applied WHERE customer_id IN ({marks})", ids))
    return {c for c, seq in read.items() if done.get(c, -1) < seq or seq == 0}


def mark_applied(connection: sqlite3.Connection, read: dict[str, int]) -> None:
    """Record that the customers' online rows now hold the journal up to ``read[customer]``."""
    connection.executemany(
        "INSERT INTO applied (customer_id, seq) VALUES (?, ?) ON CONFLICT(customer_id) DO UPDATE SET seq = "
        "max(seq, excluded.seq)", list(read.items()))


def max_seq(paths: Paths) -> int:
    """The order of the latest accepted event (0 without a journal)."""
    if not journal_file(paths).exists():
        return 0
    with closing(connect(paths)) as connection:
        return connection.execute("SELECT coalesce(max(seq), 0) FROM accepted").fetchone()[0]


def applied_after(paths: Paths, seq: int) -> set[str]:
    """The customers whose online rows were written from journal rows after ``seq``."""
    if not journal_file(paths).exists():
        return set()
    with closing(connect(paths)) as connection:
        return {c for (c,) in connection.execute("SELECT customer_id FROM applied WHERE seq > ?", [seq])}


def order_owners(connection: sqlite3.Connection, order_ids: Sequence[str]) -> dict[str, str]:
    """Order id -> its customer, for the journal's orders among ``order_ids``."""
    if not order_ids:
        return {}
    marks = ", ".join("?" * len(order_ids))
    return dict(connection.execute(f"SELECT order_id, customer_id FROM transactions WHERE order_id IN ({marks})", list(order_ids)))


def erase(paths: Paths, customer_ids: Sequence[str]) -> tuple[int, set[str]]:
    """Delete every journal row of ``customer_ids`` (their event ids included): the rows
    deleted, and the customers it held. The erasure compacts the file afterwards, so freed
    pages keep no copy."""
    if not journal_file(paths).exists() or not customer_ids:
        return 0, set()
    with closing(connect(paths)) as connection:
        found = known_customers(connection, customer_ids)
        marks = ", ".join("?" * len(customer_ids))
        deleted = 0
        connection.execute("BEGIN IMMEDIATE")
        for table in TABLES:
            deleted += connection.execute(f"DELETE FROM {table} WHERE customer_id IN ({marks})", list(customer_ids)).rowcount
        for table in ("accepted", "applied"):
            connection.execute(f"DELETE FROM {table} WHERE customer_id IN ({marks})", list(customer_ids))
        connection.execute("COMMIT")
    return deleted, found


def count_rows(paths: Paths, customer_ids: Sequence[str]) -> int:
    """The journal's rows (event ids and marks included) of ``customer_ids``."""
    if not journal_file(paths).exists() or not customer_ids:
        return 0
    with closing(connect(paths)) as connection:
        marks = ", ".join("?" * len(customer_ids))
        return sum(connection.execute(f"SELECT count(*) FROM {table} WHERE customer_id IN ({marks})", list(customer_ids)).fetchone()[0]
                   for table in (*TABLES, "accepted", "applied"))
