"""Request models of the endpoint: pydantic, unknown fields rejected (a 400 naming them)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, create_model

from feature_repo.feature_views import BEHAVIOUR_FEATURES, PROFILE_FEATURES, TRANSACTION_FEATURES
from feature_repo.on_demand_views import RECENCY_FEATURES

MAX_BATCH = 1000


class ProfileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_ids: list[str] = Field(min_length=1, max_length=MAX_BATCH, description="1 to 1,000 customer ids")
    as_of: datetime | None = Field(default=None, description="Moment features are read for (default: now)")
    reasons: int = Field(
        default=3, ge=0, le=10,
        description="Top reasons per indicator (exact TreeSHAP, most of the cost of a call); 0 for none",
    )


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: str = Field(min_length=1)
    as_of: datetime | None = None


class LookalikeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed_customer_ids: list[str] = Field(min_length=10, max_length=100_000)
    audience_percent: float = Field(gt=0, le=50, description="Audience size, % of the non-seed customers")


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


def _python_type(field) -> type:
    name = str(field.dtype)
    if "Bool" in name or "BOOL" in name:
        return bool
    if "String" in name or "STRING" in name:
        return str
    if "UnixTimestamp" in name or "UNIX" in name:
        return datetime
    return float


# Every served feature, all optional: a what-if payload may set any subset.
FeaturePayload = create_model(
    "FeaturePayload",
    __config__=ConfigDict(extra="forbid"),
    **{
        field.name: (_python_type(field) | None, None)
        for field in (*TRANSACTION_FEATURES, *BEHAVIOUR_FEATURES, *PROFILE_FEATURES, *RECENCY_FEATURES)
    },
)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    features: FeaturePayload  # type: ignore[valid-type]
