"""An event is checked by the import's row rules: ``serving.events``' checks give what
``ingest.normalize`` gives for the same rows, values and reasons alike."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from serving.events import EventsRejected, _checked
from training.data.ingest import ImportOptions, normalize

NOW = pd.Timestamp("2026-12-01T12:00:00Z")
T = "2026-11-30T10:00:00+00:00"

TRANSACTIONS = [
    {"event_id": "t1", "customer_id": "C1", "timestamp": T, "amount": 42.5, "order_id": "A1", "category": "Home"},
    {"event_id": "t2", "customer_id": "C1", "timestamp": T, "quantity": 2.0, "unit_price": 9.5, "order_id": "A1"},
    {"event_id": "t3", "customer_id": " C2 ", "timestamp": T, "amount": -10.0},
    {"event_id": "t4", "customer_id": "C2", "timestamp": T, "quantity": -1.0, "unit_price": 5.0},
    {"event_id": "t5", "customer_id": "C3", "timestamp": T, "quantity": -2.0, "amount": 8.0, "discount": 1.0},
    {"event_id": "t6", "customer_id": "C3", "timestamp": "2026-12-02T10:00:00+00:00", "amount": 5.0},
    {"event_id": "t7", "customer_id": "   ", "timestamp": T, "amount": 5.0},
    {"event_id": "t8", "customer_id": "C4", "timestamp": T, "amount": 5.0, "order_id": "A1"},
]
FLOAT_IDS = [
    {"event_id": "f1", "customer_id": "17850.0", "timestamp": T, "amount": 1.0},
    {"event_id": "f2", "customer_id": "13047.0", "timestamp": T, "amount": 2.0, "order_id": "536365.0"},
]
EVENTS = [
    {"event_id": "e1", "customer_id": "C1", "timestamp": T, "event_type": "session"},
    {"event_id": "e2", "customer_id": "C1", "timestamp": "2027-01-01T00:00:00+00:00", "event_type": "email_open"},
]
CUSTOMERS = [
    {"event_id": "c1", "customer_id": "C1", "signup_at": "2025-01-01T00:00:00+00:00", "profiling_consent": False, "region": "north"},
    {"event_id": "c2", "customer_id": "C9", "signup_at": "2027-01-01T00:00:00+00:00"},
]
KIND = {"transactions": "transaction", "events": "event", "customers": "customer"}


def _import(table: str, rows: list[dict], order: dict[str, tuple]) -> tuple[dict[str, dict], dict[str, str]]:
    """What ``indicators ingest`` makes of the rows: clean values and reasons, by event id (its
    clean rows come sorted by customer and time: ``order`` gives each event's key)."""
    source = pd.DataFrame(rows, dtype=object)
    result = normalize(table, source, ImportOptions(as_of=(NOW + pd.Timedelta(minutes=5)).to_pydatetime(), cancelled_prefix=""))
    reasons = dict(zip(result.quarantined["event_id"], result.quarantined["reason"], strict=True))
    good = sorted((r["event_id"] for r in rows if r["event_id"] not in reasons), key=lambda e: order.get(e, ()))
    clean = result.clean.astype(object).where(result.clean.notna(), None).to_dict("records")
    return {e: {k: v for k, v in row.items() if v is not None} for e, row in zip(good, clean, strict=True)}, reasons


def _events(table: str, rows: list[dict]) -> tuple[dict[str, dict], dict[str, str]]:
    events = []
    for row in rows:
        event = {**row, "kind": KIND[table]}
        if table == "customers":
            event["timestamp"] = T
        for name in ("timestamp", "signup_at"):
            if name in event:
                event[name] = datetime.fromisoformat(event[name]).astimezone(UTC)
        events.append(event)
    try:
        checked, _ = _checked(events, NOW)
    except EventsRejected as rejected:
        reasons = {event_id: reason for _, event_id, reason in rejected.problems}
        checked, _ = _checked([e for e in events if e["event_id"] not in reasons], NOW)
        return {r.event_id: r.values for r in checked}, reasons
    return {r.event_id: r.values for r in checked}, {}


@pytest.mark.parametrize(("table", "rows"), [
    ("transactions", TRANSACTIONS), ("transactions", FLOAT_IDS), ("events", EVENTS), ("customers", CUSTOMERS),
], ids=["transactions", "float-formatted-ids", "events", "customers"])
def test_events_are_checked_as_an_import_checks_rows(table: str, rows: list[dict]) -> None:
    accepted, event_reasons = _events(table, rows)
    time = "signup_at" if table == "customers" else "timestamp"
    imported, import_reasons = _import(table, rows, {e: (v["customer_id"], v[time]) for e, v in accepted.items()})
    assert event_reasons == import_reasons
    assert import_reasons or table == "transactions" and rows is FLOAT_IDS  # the cases do test refusals
    assert accepted.keys() == imported.keys()
    for event_id, values in imported.items():
        assert _same(accepted[event_id], values), (event_id, accepted[event_id], values)


def _same(event: dict, imported: dict) -> bool:
    def plain(value):
        if isinstance(value, pd.Timestamp | datetime):
            return pd.Timestamp(value).tz_convert("UTC")
        return value

    return {k: plain(v) for k, v in event.items()} == {k: plain(v) for k, v in imported.items()}
