"""Request and response models of the endpoint (pydantic): strict types, bounded sizes,
unknown fields rejected, and one error body for every client error (``ErrorResponse``)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictStr,
    StringConstraints,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from feature_repo.feature_views import BEHAVIOUR_FEATURES, PROFILE_FEATURES, TRANSACTION_FEATURES
from feature_repo.on_demand_views import RECENCY_FEATURES
from training.catalogue import MODELS
from training.data.schemas import EVENT_TYPES

MAX_BATCH = 1000
MAX_SEED = 100_000
MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 64  # a what-if payload's text features (region, age band, ...)

CustomerId = Annotated[StrictStr, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]


# Beyond, a moment is a typo (and pandas' times end in 2262). Well-formed, so a 422, not a 400.
MOMENT_YEARS = (1900, 2200)
OUT_OF_RANGE = "moment_out_of_range"


def _iso_moment(value: Any) -> datetime:
    """An ISO 8601 date-time string, read as UTC when it names no zone."""
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 date-time string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("expected an ISO 8601 date-time string, e.g. 2026-11-30T00:00:00Z") from None
    if not MOMENT_YEARS[0] <= moment.year <= MOMENT_YEARS[1]:
        raise PydanticCustomError(OUT_OF_RANGE, "expected a year between {low} and {high}",
                                  {"low": MOMENT_YEARS[0], "high": MOMENT_YEARS[1]})
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


Moment = Annotated[datetime, BeforeValidator(_iso_moment)]  # "2026-11-30T00:00:00Z", not a number


def _not_bool_or_text(value: Any) -> Any:
    if isinstance(value, bool | str):
        raise ValueError("expected an integer")
    return value


Count = Annotated[int, BeforeValidator(_not_bool_or_text)]  # 3 or 3.0 (JSON Schema's integers), not true or "3"
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]  # an int is a number too; a bool or "3" is not


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="Where in the request: body, field, index")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer: what went wrong, and per field where it did (validation)."""

    error: str
    detail: list[ErrorItem] = Field(default_factory=list)


class ProfileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_ids: list[CustomerId] = Field(min_length=1, max_length=MAX_BATCH, description="1 to 1,000 customer ids")
    as_of: Moment | None = Field(
        default=None,
        description="Moment recency is measured to (default: the time the stored features are current to, as "
        "`indicators score` uses); between that time and a year after the later of it and now",
    )
    reasons: Count = Field(
        default=3, ge=0, le=10,
        description="Top reasons per indicator (exact TreeSHAP, most of the cost of a call); 0 for none",
    )


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: CustomerId
    as_of: Moment | None = Field(default=None, description="As for /profile")


class LookalikeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed_customer_ids: list[CustomerId] = Field(min_length=10, max_length=MAX_SEED)
    audience_percent: Number = Field(gt=0, le=50, description="Audience size, % of the non-seed customers")


class Reason(BaseModel):
    feature: str
    value: Any = Field(description="The feature's value as read")
    contribution: float = Field(description="SHAP contribution, in the direction of the indicator")


# One field per indicator of the catalogue.
Indicators = create_model(
    "Indicators",
    __config__=ConfigDict(extra="allow"),
    __doc__="Every indicator; null where its model is not trained (a lookalike without its seed column).",
    **{i.name: (float | None, Field(description=f"from the {model.name} model")) for model in MODELS for i in model.indicators},
)


class Profile(BaseModel):
    customer_id: str
    indicators: Indicators
    segments: dict[str, str | None] = Field(description="value_tier, churn_risk_band, lifecycle_stage")
    reasons: dict[str, list[Reason]] = Field(description="Top reasons per indicator (empty with reasons 0)")
    model_versions: dict[str, str]
    features_read_at: str = Field(description="The moment recency was measured to (ISO 8601)")


class ProfileResponse(BaseModel):
    profiles: list[Profile]
    not_found: list[str] = Field(description="Ids without stored features")
    not_scored_without_consent: list[str] = Field(description="Customers who may not be profiled")


class UnusualFeature(BaseModel):
    feature: str
    value: float
    typical_min: float = Field(description="The middle 99.8% of the stored customers' values lie between these")
    typical_max: float


class ScoreResponse(BaseModel):
    indicators: Indicators
    segments: dict[str, str | None]
    reasons: dict[str, list[Reason]]
    model_versions: dict[str, str]
    features_read_at: str
    unusual_features: list[UnusualFeature] = Field(
        description="Payload values outside the range of the stored customers: the models extrapolate there, "
        "so read these indicators with care"
    )


class Contribution(BaseModel):
    feature: str
    value: Any
    contribution: float


class Explanation(BaseModel):
    base_value: float
    contributions: list[Contribution]


class ExplainResponse(BaseModel):
    customer_id: str
    found: bool
    not_scored_without_consent: bool | None = None
    explanations: dict[str, Explanation] | None = None


class AudienceMember(BaseModel):
    customer_id: str
    score: float = Field(description="Share of customers less similar to the seed (rank percentile), in [0, 1]")


class LookalikeResponse(BaseModel):
    """The audience and what held-out seed members say it is worth (``training.models.audience_table``)."""

    audience: list[AudienceMember] = Field(description="Non-seed customers, most similar first")
    audience_size: int
    seed_size: int = Field(description="Seed ids with features and profiling consent")
    seed_ids_without_consent: int = Field(description="Seed ids left out: no profiling consent")
    heldout_seed_size: int = Field(description="Seed members left out of training to measure the audience")
    heldout_seed_found: int = Field(description="Of those, how many the audience holds")
    heldout_seed_recall: float
    random_recall: float = Field(description="The recall a random audience of this size gets on average")
    lift: float
    p_value: float = Field(description="Chance that a random audience finds as many held-out members")
    signal: bool = Field(description="The audience finds held-out members significantly better than chance")
    expected_precision: float | None = Field(
        description="Share of the audience like the seed, if such customers are as common among the others as "
        "the seed is overall; null without signal"
    )
    expected_precision_interval: tuple[float, float] | None = Field(description="95% interval; null without signal")
    random_precision: float = Field(
        description="What a random audience gets: the seed's share of the customers who may be profiled"
    )
    message: str


