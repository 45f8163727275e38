"""The batch views' features for one customer, computed in Python from that customer's rows.

``sql/`` defines the features; this is the same definition, line for line, for the moment an
event is accepted: DuckDB spends far longer planning the SQL's CTEs for one customer than
Python spends computing that customer's row. Tests hold the two equal, feature by feature, over
random event sequences (``tests/features/test_row_features.py``). Change both together.

Inputs are one customer's rows of the raw log: transactions as dicts (``timestamp``,
``amount``, ``order_id``, ``discount``, ``category``), events as (time, event type) pairs,
and the customer's record (``signup_at`` and the profile columns) or None. Times are UTC
datetimes, all aware or all naive.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections import defaultdict
from datetime import datetime, timedelta

from training.data.schemas import OPTIONAL_COLUMNS

CATEGORIES = ("apparel", "home", "electronics", "beauty", "grocery", "sustainable")
PROFILE_COLUMNS = tuple(OPTIONAL_COLUMNS["customers"])  # the customers table's attributes, consents included


def _day(ts: datetime) -> datetime:
    return ts.replace(hour=0, minute=0, second=0, microsecond=0)


def _sum(values: list[float]) -> float:
    """``sum(x ORDER BY x)``: added in ascending order, as the SQL does."""
    total = 0.0
    for value in sorted(values):
        total += value
    return total


def _avg(values: list[float]) -> float | None:
    return _sum(values) / len(values) if values else None


def _stddev_samp(values: list[float]) -> float | None:
    """``stddev_samp(x ORDER BY x)``: Welford's update in ascending order, as DuckDB computes it."""
    if len(values) < 2:
        return None
    count, mean, m2 = 0, 0.0, 0.0
    for value in sorted(values):
        count += 1
        delta = value - mean
        mean += delta / count
        m2 += delta * (value - mean)
    return math.sqrt(m2 / (count - 1))


def _orders(transactions: list[dict]) -> list[tuple[datetime, float, float | None]]:
    """``sql/orders.sql``: the lines of an order (customer, order id, time, sign) are one order."""
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    orders = []
    for line in transactions:
        if line["amount"] == 0:
            continue
        if line.get("order_id") is None:
            orders.append((line["timestamp"], line["amount"], line.get("discount")))
        else:
            grouped[(line["order_id"], line["timestamp"], line["amount"] > 0)].append(line)
    for (_, ts, _), lines in grouped.items():
        discounts = [x["discount"] for x in lines if x.get("discount") is not None]
        orders.append((ts, _sum([x["amount"] for x in lines]), max(discounts) if discounts else None))
    return orders


