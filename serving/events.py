"""Accepted events: checked as an import checks rows, written durably once, applied online.

``EventSink.accept`` is what ``POST /events`` and ``indicators stream`` call. For a batch:

1. every event is checked as ``indicators ingest`` checks a row (``ingest.normalize``): a
   batch with a bad event is refused whole (``EventsRejected``, naming each bad event and
   why), so a client can fix and resend it without working out which part landed;
2. under the data directory's lock (so no import, feature build, scoring or erasure runs in
   between), events of erased customers are dropped, and the rest are appended to the
   journal in one transaction, a repeated event id skipped (``training.data.journal``);
3. the customers touched get every batch view's row recomputed from all their rows at the
   data's 'now' (``training.features.live``) and pushed to the online store through Feast's
   push sources; a customer who may no longer be scored gets their stored scores cleared.

When ``accept`` returns, the events are on disk and every profile read reflects them.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from serving.consent import may_score, policy_for
from training.config import Config
from training.data import journal
from training.data.ingest import ID_COLUMNS
from training.data.suppression import DataBusy, Suppression, data_lock
from training.features import store as feature_store
from training.features.live import RawRows, recompute
from training.features.snapshots import PROFILE_VIEW, midnight_after

log = logging.getLogger(__name__)
KIND_TABLE = {"transaction": "transactions", "event": "events", "customer": "customers"}
PUSH_SOURCES = {
    "customer_transactions": "customer_transactions_push",
    "customer_behaviour": "customer_behaviour_push",
    PROFILE_VIEW: "customer_profile_push",
    "customer_predictions": "customer_predictions_push",
}
CLOCK_SKEW = timedelta(minutes=5)  # an event this far ahead of our clock is still 'now'
LOCK_WAIT_SECONDS = 10.0


class EventsRejected(ValueError):
    """A batch with bad events; none of it was applied."""

    def __init__(self, problems: list[tuple[int, str, str]]) -> None:
        self.problems = problems  # (position in the batch, event id, reason)
        listed = "; ".join(f"{event_id}: {reason}" for _, event_id, reason in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"{len(problems)} event(s) rejected, none of the batch applied: {listed}{more}")


class OnlineWriteFailed(RuntimeError):
    """The events are in the journal but the online store refused the write (it is down).
    Sending the batch again applies it: its events are then repeats, accepted once."""


@dataclass(frozen=True)
class Accepted:
    accepted: int
    duplicates: int
    suppressed: int
    customers: list[str]  # whose features were recomputed and written online


@dataclass(frozen=True)
class _Row:
    position: int
    event_id: str
    table: str
    values: dict[str, Any]


class EventSink:
    """Accepts batches of events for one data directory (thread-safe; processes take turns by
    the data directory's lock)."""

    def __init__(self, config: Config, store: Any | None = None) -> None:
        self.config = config
        self.paths = config.paths
        self.store = store if store is not None else feature_store.feature_store(config)
        self.pusher = feature_store.Pusher(self.store, self.paths)
        self.raw = RawRows(self.paths)
        self.suppression = Suppression(self.paths)
        self._lock = threading.Lock()
        self._journal = journal.connect(self.paths)
        # The marks of what is online are a hint for ordering writes, not data: kept without
        # waiting for the disk (the journal's own commits do wait).
        self._marks = journal.connect(self.paths, durable=False)
        self._reader, self._read_lock = journal.connect(self.paths), threading.Lock()
        self._last_written = pd.Timestamp(0, tz="UTC")

    def close(self) -> None:
        for connection in (self._journal, self._marks, self._reader):
            connection.close()

    def latest_time(self) -> pd.Timestamp | None:
        """The latest transaction or behavioural event time of the journal (a read of its own:
        a profile read never waits for a batch being applied)."""
        with self._read_lock:
            return journal.latest_time(self._reader)

    def accept(self, events: Sequence[dict[str, Any]], now: datetime | None = None) -> Accepted:
        """Check, journal and apply ``events`` (dicts as ``serving.schemas`` events dump them).

        The data directory's lock is held twice: to journal the batch and read the customers'
        rows, then to write the recomputed rows online. The recomputation runs between, so
        batches in other processes proceed meanwhile; a customer's rows are written only if no
        write from a later read of the journal came first (``journal.claim``).
        """
        now = pd.Timestamp(now or datetime.now(UTC))
        rows, repeated = _checked(events, now)
        with self._lock:  # the lock nests within a process: its threads take turns here
            with data_lock(self.paths, timeout=LOCK_WAIT_SECONDS):
                erased = self.suppression.contains(pd.Series([row.values["customer_id"] for row in rows], dtype=object))
                kept = [row for row, gone in zip(rows, erased, strict=True) if not gone]
                self._check_orders(kept)
                kept = self._with_signups(kept)
                written = journal.append(self._journal, [(r.event_id, r.table, r.values) for r in kept], now)
                # Customers of repeated events too: a batch sent again after a failure between
                # its journal write and its online write is applied then.
                customers = sorted({r.values["customer_id"] for r in kept})
                journaled = journal.rows(self._journal, customers) if customers else {}
                cutoff = self._cutoff(now)
            if customers:
                try:
                    self._apply(customers, journaled, cutoff, now)
                except (DataBusy, OnlineWriteFailed):
                    raise
                except Exception as error:  # a store is a backend: its failure is reported, not raised as ours
                    log.error("online write of %d customer(s) failed", len(customers), exc_info=True)
                    raise OnlineWriteFailed(f"{len(written.accepted)} event(s) journaled, the online write failed "
                                            f"({type(error).__name__}): send the batch again") from error
        return Accepted(
            accepted=sum(1 for i in written.accepted if not i.endswith(SIGNUP_SUFFIX)),
            duplicates=repeated + sum(1 for i in written.duplicates if not i.endswith(SIGNUP_SUFFIX)),
            suppressed=int(erased.sum()),
            customers=customers,
        )

    def _cutoff(self, now: pd.Timestamp) -> datetime:
        """The data's 'now': midnight after the latest transaction or event, journal included."""
        latest = [t for t in (self.raw.latest(), journal.latest_time(self._journal)) if t is not None]
        return midnight_after(max(latest)) if latest else midnight_after(now)

    def _check_orders(self, rows: list[_Row]) -> None:
        """An order id already in the log belongs to its customer, as for an import."""
        orders = {r.values["order_id"]: r for r in rows if r.table == "transactions" and "order_id" in r.values}
        if not orders:
            return
        raw = self.raw.order_owners()
        owners = {o: raw[o] for o in orders if o in raw} | journal.order_owners(self._journal, sorted(orders))
        problems = [(r.position, r.event_id, "order_id already imported for another customer")
                    for r in rows if r.table == "transactions" and owners.get(r.values.get("order_id"), r.values["customer_id"]) != r.values["customer_id"]]
        if problems:
            raise EventsRejected(problems)

    def _with_signups(self, rows: list[_Row]) -> list[_Row]:
        """Where the raw log has a customers table, a customer's first event also records their
        signup (at its time), so they get a profile at once and the batch build agrees."""
        if not self.raw.has_customers():
            return rows
        known = self.raw.customers()
        ids = sorted({r.values["customer_id"] for r in rows if r.values["customer_id"] not in known})
        unknown = set(ids) - journal.known_customers(self._journal, ids)
        added, out = set(), []
        for row in rows:
            customer_id = row.values["customer_id"]
            if customer_id in unknown and customer_id not in added and row.table != "customers":
                added.add(customer_id)
                signup = {"customer_id": customer_id, "signup_at": row.values["timestamp"]}
                out.append(_Row(row.position, row.event_id + SIGNUP_SUFFIX, "customers", signup))
            elif row.table == "customers":
                added.add(customer_id)
            out.append(row)
        return out

    def _apply(self, customers: list[str], journaled: dict[str, list[dict]], cutoff: datetime, now: pd.Timestamp) -> None:
        views = recompute(self.raw, journaled, customers, cutoff)
        read = {c: 0 for c in customers}  # the latest journal row of each customer this recomputation saw
        for table_rows in journaled.values():
            for row in table_rows:
                read[row["customer_id"]] = max(read[row["customer_id"]], row["seq"])
        prepared = [p for view, rows in views.items() if rows for p in self.pusher.prepare(PUSH_SOURCES[view], rows)]
        prepared += self._cleared_scores(views[PROFILE_VIEW])
        with data_lock(self.paths, timeout=LOCK_WAIT_SECONDS):
            current = journal.claim(self._journal, read)
            # Rows carry the time of this write, later than any before: Feast's Redis store
            # keeps a row only when it is newer than the one stored.
            written_at = max(now, pd.Timestamp.now(tz="UTC"), self._last_written + pd.Timedelta(microseconds=1))
            self._last_written = written_at
            self.pusher.write([p.only(current) for p in prepared], written_at.to_pydatetime())
            journal.mark_applied(self._marks, {c: read[c] for c in current})

    def _cleared_scores(self, profiles: list[dict]) -> list:
        """Empty stored indicators for customers who may no longer be profiled."""
        policy = policy_for(self.paths, self.config.scoring.unknown_consent)
        allowed = may_score([row["profiling_consent"] for row in profiles], policy)
        barred = [row["customer_id"] for row, ok in zip(profiles, allowed, strict=True) if not ok]
        if not barred:
            return []
        # Every indicator empty; a row of nulls alone is skipped by Feast's writer, so "no
        # models" is the one value kept.
        cleared = [{"customer_id": c, "model_versions": json.dumps({})} for c in barred]
        return self.pusher.prepare(PUSH_SOURCES["customer_predictions"], cleared)


SIGNUP_SUFFIX = "#signup"


def _checked(events: Sequence[dict[str, Any]], now: pd.Timestamp) -> tuple[list[_Row], int]:
    """The batch's events as canonical rows, checked by the import's row rules; ids repeated
    within the batch are counted and dropped. Raises ``EventsRejected``.

    The rules are ``ingest.normalize``'s for one row (tested equal to it): trimmed ids (a
    batch of float-formatted integer ids read as integers), no time in the future, an amount
    of quantity x unit_price where none is given, a negative amount or quantity making a
    refund (both negative), an order id owned by one customer. ``normalize`` itself has a fixed
    pandas cost per call, whatever the rows, longer than an event can wait.
    """
    as_of = (now + CLOCK_SKEW).tz_convert("UTC")
    seen: set[str] = set()
    unique: list[tuple[int, dict[str, Any]]] = []
    for position, event in enumerate(events):
        if event["event_id"] not in seen:
            seen.add(event["event_id"])
            unique.append((position, event))
    problems: list[tuple[int, str, str]] = []
    rows: list[_Row] = []
    owners: dict[str, str] = {}
    float_ids = {column: _float_formatted([e.get(column) for _, e in unique]) for column in ID_COLUMNS}
    for position, event in unique:
        table = KIND_TABLE[event["kind"]]
        values = {k: v for k, v in event.items() if k not in ("kind", "event_id") and v is not None}
        reason = None
        if event["event_id"].endswith(SIGNUP_SUFFIX):
            reason = f"event ids ending in {SIGNUP_SUFFIX!r} are reserved"
        for column in ID_COLUMNS:
            if column in values:
                text = values[column].strip()
                if float_ids[column]:
                    text = re.sub(r"[.,]0*$", "", text)
                values[column] = text or None
        if values.get("customer_id") is None:
            reason = reason or "missing customer_id"
        moment = pd.Timestamp(values.pop("timestamp")).tz_convert("UTC")
        if moment > as_of:
            reason = reason or "future timestamp"
        if table == "customers":
            values["signup_at"] = pd.Timestamp(values.get("signup_at", moment)).tz_convert("UTC")
            if values["signup_at"] > as_of:
                reason = reason or "future signup_at"
        else:
            values["timestamp"] = moment
        if table == "transactions" and reason is None:
            if values.get("amount") is None:
                values["amount"] = values["quantity"] * values["unit_price"]
            if values["amount"] < 0 or values.get("quantity", 0) < 0:  # a refund: both negative
                values["amount"] = -abs(values["amount"])
                if "quantity" in values:
                    values["quantity"] = -abs(values["quantity"])
            order = values.get("order_id")
            if order is not None and owners.setdefault(order, values["customer_id"]) != values["customer_id"]:
                reason = "order_id of another customer"
        if reason is not None:
            problems.append((position, event["event_id"], reason))
        else:
            rows.append(_Row(position, event["event_id"], table, values))
    if problems:
        raise EventsRejected(problems)
    return rows, len(events) - len(unique)


def _float_formatted(values: list[Any]) -> bool:
    """Whether a batch's ids are spreadsheet floats (``17850.0``), as the import reads a column."""
    present = [v.strip() for v in values if isinstance(v, str) and v.strip()]
    return bool(present) and any(re.search(r"[.,]", v) for v in present) and all(_FLOAT_ID.fullmatch(v) for v in present)


_FLOAT_ID = re.compile(r"-?\d+([.,]0*)?")


__all__ = ["Accepted", "DataBusy", "EventSink", "EventsRejected", "OnlineWriteFailed"]
