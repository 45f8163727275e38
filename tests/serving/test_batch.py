"""Batch enrichment: every consenting customer scored, in Parquet and in the online store."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from serving.batch import NothingToScore, score_all
from serving.scoring import Champions, value_tiers, value_tiers_of
from training.config import ScoringSettings
from training.dataset import features_at
from training.features import store as feature_store


def test_batch_scores_every_consenting_customer_and_writes_them_online(trained) -> None:
    """In slices: the tiers still rank everyone."""
    config, _ = trained
    summary = score_all(config, slice_size=400)
    scores = pd.read_parquet(summary.parquet)
    revenue = scores["expected_revenue"].to_numpy()
    assert (scores["value_tier"] == value_tiers(revenue, value_tiers_of(revenue))).all()
    assert set(summary.seconds) >= {"features", "scoring", "online_write"}
    profile = pd.read_parquet(config.paths.features / "customer_profile.parquet")
    consenting = set(profile.loc[profile["profiling_consent"].fillna(False).astype(bool), "customer_id"])
    assert set(scores["customer_id"]) == consenting and scores["customer_id"].is_unique
    assert summary.skipped_without_consent == len(profile) - len(consenting) > 0
    for column in ("p_churn", "p_purchase_7d", "p_purchase_30d", "p_purchase_90d"):
        assert scores[column].between(0, 1).all(), column
    assert (scores["p_purchase_7d"] <= scores["p_purchase_30d"] + 1e-12).all()
    np.testing.assert_allclose(scores["p_churn"], 1 - scores["p_purchase_90d"])
    assert set(scores["churn_risk_band"]) <= {"low", "medium", "high"}
    p_churn = scores["p_churn"].to_numpy()
    assert (scores["churn_risk_band"] == np.select([p_churn < 0.3, p_churn < 0.6], ["low", "medium"], "high")).all()

    store = feature_store.feature_store(config)
    sample = scores.iloc[[0, 399, 400, 401, 799, 800, len(scores) - 1]]  # around the slice edges
    online = store.get_online_features(
        features=[f"customer_predictions:{c}" for c in ("p_churn", "expected_revenue", "lifecycle_stage")],
        entity_rows=[{"customer_id": cid} for cid in sample["customer_id"]],
    ).to_dict()
    np.testing.assert_allclose(online["p_churn"], sample["p_churn"])
    np.testing.assert_allclose(online["expected_revenue"], sample["expected_revenue"])
    assert online["lifecycle_stage"] == sample["lifecycle_stage"].tolist()


def test_the_same_features_give_the_same_scores_with_reasons(trained) -> None:
    config, _ = trained
    summary = score_all(config)
    scores = pd.read_parquet(summary.parquet).set_index("customer_id")
    champions = Champions.load(config)
    store = feature_store.feature_store(config)
    ids = scores.index[:25]
    features = features_at(store, pd.DataFrame({"customer_id": ids, "cutoff": pd.Timestamp(summary.scored_at)}))
    records = champions.score(features, datetime.now(), reasons=3)
    for record in records:
        expected = scores.loc[record["customer_id"]]
        for name in ("p_churn", "expected_purchases", "expected_revenue", "lookalike_sustainable_score"):
            assert record["indicators"][name] == expected[name], name
        assert len(record["reasons"]["p_churn"]) == 3
        assert set(record["model_versions"]) == {"purchase_timing", "expected_purchases", "clv",
                                                 "lookalike_top_value", "lookalike_sustainable"}


def test_withdrawn_consent_clears_the_stored_indicators(trained) -> None:
    """A customer scored by one run who then withdraws consent has no indicators online after
    the next run (not the old ones)."""
    config, _ = trained
    profile_file = config.paths.features / "customer_profile.parquet"
    original = pd.read_parquet(profile_file)
    score_all(config)
    store = feature_store.feature_store(config)
    withdrawing = original.loc[original["profiling_consent"].fillna(False).astype(bool), "customer_id"].iloc[3]

    def stored() -> dict:
        return store.get_online_features(
            features=["customer_predictions:p_churn", "customer_predictions:value_tier"], entity_rows=[{"customer_id": withdrawing}]
        ).to_dict()

    def written_at() -> datetime:
        view = store.get_feature_view("customer_predictions")
        key = EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=withdrawing)])
        return store._get_provider().online_store.online_read(store.config, view, [key])[0][0]

    assert stored()["p_churn"][0] is not None
    first_write = written_at()
    time.sleep(1.0)  # the SQLite store keeps whole seconds: two runs within one would read as one time
    try:
        original.assign(profiling_consent=original["profiling_consent"].mask(original["customer_id"] == withdrawing, False)).to_parquet(profile_file)
        summary = score_all(config)
    finally:
        original.to_parquet(profile_file)
    assert withdrawing not in set(pd.read_parquet(summary.parquet)["customer_id"])
    assert stored() == {"customer_id": [withdrawing], "p_churn": [None], "value_tier": [None]}
    # Each run's rows are newer than the last (Redis keeps a row only when it is newer).
    assert written_at() > first_write


def test_customers_without_a_consent_record_are_scored_by_the_stated_policy(trained) -> None:
    """An empty value in a consent column is not consent: never scored. With no consent column
    at all (a transaction-only import), the policy decides: scored by default, not under "skip",
    and with nobody left the error says why. A refusal is never scored."""
    config, _ = trained
    profile_file = config.paths.features / "customer_profile.parquet"
    raw_file = config.paths.raw_table("customers")
    profile, raw = pd.read_parquet(profile_file), pd.read_parquet(raw_file)
    refused = set(profile.loc[profile["profiling_consent"] == False, "customer_id"])  # noqa: E712
    empty = profile["customer_id"].isin(profile["customer_id"].iloc[:300]) & (profile["profiling_consent"] == True)  # noqa: E712
    skip = replace(config, scoring=ScoringSettings(unknown_consent="skip"))
    try:
        profile.assign(profiling_consent=profile["profiling_consent"].mask(empty, None)).to_parquet(profile_file)
        with_column = set(pd.read_parquet(score_all(config).parquet)["customer_id"])
        raw.drop(columns="profiling_consent").to_parquet(raw_file)
        profile.assign(profiling_consent=None).to_parquet(profile_file)
        everyone = score_all(config)
        with pytest.raises(NothingToScore, match="no consent record.*unknown_consent='skip'"):
            score_all(skip)
    finally:
        profile.to_parquet(profile_file)
        raw.to_parquet(raw_file)
    empty_ids = set(profile.loc[empty, "customer_id"])
    assert empty_ids and not empty_ids & with_column and not refused & with_column
    assert everyone.scored == len(profile) and everyone.without_consent_record == len(profile)


@pytest.mark.services
def test_the_batch_writes_and_clears_indicators_in_redis(trained, production_profile) -> None:
    """The production profile for real: the scores land in Redis, and a re-run after a customer
    withdraws consent clears theirs there (Redis keeps a row only when it is newer, so each
    run's rows must carry a later time)."""
    config, _ = trained
    profile_file = config.paths.features / "customer_profile.parquet"
    original = pd.read_parquet(profile_file)
    consenting = original.loc[original["profiling_consent"].fillna(False).astype(bool), "customer_id"]
    withdrawing, staying = consenting.iloc[5], consenting.iloc[6]
    with production_profile(config) as (production, store):

        def stored(customer_id: str) -> dict:
            return store.get_online_features(
                features=["customer_predictions:p_churn", "customer_predictions:value_tier"], entity_rows=[{"customer_id": customer_id}]
            ).to_dict()

        first = pd.read_parquet(score_all(production).parquet).set_index("customer_id")
        for customer in (withdrawing, staying):
            assert stored(customer)["p_churn"] == [first.loc[customer, "p_churn"]]
            assert stored(customer)["value_tier"] == [first.loc[customer, "value_tier"]]
        try:
            original.assign(profiling_consent=original["profiling_consent"].mask(original["customer_id"] == withdrawing, False)).to_parquet(profile_file)
            score_all(production)
        finally:
            original.to_parquet(profile_file)
        assert stored(withdrawing) == {"customer_id": [withdrawing], "p_churn": [None], "value_tier": [None]}
        assert stored(staying)["p_churn"] == [first.loc[staying, "p_churn"]]
