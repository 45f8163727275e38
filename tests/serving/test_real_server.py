"""`bentoml serve` as a real process on a free port: it answers over HTTP what the batch wrote."""

from __future__ import annotations

import httpx
import pandas as pd
import pytest

from serving.batch import score_all
from serving.server import ServerFailed, running_server
from tests.conftest import API_KEY, AUTH


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    config, _ = trained
    summary = score_all(config)
    log = tmp_path_factory.mktemp("server") / "server.log"
    try:
        with running_server(config, api_key=API_KEY, log_path=log) as url:
            yield url, summary, log
    except ServerFailed as error:
        pytest.fail(str(error))


def test_the_served_profile_equals_the_batch_scores(server) -> None:
    url, summary, _ = server
    scores = pd.read_parquet(summary.parquet).set_index("customer_id")
    ids = scores.index[:5].tolist()
    response = httpx.post(
        f"{url}/profile", json={"customer_ids": ids, "as_of": summary.scored_at.isoformat()}, headers=AUTH, timeout=60
    )
    assert response.status_code == 200, response.text
    for profile in response.json()["profiles"]:
        expected = scores.loc[profile["customer_id"]]
        for name in ("p_churn", "p_purchase_30d", "expected_purchases", "expected_revenue", "lookalike_top_value_score"):
            assert profile["indicators"][name] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), name
        assert profile["segments"]["value_tier"] == expected["value_tier"]
        assert profile["segments"]["lifecycle_stage"] == expected["lifecycle_stage"]


def test_client_errors_over_http_are_4xx(server) -> None:
    url, _, _ = server
    bad = httpx.post(f"{url}/profile", content=b"{not json", headers={**AUTH, "content-type": "application/json"}, timeout=30)
    assert 400 <= bad.status_code < 500


def test_api_keys_never_reach_the_log(server, trained) -> None:
    from serving.access import KeyStore

    url, _, log = server
    config, _ = trained
    store = KeyStore(config.paths.api_keys)
    good, _ = store.create("logged?", ["profiles:read"])
    wrong_scope_key, _ = store.create("stream-2", ["events:write"])
    bad = good[:-4] + "XXXX"
    for key, status in ((good, 200), (bad, 401), (wrong_scope_key, 403)):
        response = httpx.post(f"{url}/profile", json={"customer_ids": ["C00000001"]}, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert response.status_code == status, response.text
    assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200  # open without a key
    written = log.read_text()
    assert "/profile" in written  # the access log is on, and the requests reached it
    for key in (good, bad, wrong_scope_key, API_KEY):
        assert key not in written and key.rsplit("_", 1)[-1] not in written


def test_the_built_bento_serves_offline(trained, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make bento` builds with the package index out of reach (UV_OFFLINE), and the Bento
    serves, run away from the checkout: the same profile as the batch scores."""
    import subprocess

    from training.config import PROJECT_ROOT

    config, _ = trained
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    built = subprocess.run(["make", "-s", "bento"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert 'Successfully built Bento(tag="customer-indicators:' in built.stdout + built.stderr
    summary = score_all(config)
    scores = pd.read_parquet(summary.parquet).set_index("customer_id")
    ids = scores.index[:3].tolist()
    try:
        with running_server(config, target="customer-indicators:latest", cwd=tmp_path, api_key=API_KEY) as url:
            response = httpx.post(f"{url}/profile", json={"customer_ids": ids, "as_of": summary.scored_at.isoformat()}, headers=AUTH, timeout=60)
    except ServerFailed as error:
        pytest.fail(str(error))
    assert response.status_code == 200, response.text
    for profile in response.json()["profiles"]:
        assert profile["indicators"]["p_churn"] == pytest.approx(scores.loc[profile["customer_id"], "p_churn"], rel=1e-9)
