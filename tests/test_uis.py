"""`make mlflow-ui`, `make feast-ui` and `make notebooks` on the trained world: each answers its
home page and shows that world's runs, feature views or notebooks, on a free loopback port, and is stopped afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
START_SECONDS = 90  # two cores, maybe shared with other tests: each UI is up in ~6 s alone
STOP_SECONDS = 10
# The Makefile's own targets, without remaking the environment the tests already run in.
MAKE = ["make", "-s", "-o", ".venv/.synced"]


def _make_env() -> dict[str, str]:
    """This environment without a calling make's flags (``make test`` runs pytest)."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _stop(process: subprocess.Popen) -> None:
    """Stop the whole process group (make, the UI and its workers): TERM, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_SECONDS
        while time.monotonic() < deadline:
            process.poll()  # reap make, the group leader
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@contextlib.contextmanager
def _serve(target: str, data_dir: Path, port_variable: str, log: Path, *variables: str):
    """``make TARGET DATA=data_dir PORT_VARIABLE=<free port>`` in a process group of its own:
    yields its base URL once its home page answers 200; stops the group however the test ends."""
    port = _free_port()
    command = [*MAKE, target, f"DATA={data_dir}", f"{port_variable}={port}", *variables]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=_make_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"{target} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if _get(base + "/")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{target} did not answer 200 within {START_SECONDS} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield base
    finally:
        _stop(process)


@pytest.fixture()
def ui(tmp_path: Path):
    return lambda target, data_dir, port_variable, *variables: _serve(
        target, data_dir, port_variable, tmp_path / f"{target}.log", *variables)


def test_mlflow_ui_shows_the_trained_runs(trained, ui) -> None:
    config, _ = trained
    assert config.mlflow_store == (config.data_dir / "mlflow").resolve()  # the store make's MLFLOW_DIR names
    with ui("mlflow-ui", config.data_dir, "MLFLOW_PORT") as base:
        status, body = _get(base + "/ajax-api/2.0/mlflow/experiments/search?max_results=100")
        assert status == 200, body
        names = {e["name"] for e in json.loads(body).get("experiments", [])}
        assert names - {"Default"}, names


def test_feast_ui_shows_the_trained_feature_views(trained, ui) -> None:
    config, _ = trained
    with ui("feast-ui", config.data_dir, "FEAST_PORT") as base:
        status, body = _get(f"{base}/api/v1/feature_views?project={config.feast.project}")
        assert status == 200, body
        names = {v["spec"]["name"] for v in json.loads(body)["featureViews"]}
        assert "customer_transactions" in names, names


def test_notebooks_open_in_jupyter_with_the_projects_kernel(trained, ui) -> None:
    config, _ = trained
    token = "test-token-0123456789"
    with ui("notebooks", config.data_dir, "NOTEBOOK_PORT", f"NOTEBOOK_TOKEN={token}") as base:
        assert _get(f"{base}/api/contents")[0] == 403  # no token, no access
        status, body = _get(f"{base}/api/contents?token={token}")
        assert status == 200, body
        names = {item["name"] for item in json.loads(body)["content"]}
        assert "02_churn_explained.ipynb" in names, names
        status, body = _get(f"{base}/api/kernelspecs?token={token}")
        assert status == 200 and "python3" in json.loads(body)["kernelspecs"], body


@pytest.mark.parametrize(("target", "missing"), [("mlflow-ui", "no MLflow store"), ("feast-ui", "no Feast registry"),
                                                 ("notebooks", "no MLflow store")])
def test_a_ui_without_a_trained_world_says_so(tmp_path: Path, target: str, missing: str) -> None:
    done = subprocess.run([*MAKE, target, f"DATA={tmp_path}"], cwd=ROOT, env=_make_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and missing in done.stderr, done.stderr
    assert not any(tmp_path.iterdir())  # no empty store left behind
