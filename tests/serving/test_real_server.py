"""`bentoml serve` as a real process on a free port: it answers over HTTP what the batch wrote."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from serving.batch import score_all


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained):
    config, _ = trained
    summary = score_all(config)
    port = _free_port()
    env = {
        **os.environ,
        "INDICATORS_DATA_DIR": str(config.data_dir),
        "INDICATORS_MLFLOW_DIR": str(config.mlflow_dir),
        "BENTOML_DO_NOT_TRACK": "True",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    bentoml = Path(sys.executable).with_name("bentoml")
    process = subprocess.Popen(
        [str(bentoml), "serve", "serving.service:CustomerIndicators", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"bentoml serve exited: {process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("bentoml serve was not ready within 120 s")
        yield url, summary
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


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
