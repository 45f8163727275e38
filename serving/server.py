"""Run ``bentoml serve`` as a real process on 127.0.0.1 (the real-process test and the benchmark).

``running_server`` starts the service on a free port, waits for ``/readyz`` and always stops
the process on exit, so nothing outlives the caller.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from serving.access import ENV_KEY
from training.config import PROJECT_ROOT, Config


class ServerFailed(RuntimeError):
    """The server exited or did not become ready; the message holds the end of its stderr."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SERVICE = "CustomerIndicators"


def server_environment(config: Config) -> dict[str, str]:
    """What ``bentoml serve`` takes from the config: its number of worker processes, merged
    into any BentoML overrides already in the environment."""
    overrides = json.loads(os.environ.get("BENTOML_CONFIG_OVERRIDES") or "{}")
    overrides.setdefault("services", {}).setdefault(SERVICE, {})["workers"] = config.server_workers
    return {"BENTOML_CONFIG_OVERRIDES": json.dumps(overrides)}


@contextmanager
def running_server(
    config: Config,
    port: int | None = None,
    ready_timeout: float = 120.0,
    target: str = "serving.service:CustomerIndicators",
    cwd: Path = PROJECT_ROOT,
    api_key: str | None = None,
    log_path: Path | None = None,
    environ: dict[str, str] | None = None,
) -> Iterator[str]:
    """Yield the base URL of a ready ``bentoml serve`` for ``config``'s data and registry.
    ``target`` is the service in this checkout, or a built Bento's tag (run from ``cwd``);
    ``api_key`` is accepted by the server with every scope; its log goes to ``log_path``;
    ``environ`` adds to its environment (a profile's variables)."""
    port = port or free_port()
    env = {
        **os.environ,
        **server_environment(config),
        **(environ or {}),
        "INDICATORS_DATA_DIR": str(config.data_dir),
        "INDICATORS_MLFLOW_DIR": str(config.mlflow_store),
        "BENTOML_DO_NOT_TRACK": "True",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        **({ENV_KEY: api_key} if api_key else {}),
    }
    bentoml = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml), "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    # The server's log goes to a file: an unread pipe fills up (64 KiB) and blocks the server.
    with open(log_path, "w+b") if log_path else tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise ServerFailed(f"bentoml serve exited: {log.read().decode(errors='replace')[-2000:]}")
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerFailed(f"bentoml serve was not ready within {ready_timeout:.0f} s")
                time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
