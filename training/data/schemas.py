"""Canonical raw tables: the boundary every importer and generator must meet.

The transaction log: ``customer_id`` (string), ``timestamp`` (UTC), ``amount`` (refunds
negative), optional ``order_id``, ``product_id``, ``quantity``, ``unit_price``, ``category``,
``channel`` and ``discount`` (the amount taken off the list price). Rows may be line items:
several rows share an ``order_id``, and the lines of an order are one order. Any optional
column may be missing; features that need it are then null.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa

UTC_TIMESTAMP = pd.DatetimeTZDtype("us", "UTC")

REQUIRED_COLUMNS: dict[str, list[str]] = {
    "transactions": ["customer_id", "timestamp", "amount"],
    "events": ["customer_id", "timestamp", "event_type"],
    "customers": ["customer_id", "signup_at"],
}

OPTIONAL_COLUMNS: dict[str, list[str]] = {
    "transactions": ["order_id", "product_id", "quantity", "unit_price", "category", "channel", "discount"],
    "events": [],
    "customers": [
        "age_band",
        "region",
        "income_band",
        "acquisition_channel",
        "preferred_contact_channel",
        "contact_frequency",
        "marketing_consent",
        "profiling_consent",
        "interest_sustainable",
        "interest_premium",
        "interest_deals",
    ],
}

EVENT_TYPES = (
    "session",
    "product_view",
    "cart_add",
    "email_send",
    "email_open",
    "email_click",
    "email_unsubscribe",
    "support_contact",
)

BOOLEAN_CUSTOMER_COLUMNS = (
    "marketing_consent",
    "profiling_consent",
    "interest_sustainable",
    "interest_premium",
    "interest_deals",
)

_ID = pa.Column(str, pa.Check.str_length(min_value=1), nullable=False)
_TS = pa.Column(UTC_TIMESTAMP, nullable=False)

SCHEMAS: dict[str, pa.DataFrameSchema] = {
    "transactions": pa.DataFrameSchema(
        {
            "customer_id": _ID,
            "timestamp": _TS,
            "amount": pa.Column(float, pa.Check(lambda s: s.abs() < 1e9), nullable=False),
            "order_id": pa.Column(str, nullable=True, required=False),
            "product_id": pa.Column(str, nullable=True, required=False),
            "quantity": pa.Column(float, nullable=True, required=False),
            "unit_price": pa.Column(float, nullable=True, required=False),
            "category": pa.Column(str, nullable=True, required=False),
            "channel": pa.Column(str, nullable=True, required=False),
            "discount": pa.Column(float, pa.Check.ge(0), nullable=True, required=False),
        },
        strict=True,
    ),
    "events": pa.DataFrameSchema(
        {
            "customer_id": _ID,
            "timestamp": _TS,
            "event_type": pa.Column(str, pa.Check.isin(EVENT_TYPES), nullable=False),
        },
        strict=True,
    ),
    "customers": pa.DataFrameSchema(
        {
            "customer_id": pa.Column(str, pa.Check.str_length(min_value=1), unique=True),
            "signup_at": _TS,
            **{
                name: pa.Column(
                    "boolean" if name in BOOLEAN_CUSTOMER_COLUMNS else str,
                    nullable=True,
                    required=False,
                    coerce=name in BOOLEAN_CUSTOMER_COLUMNS,
                )
                for name in OPTIONAL_COLUMNS["customers"]
            },
        },
        strict=True,
    ),
}
