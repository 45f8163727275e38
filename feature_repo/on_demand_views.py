"""Request-time features: ages of stored timestamps, computed at the request's ``as_of``.

Offline, ``as_of`` is each entity row's cutoff; online, the caller passes the current time.
Python mode, not pandas mode: an online request holds a few rows, for which building a pandas
frame costs several times the computation.
"""

from feast import Field, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, UnixTimestamp

from feature_repo.feature_views import customer_behaviour, customer_profile, customer_transactions

request_time = RequestSource(
    name="request_time",
    schema=[Field(name="as_of", dtype=UnixTimestamp)],
    description="The moment features are read for: the cutoff offline, now online.",
)

RECENCY_FEATURES = [
    Field(name="days_since_last_purchase", dtype=Float64),
    Field(name="days_since_first_purchase", dtype=Float64),
    Field(name="days_since_signup", dtype=Float64),
    Field(name="days_since_last_engagement", dtype=Float64),
    Field(name="recency_to_usual_gap", dtype=Float64),  # days since last purchase / mean gap
]


@on_demand_feature_view(
    sources=[customer_transactions, customer_behaviour, customer_profile, request_time],
    schema=RECENCY_FEATURES,
    mode="python",
    description="Ages of the last purchase, first purchase, signup and last engagement at as_of.",
)
def customer_recency(inputs: dict) -> dict:
    # Feast ships this function by its source text: it must not use module-level names.
    from datetime import UTC, datetime

    def days_between(later, earlier):
        if later is None or earlier is None:
            return None
        if isinstance(later, (int, float)):
            later = datetime.fromtimestamp(later, tz=UTC)
        if isinstance(earlier, (int, float)):
            earlier = datetime.fromtimestamp(earlier, tz=UTC)
        if later.tzinfo is None:
            later = later.replace(tzinfo=UTC)
        if earlier.tzinfo is None:
            earlier = earlier.replace(tzinfo=UTC)
        return (later - earlier).total_seconds() / 86_400.0

    out = {
        "days_since_last_purchase": [],
        "days_since_first_purchase": [],
        "days_since_signup": [],
        "days_since_last_engagement": [],
        "recency_to_usual_gap": [],
    }
    for i, moment in enumerate(inputs["as_of"]):
        since_last = days_between(moment, inputs["last_purchase_at"][i])
        gap = inputs["gap_mean_days"][i]
        out["days_since_last_purchase"].append(since_last)
        out["days_since_first_purchase"].append(days_between(moment, inputs["first_purchase_at"][i]))
        out["days_since_signup"].append(days_between(moment, inputs["signup_at"][i]))
        out["days_since_last_engagement"].append(days_between(moment, inputs["last_engagement_at"][i]))
        usable_gap = gap is not None and gap == gap and gap > 0
        out["recency_to_usual_gap"].append(since_last / gap if since_last is not None and usable_gap else None)
    return out
