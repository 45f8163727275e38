"""Features of a few customers recomputed from the raw log the moment events are accepted.

The customers an accepted batch touches get every batch view's row recomputed from all of
their rows: the raw tables' (held in memory, sorted by customer: ``RawRows``) and the
journal's, by ``feature_repo.row_features`` (the SQL's definition for one customer, tested
equal to it). So an event-updated feature equals what a full rebuild would give then.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_repo import row_features
from training.config import Paths
from training.data import journal
from training.features import snapshots
from training.features.snapshots import PROFILE_VIEW, SNAPSHOT_VIEWS

TRANSACTION_FIELDS = ("timestamp", "amount", "order_id", "discount", "category")


@dataclass(frozen=True)
class _Table:
    columns: dict[str, np.ndarray]  # sorted by customer_id; times as naive UTC datetime64[us]
    ranges: dict[str, tuple[int, int]]  # customer -> [start, end) in the columns
    latest: pd.Timestamp | None  # latest time in the table (transactions and events)
    owners: dict[str, str]  # order id -> customer (transactions)


class RawRows:
    """The raw Parquet tables in memory as sorted columns, read again when a file changes
    (an import rewrites it whole): a customer's rows are a slice."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._lock = threading.Lock()
        self._tables: dict[str, _Table] = {}
        self._stamps: dict[str, tuple[int, int] | None] = {}

    def _current(self) -> dict[str, _Table]:
        with self._lock:
            for table in journal.TABLES:
                file = self.paths.raw_table(table)
                stamp = _stamp(file)
                if stamp != self._stamps.get(table, ()):
                    if stamp is None:
                        self._tables.pop(table, None)
                    else:
                        self._tables[table] = _load(file, table)
                    self._stamps[table] = stamp
            return dict(self._tables)

    def latest(self) -> pd.Timestamp | None:
        """The latest transaction or behavioural event time of the raw tables."""
        times = [t.latest for name, t in self._current().items() if name != "customers" and t.latest is not None]
        return max(times) if times else None

    def has_customers(self) -> bool:
        return "customers" in self._current()

    def customers(self) -> dict[str, tuple[int, int]]:
        """The customers of the raw customers table (as keys)."""
        table = self._current().get("customers")
        return table.ranges if table is not None else {}

    def order_owners(self) -> dict[str, str]:
        """Order id -> its customer, in the raw transactions."""
        table = self._current().get("transactions")
        return table.owners if table is not None else {}

    def of(self, customer_ids: list[str]) -> dict[str, dict[str, list]]:
        """Per customer, its raw rows: transactions as dicts, events as (time, type) pairs and
        customer records as dicts, times as naive UTC datetimes."""
        tables = self._current()
        found = {}
        for customer_id in customer_ids:
            out: dict[str, list] = {name: [] for name in journal.TABLES}
            for name, table in tables.items():
                span = table.ranges.get(customer_id)
                if span is None:
                    continue
                columns = {column: values[span[0] : span[1]].tolist() for column, values in table.columns.items()}
                if name == "events":
                    out[name] = list(zip(columns["timestamp"], columns["event_type"], strict=True))
                else:
                    names = list(columns)
                    out[name] = [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
            found[customer_id] = out
        return found


def _stamp(file: Path) -> tuple[int, int] | None:
    try:
        stat = file.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _load(file: Path, table: str) -> _Table:
    rows = pq.read_table(file).sort_by("customer_id")
    encoded = pc.dictionary_encode(rows.column("customer_id")).combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(codes) else np.array([], dtype=np.int64)
    ends = np.r_[starts[1:], len(codes)]
    ids = encoded.dictionary.take(pa.array(codes[starts])).to_pylist()
    wanted = {"transactions": TRANSACTION_FIELDS, "events": ("timestamp", "event_type")}.get(table, rows.column_names)
    columns = {}
    for name in wanted:
        if name not in rows.column_names:
            columns[name] = np.full(rows.num_rows, None, dtype=object)
            continue
        column = rows.column(name).combine_chunks()
        if pa.types.is_timestamp(column.type):
            columns[name] = column.cast(pa.timestamp("us")).to_numpy(zero_copy_only=False)
        elif pa.types.is_floating(column.type):  # a null is None, as the SQL's NULL
            values = column.to_numpy(zero_copy_only=False).astype(object)
            values[column.is_null().to_numpy(zero_copy_only=False)] = None
            columns[name] = values
        elif name == "event_type":  # few distinct values: codes into them
            kinds = pc.dictionary_encode(column)
            columns[name] = np.array(kinds.dictionary.to_pylist(), dtype=object)[kinds.indices.to_numpy(zero_copy_only=False)]
        else:
            columns[name] = column.to_numpy(zero_copy_only=False)
    latest = None
    if table != "customers" and rows.num_rows:
        latest = pd.Timestamp(pc.max(rows.column("timestamp")).as_py())
    owners = {}
    if table == "transactions" and "order_id" in rows.column_names:
        orders = rows.select(["order_id", "customer_id"]).filter(pc.is_valid(rows.column("order_id")))
        owners = dict(zip(orders.column("order_id").to_pylist(), orders.column("customer_id").to_pylist(), strict=True))
    return _Table(columns, dict(zip(ids, zip(starts.tolist(), ends.tolist(), strict=True), strict=True)), latest, owners)


def recompute(raw: RawRows, journaled: dict[str, list[dict]], customer_ids: list[str], cutoff: datetime) -> dict[str, list[dict]]:
    """Every batch view's rows of ``customer_ids`` at ``cutoff``, from their raw rows and
    ``journaled`` (``journal.rows`` of these customers, naive UTC). A customer a view has no
    row for (no signup or activity by then) is absent from it. Rows are dicts, their times
    aware (UTC)."""
    mine = raw.of(customer_ids)
    for table, rows in journaled.items():
        for row in rows:
            mine[row["customer_id"]][table].append((row["timestamp"], row["event_type"]) if table == "events" else row)
    has_customers = raw.has_customers()
    views: dict[str, list[dict]] = {view: [] for view in (*SNAPSHOT_VIEWS, PROFILE_VIEW)}
    moment = pd.Timestamp(cutoff).tz_convert("UTC").tz_localize(None).to_pydatetime()
    for customer_id in customer_ids:
        rows = mine[customer_id]
        records = rows["customers"]
        if not has_customers:  # as the view: signup at the first transaction or event
            times = [r["timestamp"] for r in rows["transactions"]] + [ts for ts, _ in rows["events"]]
            records = ([{"signup_at": min(times)}] if times else []) + records
        record = row_features.customer_record(records)
        for view, values in (
            ("customer_transactions", row_features.transaction_features(record, rows["transactions"], moment)),
            ("customer_behaviour", row_features.behaviour_features(record, rows["transactions"], rows["events"], moment)),
        ):
            if values is not None:
                views[view].append({"customer_id": customer_id, "snapshot_at": moment, **values})
        if record is not None and record["signup_at"] is not None:
            views[PROFILE_VIEW].append({"customer_id": customer_id, **record, "profile_at": record["signup_at"]})
    for rows in views.values():
        for row in rows:
            for name, value in row.items():
                if isinstance(value, datetime):
                    row[name] = value.replace(tzinfo=UTC)
    return views


def batch_mismatches(paths: Paths, online: dict[str, list], customer_ids: list[str], cutoff: datetime) -> list[tuple[str, str, Any, Any]]:
    """Where ``online`` (the online store's columns for ``customer_ids``, as
    ``store.online_features`` reads them) differs from a full rebuild of the batch views from
    the raw log at ``cutoff``: (customer, feature, online value, rebuilt value). What the
    property test and ``make bench-events`` check; empty when the two agree exactly."""
    con = snapshots.connect(paths)
    try:
        rebuilt = {view: snapshots.snapshot_frame(con, view, cutoff).df() for view in SNAPSHOT_VIEWS}
        rebuilt[PROFILE_VIEW] = con.sql(snapshots.read_sql("profile.sql")).df()
    finally:
        con.close()
    position = {c: i for i, c in enumerate(online["customer_id"])}
    found = []
    for frame in rebuilt.values():
        frame = frame[frame["customer_id"].isin(customer_ids)]
        columns = [c for c in frame.columns if c in online and c != "customer_id"]
        for record in frame.to_dict("records"):
            i = position[record["customer_id"]]
            for column in columns:
                if not _same(online[column][i], record[column]):
                    found.append((record["customer_id"], column, online[column][i], record[column]))
    return found


def _same(online: Any, rebuilt: Any) -> bool:
    missing = (online is None or online is pd.NaT or (isinstance(online, float) and online != online),
               rebuilt is None or rebuilt is pd.NaT or rebuilt is pd.NA or (isinstance(rebuilt, float) and rebuilt != rebuilt))
    if any(missing):
        return all(missing)
    if isinstance(rebuilt, datetime):  # the online store keeps whole seconds (Feast's UnixTimestamp)
        return pd.Timestamp(online).floor("s") == pd.Timestamp(rebuilt).floor("s")
    return online == rebuilt
