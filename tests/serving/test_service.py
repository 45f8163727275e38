"""The endpoint in-process (BentoML TestClient): every route and the client errors."""

from __future__ import annotations

import pandas as pd
import pytest
from starlette.testclient import TestClient

from tests.conftest import API_KEY, AUTH


@pytest.fixture(scope="module")
def client(trained, service_app):
    config, _ = trained
    mp = pytest.MonkeyPatch()
    mp.setenv("INDICATORS_DATA_DIR", str(config.data_dir))
    mp.setenv("INDICATORS_MLFLOW_DIR", str(config.mlflow_store))
    mp.setenv("INDICATORS_API_KEY", API_KEY)
    try:
        with TestClient(service_app, headers=AUTH) as test_client:
            yield test_client
    finally:
        mp.undo()  # a failed start must not leave this world's paths to later tests


def _ids(trained, consent: bool, n: int) -> list[str]:
    config, _ = trained
    profile = pd.read_parquet(config.paths.features / "customer_profile.parquet")
    return profile.loc[profile["profiling_consent"] == consent, "customer_id"].head(n).tolist()


def test_every_route_but_health_and_readiness_answers_401_without_a_valid_key(client, trained) -> None:
    from serving.access import OPEN_PATHS, KeyStore

    config, _ = trained
    spec = client.get("/docs.json").json()
    routes = [(path, method.upper()) for path, item in spec["paths"].items() for method in item if path not in OPEN_PATHS]
    assert {("/profile", "POST"), ("/metadata", "GET"), ("/lookalike", "POST")} <= set(routes)
    store = KeyStore(config.paths.api_keys)
    revoked_key, revoked = store.create("gone", ["admin"])
    store.revoke(revoked.key_id)
    for path, method in [*routes, ("/metrics", "GET"), ("/docs.json", "GET"), ("/", "GET")]:
        for authorization in ("", "Bearer", "Bearer wrong", f"Bearer {revoked_key}", f"Basic {API_KEY}"):
            response = client.request(method, path, headers={"Authorization": authorization}, json={})
            assert response.status_code == 401, (path, authorization, response.status_code)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "error" in response.json() and API_KEY not in response.text
    for open_path in ("/livez", "/healthz", "/readyz"):
        assert client.get(open_path, headers={"Authorization": ""}).status_code == 200


