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
    """A real server on a copy of the trained world (the fuzzer's events land in the copy)."""
    import shutil

    from training.config import Config

    original, _ = trained
    root = tmp_path_factory.mktemp("served") / "data"
    shutil.copytree(original.data_dir, root, symlinks=True)
    config = Config(data_dir=root, mlflow_dir=root / "mlflow")
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
    assert bad.status_code == 400 and set(bad.json()) == {"error", "detail"}


def test_api_keys_never_reach_the_log(server) -> None:
    from serving.access import KeyStore
    from training.config import Paths

    url, summary, log = server
    store = KeyStore(Paths(summary.parquet.parents[1]).api_keys)  # the served copy's keys
    good, _ = store.create("logged?", ["profiles:read"])
    wrong_scope_key, _ = store.create("stream-2", ["events:write"])
    bad = good[:-4] + ("abcd" if not good.endswith("abcd") else "efgh")  # a wrong secret
    for key, status in ((good, 200), (bad, 401), (wrong_scope_key, 403)):
        response = httpx.post(f"{url}/profile", json={"customer_ids": ["C00000001"]}, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert response.status_code == status, response.text
    assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200  # open without a key
    written = log.read_text()
    assert "/profile" in written  # the access log is on, and the requests reached it
    for key in (good, bad, wrong_scope_key, API_KEY):
        assert key not in written and key.rsplit("_", 1)[-1] not in written


def _post(url: str, path: str, **kwargs) -> httpx.Response:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    return httpx.post(f"{url}{path}", headers=headers, timeout=60, **kwargs)


def _is_error_body(response: httpx.Response) -> bool:
    body = response.json()
    return set(body) == {"error", "detail"} and isinstance(body["error"], str) and isinstance(body["detail"], list)


def test_without_as_of_the_endpoint_measures_to_the_features_time_as_the_batch_does(server) -> None:
    url, summary, _ = server
    scores = pd.read_parquet(summary.parquet).set_index("customer_id")
    ids = scores.index[:3].tolist()
    response = _post(url, "/profile", json={"customer_ids": ids, "reasons": 0})
    assert response.status_code == 200, response.text
    for profile in response.json()["profiles"]:
        assert pd.Timestamp(profile["features_read_at"]) == pd.Timestamp(summary.scored_at)
        assert profile["indicators"]["p_churn"] == pytest.approx(scores.loc[profile["customer_id"], "p_churn"], rel=1e-9)


@pytest.mark.parametrize("as_of", ["1970-01-01T00:00:00Z", "2100-01-01T00:00:00Z"])
def test_an_as_of_outside_the_served_range_is_refused_with_the_range(server, as_of: str) -> None:
    url, summary, _ = server
    for path, body in (("/profile", {"customer_ids": ["C00000001"], "as_of": as_of}), ("/explain", {"customer_id": "C00000001", "as_of": as_of})):
        response = _post(url, path, json=body)
        assert response.status_code == 422 and _is_error_body(response), response.text
        assert summary.scored_at.date().isoformat() in response.json()["error"]


@pytest.mark.parametrize(
    ("features", "status"),
    [
        ({}, 400),
        ({"days_since_last_purchase": -100}, 400),
        ({"refund_rate": 1.5}, 400),
        ({"purchase_days_365d": True}, 400),
        ({"purchase_days_365d": "3"}, 400),
        ({"signup_at": 0}, 400),
        ({"signup_at": "0001-01-01T00:00:00+01:00"}, 422),
        ({"signup_at": "1700000000"}, 400),
        ({"purchase_days_365d": None}, 400),
        ({"shoe_size": 44}, 400),
    ],
)
def test_score_refuses_values_outside_each_features_domain(server, features: dict, status: int) -> None:
    url, _, _ = server
    response = _post(url, "/score", json={"features": features})
    assert response.status_code == status and _is_error_body(response), response.text


def test_score_flags_a_payload_far_outside_the_stored_customers(server) -> None:
    url, _, _ = server
    ordinary = _post(url, "/score", json={"features": {"days_since_last_purchase": 20, "purchase_days_365d": 3}})
    assert ordinary.status_code == 200 and ordinary.json()["unusual_features"] == []
    extreme = _post(url, "/score", json={"features": {"days_since_last_purchase": 20, "purchase_days_365d": 1e308}})
    assert extreme.status_code == 200, extreme.text
    [flag] = extreme.json()["unusual_features"]
    assert flag["feature"] == "purchase_days_365d" and flag["typical_max"] < 1e308
    not_finite = _post(url, "/score", content=b'{"features": {"purchase_days_365d": NaN}}', headers={"content-type": "application/json"})
    assert not_finite.status_code == 400 and _is_error_body(not_finite)


def test_malformed_requests_get_4xx_in_one_shape_and_one_log_line(server) -> None:
    url, _, log = server
    cases = [
        (_post(url, "/profile", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}), 415),
        (_post(url, "/profile", content=b"{not json", headers={"content-type": "application/json"}), 400),
        (_post(url, "/profile", json={"customer_ids": ["C00000001"], "reasons": True}), 400),
        (_post(url, "/profile", json={"customer_ids": ["C00000001"], "reasons": "3"}), 400),
        (_post(url, "/profile", json={"customer_ids": ["x" * 129]}), 400),
        (_post(url, "/profile", json={"customer_ids": []}), 400),
        (_post(url, "/lookalike", json={"seed_customer_ids": ["a"] * 10, "audience_percent": 5}), 422),
        (_post(url, "/lookalike", json={"seed_customer_ids": ["a"] * 10, "audience_percent": 0}), 400),
        (_post(url, "/nowhere", json={}), 404),
        (httpx.get(f"{url}/profile", headers=AUTH, timeout=30), 405),
        (httpx.delete(f"{url}/metadata", headers=AUTH, timeout=30), 405),
    ]
    for response, status in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert _is_error_body(response), response.text
    long_id = cases[4][0]
    assert "x" * 129 not in long_id.text  # the input is not echoed back
    assert "Traceback" not in log.read_text()


def test_an_oversized_body_gets_413_without_being_read(server) -> None:
    url, _, _ = server
    from serving.guard import MAX_BODY_BYTES

    big = b'{"customer_ids": ["' + b"x" * (MAX_BODY_BYTES + 10) + b'"]}'
    declared = _post(url, "/profile", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and _is_error_body(declared)

    def chunks():  # no Content-Length: counted as it arrives
        for start in range(0, len(big), 65_536):
            yield big[start : start + 65_536]

    streamed = _post(url, "/profile", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server) -> None:
    """The served OpenAPI document, fuzzed: coverage and fuzzing phases, every check, at least
    1,000 generated cases, 0 failures (a valid 3.1 document, errors in their documented shape)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    url, _, log = server
    schemathesis = Path(sys.executable).with_name("schemathesis")
    command = [
        str(schemathesis), "--config-file", str(Path(__file__).with_name("schemathesis.toml")), "run", f"{url}/docs.json",
        "-H", f"Authorization: Bearer {API_KEY}", "--checks", "all", "--phases", "examples,coverage,fuzzing",
        "--max-examples", "150", "--seed", "7", "--no-color",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert generated and int(generated.group(1)) >= 1000 and generated.group(1) == generated.group(2), result.stdout[-1500:]
    assert "status=5" not in log.read_text()


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
