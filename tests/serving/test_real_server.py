"""`bentoml serve` as a real process on a free port: it answers over HTTP what the batch wrote."""

from __future__ import annotations

import httpx
import pandas as pd
import pytest

from serving.batch import score_all
from serving.server import ServerFailed, running_server


@pytest.fixture(scope="module")
def server(trained):
    config, _ = trained
    summary = score_all(config)
    try:
        with running_server(config) as url:
            yield url, summary
    except ServerFailed as error:
        pytest.fail(str(error))


def test_the_served_profile_equals_the_batch_scores(server) -> None:
    url, summary = server
    scores = pd.read_parquet(summary.parquet).set_index("customer_id")
    ids = scores.index[:5].tolist()
    response = httpx.post(
        f"{url}/profile", json={"customer_ids": ids, "as_of": summary.scored_at.isoformat()}, timeout=60
    )
    assert response.status_code == 200, response.text
    for profile in response.json()["profiles"]:
        expected = scores.loc[profile["customer_id"]]
        for name in ("p_churn", "p_purchase_30d", "expected_purchases", "expected_revenue", "lookalike_top_value_score"):
            assert profile["indicators"][name] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), name
        assert profile["segments"]["value_tier"] == expected["value_tier"]
        assert profile["segments"]["lifecycle_stage"] == expected["lifecycle_stage"]


def test_client_errors_over_http_are_4xx(server) -> None:
    url, _ = server
    bad = httpx.post(f"{url}/profile", content=b"{not json", headers={"content-type": "application/json"}, timeout=30)
    assert 400 <= bad.status_code < 500


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
        with running_server(config, target="customer-indicators:latest", cwd=tmp_path) as url:
            response = httpx.post(f"{url}/profile", json={"customer_ids": ids, "as_of": summary.scored_at.isoformat()}, timeout=60)
    except ServerFailed as error:
        pytest.fail(str(error))
    assert response.status_code == 200, response.text
    for profile in response.json()["profiles"]:
        assert profile["indicators"]["p_churn"] == pytest.approx(scores.loc[profile["customer_id"], "p_churn"], rel=1e-9)