# --- what-if payloads: every served feature, each in its domain --------------------------------


def feature_domain(name: str) -> tuple[float, float]:
    """The values a numeric feature can take: shares and rates in [0, 1]; revenue (net of
    refunds, so possibly negative) any finite number; counts, days, values and gaps >= 0."""
    if name.startswith("share_") or name.endswith(("_rate", "_share")) or "_rate_" in name:
        return 0.0, 1.0
    if name.startswith("revenue_"):
        return -math.inf, math.inf
    return 0.0, math.inf


def _field(name: str, dtype: Any) -> tuple[Any, Any]:
    """The type of a feature in a what-if payload; left out (not null) when unknown."""
    kind = str(dtype)
    if "Bool" in kind or "BOOL" in kind:
        return StrictBool, None
    if "String" in kind or "STRING" in kind:
        return Annotated[StrictStr, StringConstraints(max_length=MAX_TEXT_LENGTH)], None
    if "UnixTimestamp" in kind or "UNIX" in kind:
        return Moment, None
    low, high = feature_domain(name)
    bounds = {k: v for k, v in (("ge", low), ("le", high)) if math.isfinite(v)}
    return Annotated[float, Strict(), Field(allow_inf_nan=False, **bounds)], None


def _at_least_one(payload: BaseModel) -> BaseModel:
    if not payload.model_fields_set:
        raise ValueError("give at least one feature (the others are unknown)")
    return payload


SERVED_FEATURES = (*TRANSACTION_FEATURES, *BEHAVIOUR_FEATURES, *PROFILE_FEATURES, *RECENCY_FEATURES)
# Every served feature, all optional: a what-if payload sets any of them (at least one).
FeaturePayload = create_model(
    "FeaturePayload",
    __config__=ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1}),
    __validators__={"at_least_one": model_validator(mode="after")(_at_least_one)},
    **{field.name: _field(field.name, field.dtype) for field in SERVED_FEATURES},
)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    features: FeaturePayload = Field(description="At least one feature; the others are unknown")  # type: ignore[valid-type]


# Events (POST /events): the canonical raw tables' columns, one event a row. ``indicators
# ingest``'s checks apply on top (``serving.events``).
EventId = Annotated[StrictStr, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]
Text = Annotated[StrictStr, StringConstraints(max_length=MAX_TEXT_LENGTH)]
Amount = Annotated[float, Strict(), Field(allow_inf_nan=False, gt=-1e9, lt=1e9)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: EventId = Field(description="Unique per event: a repeated id is accepted once")
    customer_id: CustomerId
    timestamp: Moment = Field(description="When it happened (ISO 8601; no zone is UTC); not in the future")


class TransactionEvent(_Event):
    """A purchase line or a refund (negative amount or quantity). Lines of one order share its
    order_id and time."""

    # Either an amount, or a quantity and a unit price: said in the schema, so a client (or a
    # fuzzer) reading it knows.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"required": ["amount"], "properties": {"amount": {"type": "number"}}},
        {"required": ["quantity", "unit_price"], "properties": {"quantity": {"type": "number"}, "unit_price": {"type": "number"}}},
    ]})
    kind: Literal["transaction"]
    amount: Amount | None = Field(default=None, description="Refunds negative; default quantity x unit_price")
    order_id: Text | None = None
    product_id: Text | None = None
    quantity: Amount | None = None
    unit_price: Amount | None = None
    category: Text | None = None
    channel: Text | None = None
    discount: Amount | None = Field(default=None, ge=0, description="Amount taken off the list price")

    @model_validator(mode="after")
    def _priced(self) -> TransactionEvent:
        if self.amount is None and (self.quantity is None or self.unit_price is None):
            raise ValueError("a transaction needs an amount, or a quantity and a unit_price")
        return self


class BehaviourEvent(_Event):
    kind: Literal["event"]
    event_type: Literal[EVENT_TYPES]  # type: ignore[valid-type]


class CustomerEvent(_Event):
    """A new customer, or changed attributes of one (only the fields given change). A
    withdrawn ``profiling_consent`` stops their scoring at once."""

    kind: Literal["customer"]
    signup_at: Moment | None = Field(default=None, description="Default: the event's time, for a new customer")
    age_band: Text | None = None
    region: Text | None = None
    income_band: Text | None = None
    acquisition_channel: Text | None = None
    preferred_contact_channel: Text | None = None
    contact_frequency: Text | None = None
    marketing_consent: StrictBool | None = None
    profiling_consent: StrictBool | None = None
    interest_sustainable: StrictBool | None = None
    interest_premium: StrictBool | None = None
    interest_deals: StrictBool | None = None


Event = Annotated[TransactionEvent | BehaviourEvent | CustomerEvent, Field(discriminator="kind")]


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH, description="1 to 1,000 events")


class EventsResponse(BaseModel):
    accepted: int = Field(description="Events written to the journal and applied by this call")
    duplicates: int = Field(description="Events whose id was accepted before (or earlier in this call): skipped")
    suppressed: int = Field(description="Events of erased customers: dropped, as an import drops them")
    rejected: list[str] = Field(default_factory=list, description="Always empty: a call with a bad event is refused whole (422)")
