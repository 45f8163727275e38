"""Feature views by kind: transactional, behavioural, profile.

Each view's fields are exactly the columns its SQL in ``sql/`` produces (a test checks it).
Stored timestamps (last purchase, last engagement, signup) feed the on-demand view that
computes their age at request time, so recency is exact at any cutoff.
"""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Bool, Float64, Int64, String, UnixTimestamp

from feature_repo.data_sources import (
    behaviour_push,
    predictions_push,
    profile_push,
    transactions_push,
)
from feature_repo.entities import customer
from training.catalogue import SEGMENTS, STORED_INDICATORS

# Snapshots are monthly: a cutoff more than this after the latest snapshot gets no values
# rather than silently stale ones.
SNAPSHOT_TTL = timedelta(days=62)

TRANSACTION_FEATURES = [
    Field(name="first_purchase_at", dtype=UnixTimestamp),
    Field(name="last_purchase_at", dtype=UnixTimestamp),
    Field(name="purchase_days_total", dtype=Int64, description="Distinct purchase days, all history"),
    Field(name="purchase_days_30d", dtype=Int64),
    Field(name="purchase_days_90d", dtype=Int64),
    Field(name="purchase_days_180d", dtype=Int64),
    Field(name="purchase_days_365d", dtype=Int64),
    Field(name="revenue_total", dtype=Float64, description="Net spend (refunds deducted), all history"),
    Field(name="revenue_30d", dtype=Float64),
    Field(name="revenue_90d", dtype=Float64),
    Field(name="revenue_180d", dtype=Float64),
    Field(name="revenue_365d", dtype=Float64),
    Field(name="avg_order_value", dtype=Float64),
    Field(name="max_order_value", dtype=Float64),
    Field(name="orders_total", dtype=Int64),
    Field(name="gap_mean_days", dtype=Float64, description="Mean days between purchase days"),
    Field(name="gap_std_days", dtype=Float64),
    Field(name="purchase_trend_90d_365d", dtype=Float64, description="Last quarter vs yearly average"),
    Field(name="revenue_trend_90d_365d", dtype=Float64),
    Field(name="refund_rate", dtype=Float64),
    Field(name="refund_amount_share", dtype=Float64),
    Field(name="discount_share", dtype=Float64),
    Field(name="share_apparel", dtype=Float64),
    Field(name="share_home", dtype=Float64),
    Field(name="share_electronics", dtype=Float64),
    Field(name="share_beauty", dtype=Float64),
    Field(name="share_grocery", dtype=Float64),
    Field(name="share_sustainable", dtype=Float64),
    Field(name="category_count", dtype=Int64),
    Field(name="category_entropy", dtype=Float64),
]

BEHAVIOUR_FEATURES = [
    Field(name="sessions_30d", dtype=Int64),
    Field(name="sessions_90d", dtype=Int64),
    Field(name="sessions_trend_30d_90d", dtype=Float64),
    Field(name="product_views_30d", dtype=Int64),
    Field(name="product_views_90d", dtype=Int64),
    Field(name="cart_adds_30d", dtype=Int64),
    Field(name="cart_adds_90d", dtype=Int64),
    Field(name="abandoned_cart_days_90d", dtype=Int64),
    Field(name="cart_abandonment_rate_90d", dtype=Float64),
    Field(name="email_sends_90d", dtype=Int64),
    Field(name="email_open_rate_90d", dtype=Float64),
    Field(name="email_click_rate_90d", dtype=Float64),
    Field(name="email_open_rate_total", dtype=Float64),
    Field(name="unsubscribed", dtype=Bool),
    Field(name="support_contacts_90d", dtype=Int64),
    Field(name="support_contacts_365d", dtype=Int64),
    Field(name="last_engagement_at", dtype=UnixTimestamp),
]

PROFILE_FEATURES = [
    Field(name="signup_at", dtype=UnixTimestamp),
    Field(name="age_band", dtype=String),
    Field(name="region", dtype=String),
    Field(name="income_band", dtype=String),
    Field(name="acquisition_channel", dtype=String),
    Field(name="preferred_contact_channel", dtype=String),
    Field(name="contact_frequency", dtype=String),
    Field(name="marketing_consent", dtype=Bool),
    Field(name="profiling_consent", dtype=Bool),
    Field(name="interest_sustainable", dtype=Bool),
    Field(name="interest_premium", dtype=Bool),
    Field(name="interest_deals", dtype=Bool),
]

customer_transactions = FeatureView(
    name="customer_transactions",
    entities=[customer],
    ttl=SNAPSHOT_TTL,
    schema=TRANSACTION_FEATURES,
    source=transactions_push,
    online=True,
    description="Recency, frequency, monetary value, gaps, trends, category mix, discounts, refunds.",
)

customer_behaviour = FeatureView(
    name="customer_behaviour",
    entities=[customer],
    ttl=SNAPSHOT_TTL,
    schema=BEHAVIOUR_FEATURES,
    source=behaviour_push,
    online=True,
    description="Sessions, views, cart adds and abandonment, e-mail engagement, support contacts.",
)

customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=timedelta(0),  # valid from signup, never expires
    schema=PROFILE_FEATURES,
    source=profile_push,
    online=True,
    description="Demographics, interests, consents and channels.",
)

PREDICTION_FEATURES = [
    *(Field(name=name, dtype=Float64) for name in STORED_INDICATORS),
    *(Field(name=name, dtype=String) for name in SEGMENTS),
    Field(name="model_versions", dtype=String, description="JSON: registered model -> version"),
]

customer_predictions = FeatureView(
    name="customer_predictions",
    entities=[customer],
    ttl=timedelta(0),
    schema=PREDICTION_FEATURES,
    source=predictions_push,
    online=True,
    description="Indicators written back by `indicators score` (batch enrichment).",
)