def test_a_key_without_the_routes_scope_gets_403(client, trained) -> None:
    from serving.access import KeyStore

    config, _ = trained
    store = KeyStore(config.paths.api_keys)
    events_only, _ = store.create("stream", ["events:write"])
    reader, _ = store.create("app", ["profiles:read"])
    admin, _ = store.create("ops", ["admin"])
    body = {"customer_ids": ["C00000001"]}
    refused = client.post("/profile", json=body, headers={"Authorization": f"Bearer {events_only}"})
    assert refused.status_code == 403 and "needs 'profiles:read'" in refused.json()["error"]
    assert client.post("/profile", json=body, headers={"Authorization": f"Bearer {reader}"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    assert client.post("/profile", json=body, headers={"Authorization": f"Bearer {admin}"}).status_code == 200


def test_profile_scores_known_consenting_customers_and_lists_the_rest(client, trained) -> None:
    ok, refused = _ids(trained, True, 3), _ids(trained, False, 1)
    response = client.post("/profile", json={"customer_ids": [*ok, *refused, "nobody"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [p["customer_id"] for p in body["profiles"]] == ok
    assert body["not_found"] == ["nobody"] and body["not_scored_without_consent"] == refused
    profile = body["profiles"][0]
    assert 0 <= profile["indicators"]["p_churn"] <= 1
    assert len(profile["reasons"]["p_churn"]) == 3
    assert set(profile["segments"]) == {"value_tier", "churn_risk_band", "lifecycle_stage"}
    assert profile["model_versions"]["purchase_timing"]


@pytest.mark.parametrize(
    "body",
    [
        '{"customer_ids": []}',
        '{"customer_ids": ["a"], "unknown": 1}',
        '{"customer_ids": [1, 2]}',
        '{"customer_ids": ["a"',
        "{}",
        '{"customer_ids": ' + str(["x"] * 1001).replace("'", '"') + "}",
    ],
)
def test_bad_requests_get_a_400_with_a_message(client, body: str) -> None:
    response = client.post("/profile", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "error" in response.json()


def test_score_takes_a_partial_payload_and_rejects_unknown_fields(client) -> None:
    response = client.post("/score", json={"features": {"days_since_last_purchase": 5.0, "purchase_days_365d": 6}})
    assert response.status_code == 200, response.text
    assert 0 <= response.json()["indicators"]["p_churn"] <= 1
    assert client.post("/score", json={"features": {"shoe_size": 44}}).status_code == 400


def test_explain_and_metadata(client, trained) -> None:
    [customer] = _ids(trained, True, 1)
    body = client.post("/explain", json={"customer_id": customer}).json()
    assert body["found"] and len(body["explanations"]["p_churn"]["contributions"]) > 40
    assert client.post("/explain", json={"customer_id": "nobody"}).json() == {"customer_id": "nobody", "found": False}
    [refused] = _ids(trained, False, 1)  # no SHAP values, no feature values of a customer who refused profiling
    assert client.post("/explain", json={"customer_id": refused}).json() == {
        "customer_id": refused, "found": True, "not_scored_without_consent": True,
    }
    response = client.get("/metadata")
    assert response.status_code == 200, response.text
    meta = response.json()
    assert set(meta["model_versions"]) >= {"purchase_timing", "clv"}
    assert meta["feature_service"] == "customer_indicators_v1"
    churn = meta["champions"]["purchase_timing"]
    assert churn["data_start"] and churn["data_end"] and "test" in churn["backtest_window"]
    assert 0.5 < churn["metrics"]["churn.auc"] <= 1 and not any(k.startswith("btyd.") for k in churn["metrics"])
    assert meta["champions"]["lookalike_top_value"]["data_end"] == churn["data_end"]  # nested runs inherit


def test_lookalike_ranks_non_seed_customers(client, trained) -> None:
    seeds = _ids(trained, True, 60)
    body = client.post("/lookalike", json={"seed_customer_ids": seeds, "audience_percent": 5}).json()
    assert body["seed_size"] == 60 and body["audience"] and len(body["audience"]) == body["audience_size"]
    assert not set(a["customer_id"] for a in body["audience"]) & set(seeds)
    assert all(0 <= a["score"] <= 1 for a in body["audience"])
    assert client.post("/lookalike", json={"seed_customer_ids": ["a"], "audience_percent": 5}).status_code == 400


def test_lookalike_neither_learns_from_nor_returns_customers_without_consent(client, trained) -> None:
    consenting, refused = _ids(trained, True, 40), _ids(trained, False, 20)
    body = client.post("/lookalike", json={"seed_customer_ids": [*consenting, *refused], "audience_percent": 50}).json()
    assert body["seed_size"] == 40 and body["seed_ids_without_consent"] == 20
    everyone_refusing = set(_ids(trained, False, 10**6))
    assert body["audience"] and not {a["customer_id"] for a in body["audience"]} & everyone_refusing
    response = client.post("/lookalike", json={"seed_customer_ids": [*consenting[:5], *refused], "audience_percent": 5})
    assert response.status_code == 422 and "20 left out for consent" in response.text


def test_a_random_seed_gets_no_signal_and_no_confident_precision(client, trained) -> None:
    """The first 60 consenting customers are a random seed: the old route answered an expected
    precision of 1.0 from clipped scores, every score 1.0, with a held-out recall of 0."""
    body = client.post("/lookalike", json={"seed_customer_ids": _ids(trained, True, 60), "audience_percent": 5}).json()
    assert body["signal"] is False and body["expected_precision"] is None and body["expected_precision_interval"] is None
    assert body["message"].startswith("No signal") and body["p_value"] >= 0.01
    profile = pd.read_parquet(trained[0].paths.features / "customer_profile.parquet", columns=["profiling_consent"])
    assert body["random_precision"] == pytest.approx(60 / int(profile["profiling_consent"].eq(True).sum()))
    scores = [a["score"] for a in body["audience"]]
    assert max(scores) < 1.0


def test_a_seed_with_signal_gets_a_measured_precision_and_unsaturated_scores(client, trained) -> None:
    config, _ = trained
    latent = pd.read_parquet(config.paths.truth / "latent.parquet")
    buyers = latent[latent["is_buyer"]]
    seeds = buyers.nlargest(len(buyers) // 10, "spend_level")["customer_id"].tolist()  # seen only through behaviour
    body = client.post("/lookalike", json={"seed_customer_ids": seeds, "audience_percent": 5}).json()
    assert body["signal"] is True and body["p_value"] < 0.01 and body["lift"] > 2, body["message"]
    low, high = body["expected_precision_interval"]
    assert body["random_precision"] < low <= body["expected_precision"] <= high <= 1
    assert body["message"].startswith(f"{body['heldout_seed_found']} of {body['heldout_seed_size']} held-out")
    scores = [a["score"] for a in body["audience"]]
    assert scores == sorted(scores, reverse=True) and max(scores) < 1.0
    assert len(set(scores)) >= 0.9 * len(scores)  # ranks, not a mass of ties at the top


def test_a_store_failure_at_run_time_is_a_503(client, monkeypatch: pytest.MonkeyPatch) -> None:
    from feast import FeatureStore

    def broken(*args, **kwargs):
        raise ConnectionError("redis went away")

    monkeypatch.setattr(FeatureStore, "get_online_features", broken)
    response = client.post("/profile", json={"customer_ids": ["C00000001"]})
    assert response.status_code == 503  # BentoML hides 5xx messages from clients


def test_start_fails_fast_without_champions(trained, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.scoring import ChampionMissing
    from serving.service import CustomerIndicators

    config, _ = trained
    monkeypatch.setenv("INDICATORS_DATA_DIR", str(config.data_dir))
    monkeypatch.setenv("INDICATORS_MLFLOW_DIR", str(tmp_path / "empty-mlflow"))
    with pytest.raises(ChampionMissing, match="indicators train --data-dir"):
        CustomerIndicators.inner()  # what BentoML calls at start


def test_start_fails_fast_without_an_online_store(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.service import CustomerIndicators

    monkeypatch.setenv("INDICATORS_DATA_DIR", str(tmp_path / "nothing"))
    with pytest.raises(RuntimeError, match="no online store"):
        CustomerIndicators.inner()


def test_start_fails_fast_when_the_online_store_holds_no_features(trained, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store file without the views' tables (never written, or a copy made by hand) stops the
    start with what to run, not a 503 on every request."""
    import shutil

    from serving.service import CustomerIndicators
    from training.features.online_store import StoreNotWritten

    config, _ = trained
    feast_dir = tmp_path / "data" / "feast"
    feast_dir.mkdir(parents=True)
    shutil.copy(config.paths.feast / "registry.db", feast_dir / "registry.db")
    (feast_dir / "online_store.db").touch()
    monkeypatch.setenv("INDICATORS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("INDICATORS_MLFLOW_DIR", str(config.mlflow_store))
    with pytest.raises(StoreNotWritten, match="make train"):
        CustomerIndicators.inner()


def test_a_bulk_call_answers_what_single_calls_answer(client, trained) -> None:
    """Bulk calls with reasons take the one-core lane (``bulk_lane``): the same numbers and reasons."""
    from serving.service import BULK_CUSTOMERS

    ids = _ids(trained, True, BULK_CUSTOMERS + 5)
    bulk = client.post("/profile", json={"customer_ids": ids, "reasons": 3}).json()["profiles"]
    single = [client.post("/profile", json={"customer_ids": [c], "reasons": 3}).json()["profiles"][0] for c in ids]
    assert len(bulk) == len(ids)
    for one, many in zip(single, bulk, strict=True):
        assert one["customer_id"] == many["customer_id"] and one["segments"] == many["segments"]
        assert one["indicators"] == pytest.approx(many["indicators"], rel=1e-9, nan_ok=True)
        for indicator, reasons in one["reasons"].items():
            assert [r["feature"] for r in reasons] == [r["feature"] for r in many["reasons"][indicator]]