def transaction_features(customer: dict | None, transactions: list[dict], cutoff: datetime) -> dict | None:
    """``sql/transactions.sql`` for one customer at ``cutoff``; None outside its universe."""
    seen = [t for t in transactions if t["timestamp"] <= cutoff]
    signed_up = customer is not None and customer.get("signup_at") is not None and customer["signup_at"] <= cutoff
    if not signed_up and not seen:
        return None
    tx = [o for o in _orders(transactions) if o[0] <= cutoff]
    bought = [o for o in tx if o[1] > 0]
    days = sorted({_day(o[0]) for o in bought})
    gaps = [(b - a).total_seconds() // 3600 / 24.0 for a, b in itertools.pairwise(days)]

    since = {n: cutoff - timedelta(days=n) for n in (30, 90, 180, 365)}
    windows = {n: len(days) - bisect_right(days, start) for n, start in since.items()}
    revenue = {n: _sum([o[1] for o in tx if o[0] > start]) for n, start in since.items()}
    refunds = [o[1] for o in tx if o[1] < 0]
    revenue_total = _sum([o[1] for o in tx])
    refund_amount = -_sum(refunds)
    discounted = [float(o[2] > 0) for o in bought if o[2] is not None]
    lines = [t for t in seen if t["amount"] > 0]
    named = [t["category"].lower() for t in lines if t.get("category") is not None]
    counts: dict[str, int] = defaultdict(int)
    for c in named:
        counts[c] += 1
    entropy = 0.0
    for p in sorted(n / len(named) for n in counts.values()):  # sum(p * ln(p) ORDER BY p)
        entropy += p * math.log(p)
    orders_total = len(bought)
    d90, d365 = windows[90], windows[365]
    return {
        "first_purchase_at": min(o[0] for o in bought) if bought else None,
        "last_purchase_at": max(o[0] for o in bought) if bought else None,
        "purchase_days_total": len(days),
        "purchase_days_30d": windows[30],
        "purchase_days_90d": d90,
        "purchase_days_180d": windows[180],
        "purchase_days_365d": d365,
        "revenue_total": revenue_total,
        "revenue_30d": revenue[30],
        "revenue_90d": revenue[90],
        "revenue_180d": revenue[180],
        "revenue_365d": revenue[365],
        "avg_order_value": _avg([o[1] for o in bought]),
        "max_order_value": max(o[1] for o in bought) if bought else None,
        "orders_total": orders_total,
        "gap_mean_days": _avg(gaps),
        "gap_std_days": _stddev_samp(gaps),
        "purchase_trend_90d_365d": d90 / max(d365 / 4.0, 0.25),
        "revenue_trend_90d_365d": revenue[90] / max(abs(revenue[365]) / 4.0, 1.0),
        "refund_rate": len(refunds) / max(orders_total, 1),
        "refund_amount_share": refund_amount / max(revenue_total + refund_amount, 1.0),
        "discount_share": _avg(discounted),
        **{f"share_{c}": _avg([float(x == c) for x in named]) for c in CATEGORIES},
        "category_count": len(counts),
        "category_entropy": abs(entropy),
    }


EVENT_WINDOWS = {  # feature -> (event type, days)
    "sessions_30d": ("session", 30),
    "sessions_90d": ("session", 90),
    "product_views_30d": ("product_view", 30),
    "product_views_90d": ("product_view", 90),
    "cart_adds_30d": ("cart_add", 30),
    "cart_adds_90d": ("cart_add", 90),
    "email_sends_90d": ("email_send", 90),
    "support_contacts_90d": ("support_contact", 90),
    "support_contacts_365d": ("support_contact", 365),
}
ENGAGEMENT = ("session", "email_open", "email_click")


def behaviour_features(
    customer: dict | None, transactions: list[dict], events: list[tuple[datetime, str]], cutoff: datetime
) -> dict | None:
    """``sql/behaviour.sql`` for one customer at ``cutoff``; None outside its universe.
    ``events`` are (time, event type) pairs."""
    times: dict[str, list[datetime]] = defaultdict(list)
    for ts, kind in events:
        if ts <= cutoff:
            times[kind].append(ts)
    signed_up = customer is not None and customer.get("signup_at") is not None and customer["signup_at"] <= cutoff
    if not signed_up and not times:
        return None
    for values in times.values():
        values.sort()

    def count(kind: str, days: int | None = None) -> int:
        values = times.get(kind, [])
        return len(values) if days is None else len(values) - bisect_right(values, cutoff - timedelta(days=days))

    out = {name: count(kind, days) for name, (kind, days) in EVENT_WINDOWS.items()}
    since90 = cutoff - timedelta(days=90)
    purchase_days = {_day(t["timestamp"]) for t in transactions if since90 < t["timestamp"] <= cutoff and t["amount"] > 0}
    cart_days = {_day(ts) for ts in times.get("cart_add", []) if ts > since90}
    abandoned = len(cart_days - purchase_days)
    opens_90d, clicks_90d = count("email_open", 90), count("email_click", 90)
    sends_total, opens_total = count("email_send"), count("email_open")
    engaged = [times[kind][-1] for kind in ENGAGEMENT if times.get(kind)]
    sends_90d = out["email_sends_90d"]
    return {
        "sessions_30d": out["sessions_30d"],
        "sessions_90d": out["sessions_90d"],
        "sessions_trend_30d_90d": out["sessions_30d"] / max(out["sessions_90d"] / 3.0, 1.0 / 3.0),
        "product_views_30d": out["product_views_30d"],
        "product_views_90d": out["product_views_90d"],
        "cart_adds_30d": out["cart_adds_30d"],
        "cart_adds_90d": out["cart_adds_90d"],
        "abandoned_cart_days_90d": abandoned,
        "cart_abandonment_rate_90d": abandoned / len(cart_days) if cart_days else None,
        "email_sends_90d": sends_90d,
        "email_open_rate_90d": opens_90d / sends_90d if sends_90d else None,
        "email_click_rate_90d": clicks_90d / sends_90d if sends_90d else None,
        "email_open_rate_total": opens_total / sends_total if sends_total else None,
        "unsubscribed": count("email_unsubscribe") > 0,
        "support_contacts_90d": out["support_contacts_90d"],
        "support_contacts_365d": out["support_contacts_365d"],
        "last_engagement_at": max(engaged) if engaged else None,
    }


def customer_record(records: list[dict]) -> dict | None:
    """The ``customers`` view of ``snapshots.create_log_views`` for one customer, from its
    ``records`` in order (the raw table's or, without one, ``{"signup_at": first activity}``;
    then the journal's): per column the latest value given, the earliest signup given."""
    signup = next((r["signup_at"] for r in records if r.get("signup_at") is not None), None)
    if not records:
        return None
    record = {"signup_at": signup}
    for column in PROFILE_COLUMNS:
        record[column] = next((r[column] for r in reversed(records) if r.get(column) is not None), None)
    return record
