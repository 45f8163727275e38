"""POST /events in-process: accepted once, fresh at once, refused whole when bad, consent and
erasure applied, scopes enforced."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from starlette.testclient import TestClient

from tests.conftest import API_KEY, AUTH


@pytest.fixture(scope="module")
def world(trained, service_app, tmp_path_factory):
    """A scored copy of the trained world, the endpoint on it, and "now" for its events."""
    from serving.batch import score_all
    from training.config import Config

    config, _ = trained
    root = tmp_path_factory.mktemp("events") / "data"
    shutil.copytree(config.data_dir, root)
    copy = Config(data_dir=root, mlflow_dir=root / "mlflow")
    score_all(copy)
    mp = pytest.MonkeyPatch()
    mp.setenv("INDICATORS_DATA_DIR", str(root))
    mp.setenv("INDICATORS_MLFLOW_DIR", str(root / "mlflow"))
    mp.setenv("INDICATORS_API_KEY", API_KEY)
    try:
        with TestClient(service_app, headers=AUTH) as client:
            yield copy, client
    finally:
        mp.undo()


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _journal_rows(config) -> int:
    from training.data import journal

    if not journal.journal_file(config.paths).exists():
        return 0
    connection = journal.connect(config.paths)
    try:
        return sum(len(rows) for rows in journal.rows(connection).values())
    finally:
        connection.close()


def _consenting(config, n: int) -> list[str]:
    profile = pd.read_parquet(config.paths.features / "customer_profile.parquet")
    return profile.loc[profile["profiling_consent"] == True, "customer_id"].tolist()[:n]  # noqa: E712


def _features(config, customer_id: str, moment: datetime) -> dict:
    from training.features import store as feature_store

    values = feature_store.online_features(feature_store.feature_store(config), [customer_id], moment)
    return {name: column[0] for name, column in values.items()}


def test_a_purchase_is_reflected_at_once_and_a_repeat_is_accepted_once(world) -> None:
    config, client = world
    scores = pd.read_parquet(config.paths.predictions / "scores.parquet")
    dormant = scores.sort_values("p_churn", ascending=False)["customer_id"].iloc[0]
    moment = _now()
    midnight = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0)
    before = client.post("/profile", json={"customer_ids": [dormant], "as_of": midnight.isoformat(), "reasons": 0}).json()
    old_features = _features(config, dormant, midnight)
    batch = {"events": [
        {"event_id": f"o-{dormant}", "kind": "transaction", "customer_id": dormant, "timestamp": moment.isoformat(),
         "amount": 42.5, "order_id": f"order-{dormant}"},
        {"event_id": f"e-{dormant}", "kind": "event", "customer_id": dormant, "timestamp": moment.isoformat(),
         "event_type": "email_open"},
    ]}
    first = client.post("/events", json=batch)
    assert first.status_code == 200, first.text
    assert first.json() == {"accepted": 2, "duplicates": 0, "suppressed": 0, "rejected": []}
    after = client.post("/profile", json={"customer_ids": [dormant], "reasons": 0}).json()
    [old], [new] = before["profiles"], after["profiles"]
    assert new["features_read_at"] == old["features_read_at"] == midnight.isoformat()  # the data's 'now' moved
    new_features = _features(config, dormant, midnight)
    assert new_features["days_since_last_purchase"] < 1 < old_features["days_since_last_purchase"]
    assert new_features["revenue_total"] == pytest.approx(old_features["revenue_total"] + 42.5)
    assert new["indicators"]["p_churn"] < old["indicators"]["p_churn"]
    assert new["indicators"]["p_purchase_30d"] > old["indicators"]["p_purchase_30d"]
    rows = _journal_rows(config)
    again = client.post("/events", json=batch).json()
    assert again == {"accepted": 0, "duplicates": 2, "suppressed": 0, "rejected": []}
    assert _journal_rows(config) == rows
    assert client.post("/profile", json={"customer_ids": [dormant], "reasons": 0}).json() == after


def test_a_first_event_creates_a_profile_without_a_batch_run(world) -> None:
    config, client = world
    moment = _now().isoformat()
    response = client.post("/events", json={"events": [
        {"event_id": "new-1", "kind": "customer", "customer_id": "NEW-CUSTOMER-1", "timestamp": moment, "profiling_consent": True},
        {"event_id": "new-2", "kind": "transaction", "customer_id": "NEW-CUSTOMER-1", "timestamp": moment, "amount": 30.0},
    ]})
    assert response.status_code == 200, response.text
    [profile] = client.post("/profile", json={"customer_ids": ["NEW-CUSTOMER-1"], "reasons": 0}).json()["profiles"]
    assert profile["segments"]["lifecycle_stage"] == "new"
    assert _features(config, "NEW-CUSTOMER-1", _now() + timedelta(days=1))["orders_total"] == 1


def test_a_withdrawn_consent_clears_the_scores_at_once(world) -> None:
    from training.features import store as feature_store

    config, client = world
    customer = _consenting(config, 30)[-1]
    store = feature_store.feature_store(config)

    def stored() -> dict:
        return store.get_online_features(["customer_predictions:p_churn", "customer_predictions:model_versions"],
                                         [{"customer_id": customer}]).to_dict()

    assert stored()["p_churn"] != [None]
    response = client.post("/events", json={"events": [
        {"event_id": f"withdraw-{customer}", "kind": "customer", "customer_id": customer, "timestamp": _now().isoformat(),
         "profiling_consent": False}]})
    assert response.status_code == 200, response.text
    profile = client.post("/profile", json={"customer_ids": [customer], "reasons": 0}).json()
    assert profile["not_scored_without_consent"] == [customer] and profile["profiles"] == []
    assert stored() == {"customer_id": [customer], "p_churn": [None], "model_versions": ["{}"]}
    # Nor do the batch and the lookalike audience take them, before any feature build.
    from serving.batch import score_all

    assert customer not in set(pd.read_parquet(score_all(config).parquet)["customer_id"])
    seeds = [c for c in _consenting(config, 60) if c != customer][:30]
    audience = client.post("/lookalike", json={"seed_customer_ids": [*seeds, customer], "audience_percent": 50}).json()
    assert audience["seed_ids_without_consent"] == 1
    assert customer not in {member["customer_id"] for member in audience["audience"]}


@pytest.mark.parametrize(("event", "reason"), [
    ({"timestamp": "2100-01-01T00:00:00Z"}, "future timestamp"),
    ({"customer_id": "   "}, "missing customer_id"),
])
def test_a_batch_with_a_bad_event_is_refused_whole_naming_it(world, event: dict, reason: str) -> None:
    config, client = world
    [customer] = _consenting(config, 1)
    good = {"event_id": "good-1", "kind": "event", "customer_id": customer, "timestamp": _now().isoformat(), "event_type": "session"}
    rows = _journal_rows(config)
    response = client.post("/events", json={"events": [good, {**good, "event_id": "bad-1", **event}]})
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == [{"loc": ["body", "events", 1], "msg": f"bad-1: {reason}", "type": "rejected_event"}]
    assert "bad-1" in body["error"]
    assert _journal_rows(config) == rows  # the good event was not applied either


@pytest.mark.parametrize("events", [
    [],
    [{"event_id": "x", "kind": "purchase", "customer_id": "C1", "timestamp": "2026-01-01T00:00:00Z"}],
    [{"event_id": "x", "kind": "event", "customer_id": "C1", "timestamp": "2026-01-01T00:00:00Z", "event_type": "dance"}],
    [{"event_id": "x", "kind": "transaction", "customer_id": "C1", "timestamp": "2026-01-01T00:00:00Z"}],
    [{"event_id": "x", "kind": "transaction", "customer_id": "C1", "timestamp": 1767225600, "amount": 1.0}],
    [{"event_id": f"x{i}", "kind": "event", "customer_id": "C1", "timestamp": "2026-01-01T00:00:00Z", "event_type": "session"}
     for i in range(1001)],
])
def test_malformed_batches_get_400(world, events: list) -> None:
    _, client = world
    response = client.post("/events", json={"events": events})
    assert response.status_code == 400, response.text
    assert response.json()["error"]


def test_events_need_the_write_scope_and_grant_nothing_else(world) -> None:
    from serving.access import KeyStore

    config, client = world
    keys = KeyStore(config.paths.api_keys)
    reader, _ = keys.create("reader", ["profiles:read"])
    writer, _ = keys.create("writer", ["events:write"])
    [customer] = _consenting(config, 1)
    batch = {"events": [{"event_id": "scoped-1", "kind": "event", "customer_id": customer, "timestamp": _now().isoformat(),
                         "event_type": "session"}]}
    assert client.post("/events", json=batch, headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    assert client.post("/events", json=batch, headers={"Authorization": f"Bearer {writer}"}).status_code == 200
    assert client.post("/profile", json={"customer_ids": [customer]}, headers={"Authorization": f"Bearer {writer}"}).status_code == 403


def test_an_erased_customers_events_are_erased_and_later_ones_dropped(world) -> None:
    from training.data import journal
    from training.erasure import erase

    config, client = world
    customer = _consenting(config, 40)[-1]
    event = {"event_id": "erase-1", "kind": "event", "customer_id": customer, "timestamp": _now().isoformat(), "event_type": "session"}
    assert client.post("/events", json={"events": [event]}).json()["accepted"] == 1
    report = erase(config, [customer])
    assert report.complete and str(journal.journal_file(config.paths)) in report.rows_removed
    assert journal.count_rows(config.paths, [customer]) == 0
    later = client.post("/events", json={"events": [{**event, "event_id": "erase-2"}]}).json()
    assert later == {"accepted": 0, "duplicates": 0, "suppressed": 1, "rejected": []}
    assert journal.count_rows(config.paths, [customer]) == 0
    assert client.post("/profile", json={"customer_ids": [customer], "reasons": 0}).json()["not_found"] == [customer]
