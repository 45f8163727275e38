"""Faults: `kill -9` in the middle of each command, and the online store going away.

After a kill, the next run succeeds, the raw data is as before (every write is a rename of a
finished file), a killed `train` leaves the champions as they were, and no customer's online
prediction row mixes two runs. A Redis the test started itself on its own port is stopped
under a running endpoint: requests get 503 with a message, and the endpoint serves again,
without a restart, once Redis is back.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.conftest import API_KEY, AUTH

INDICATORS = str(Path(sys.executable).with_name("indicators"))


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.parquet"))}


def _killed(args: list[str], env: dict, after: str, timeout: float = 300) -> str:
    """Start ``indicators ARGS``, SIGKILL it (and anything it started) once ``after`` appears
    in its output, so it is still working; return what it printed."""
    process = subprocess.Popen([INDICATORS, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    seen = []
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        seen.append(line)
        if after in line or time.monotonic() > deadline:
            break
    return _kill(process, "".join(seen))


def _kill(process: subprocess.Popen, output: str = "") -> str:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"it had finished: nothing was killed mid-way\n{output}"
    return output


def _kill_once_open(args: list[str], env: dict, name: str, timeout: float = 120) -> None:
    """Start ``indicators ARGS`` and SIGKILL it once it holds a file named ``name`` open: past
    start-up, in the middle of its work."""
    process = subprocess.Popen([INDICATORS, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            targets = [os.readlink(f"/proc/{process.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{process.pid}/fd")]
        except OSError:
            targets = []
        if any(Path(target).name.startswith(name) for target in targets):
            break
        time.sleep(0.01)
    _kill(process)


def _run(args: list[str], env: dict) -> str:
    result = subprocess.run([INDICATORS, *args], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def world(trained, tmp_path_factory):
    """A copy of the trained world, scored, for commands to be killed in."""
    config, _ = trained
    root = tmp_path_factory.mktemp("faults") / "data"
    shutil.copytree(config.data_dir, root)
    env = {**os.environ, "INDICATORS_DATA_DIR": str(root), "INDICATORS_MLFLOW_DIR": str(root / "mlflow"), "COLUMNS": "200"}
    _run(["score"], env)
    return root, env


def test_a_killed_import_leaves_the_raw_tables_as_they_were(world, tmp_path: Path) -> None:
    root, env = world
    big = tmp_path / "big.csv"
    rows = 400_000
    pd.DataFrame({
        "customer_id": [f"K{i % 50_000:07d}" for i in range(rows)],
        "timestamp": pd.date_range("2024-01-01", periods=rows, freq="min").strftime("%Y-%m-%d %H:%M:%S"),
        "amount": 10.0,
    }).to_csv(big, index=False)
    before = _digests(root / "raw")
    _kill_once_open(["ingest", "--transactions", str(big), "--as-of", "2100-01-01"], env, "big.csv")  # reading it
    assert _digests(root / "raw") == before
    small = tmp_path / "one.csv"
    pd.DataFrame({"customer_id": ["K0000001"], "timestamp": ["2024-01-02"], "amount": [5.0]}).to_csv(small, index=False)
    assert "import summary" in _run(["ingest", "--transactions", str(small), "--as-of", "2100-01-01"], env)


def test_a_killed_feature_build_leaves_whole_files_and_the_next_run_succeeds(world) -> None:
    root, env = world
    _killed(["features"], env, after="snapshots at")  # the snapshots are written, the online write is not
    for path in (root / "features").glob("*.parquet"):
        pd.read_parquet(path)  # every file is whole: written under another name, then renamed
    assert "online store" in _run(["features"], env)


def test_a_killed_scoring_leaves_no_customer_with_two_runs_scores(world) -> None:
    from training.config import config_from_env
    from training.features import store as feature_store

    root, env = world
    _kill_once_open(["score"], env, "online_store.db")  # past the champions, before or in the online write
    scores = pd.read_parquet(root / "predictions" / "scores.parquet")  # whole: renamed when done
    config = config_from_env(root, root / "mlflow", environ={})
    store = feature_store.feature_store(config)
    ids = scores["customer_id"].tolist()
    online = store.get_online_features(
        ["customer_predictions:p_churn", "customer_predictions:expected_revenue", "customer_predictions:model_versions"],
        [{"customer_id": c} for c in ids],
    ).to_df()
    filled = online[["p_churn", "expected_revenue", "model_versions"]].notna()
    assert (filled.all(axis=1) | ~filled.any(axis=1)).all()  # a customer's row is whole or absent, never half
    _run(["score"], env)


def _process_tree(port: int) -> list[int]:
    """The ``bentoml serve`` listening on ``port`` and every process under it."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    roots = [pid for pid in parents if f"--port\x00{port}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes()]
    tree = list(roots)
    for pid in tree:
        tree += [child for child, parent in parents.items() if parent == pid and child not in tree]
    return tree


def test_events_acknowledged_by_a_server_survive_its_kill_9(world) -> None:
    """A 200 from POST /events means on disk: the server killed right after it loses nothing,
    and the next `indicators features` includes the events."""
    from datetime import UTC, datetime

    from serving.server import running_server
    from training.config import config_from_env
    from training.data import journal
    from training.features import store as feature_store

    root, env = world
    config = config_from_env(root, root / "mlflow", environ={})
    buyer = pd.read_parquet(root / "predictions" / "scores.parquet")["customer_id"].iloc[7]
    moment = datetime.now(UTC).replace(microsecond=0)
    events = [{"event_id": f"kill-{k}", "kind": "event", "customer_id": buyer, "timestamp": moment.isoformat(), "event_type": "session"}
              for k in range(40)]
    events.append({"event_id": "kill-order", "kind": "transaction", "customer_id": buyer, "timestamp": moment.isoformat(), "amount": 77.25})
    with running_server(config, api_key=API_KEY) as url:
        response = httpx.post(f"{url}/events", json={"events": events}, headers=AUTH, timeout=60)
        assert response.status_code == 200 and response.json()["accepted"] == len(events), response.text
        tree = _process_tree(int(url.rsplit(":", 1)[1]))
        assert tree
        for pid in tree:
            os.kill(pid, signal.SIGKILL)
    connection = journal.connect(config.paths)
    try:
        accepted = {row["seq"] for rows in journal.rows(connection, [buyer]).values() for row in rows}
        ids = {e for (e,) in connection.execute("SELECT event_id FROM accepted WHERE customer_id = ?", [buyer])}
    finally:
        connection.close()
    assert {e["event_id"] for e in events} <= ids and len(accepted) >= len(events)
    _run(["features"], env)
    store = feature_store.feature_store(config)
    fresh = feature_store.online_features(store, [buyer], moment)
    assert fresh["last_purchase_at"][0] == moment and fresh["sessions_30d"][0] >= 40


@pytest.mark.slow
def test_a_killed_training_leaves_the_champions_and_the_next_run_succeeds(world) -> None:
    from mlflow import MlflowClient

    root, env = world
    tracking = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"

    def champions() -> dict[str, str]:
        client = MlflowClient(tracking_uri=tracking)
        return {m.name: m.aliases.get("champion") for m in client.search_registered_models()}

    before = champions()
    args = ["train", "--trials", "1", "--set", "models.max_rounds=60", "--set", "models.timeout_seconds=20"]
    _killed(args, env, after="purchase timing fitted")
    assert champions() == before
    _run(args, env)


def _free_port() -> int:
    from serving.server import free_port

    return free_port()


@pytest.fixture()
def own_redis(tmp_path: Path):
    """A redis-server of this test's own on a free port (never the machine's)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()

    def start() -> subprocess.Popen:
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--appendonly", "yes",
             "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                import redis

                redis.Redis(port=port).ping()
                return process
            except Exception:  # not up yet
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    state = {"process": start()}

    def stop() -> None:
        state["process"].kill()
        state["process"].wait()

    def restart() -> None:
        state["process"] = start()

    yield port, stop, restart
    stop()


def _production_world(trained, root: Path, redis_port: int, registry: str, refresh_seconds: int):
    """A copy of the trained world on the production profile: features in the Redis on
    ``redis_port``, the Feast registry at ``registry``, the trained MLflow store. Returns its
    config, the endpoint's environment, and a customer it holds."""
    from dataclasses import replace

    from training.config import FeastSettings
    from training.features import store as feature_store

    config, _ = trained
    shutil.copytree(config.data_dir, root)
    project = f"faults_{redis_port}"
    feast = FeastSettings(project=project, online_store="redis", redis_connection=f"127.0.0.1:{redis_port}", registry="sql",
                          registry_path=registry, registry_cache_seconds=refresh_seconds)
    on_production = replace(config, data_dir=root, mlflow_dir=config.mlflow_store, feast=feast)
    store = feature_store.feature_store(on_production)
    feature_store.apply(store, on_production.paths)
    feature_store.write_latest_online(store, on_production.paths)
    customer = pd.read_parquet(root / "features" / "customer_profile.parquet")["customer_id"].iloc[0]
    env = {"INDICATORS_PROFILE": "production", "INDICATORS_REDIS": f"127.0.0.1:{redis_port}",
           "INDICATORS_FEAST_REGISTRY": registry, "INDICATORS_MLFLOW_TRACKING_URI": on_production.mlflow_tracking_uri,
           "INDICATORS_FEAST_PROJECT": project, "INDICATORS_FEAST_REGISTRY_CACHE_SECONDS": str(refresh_seconds)}
    return on_production, env, customer


def test_the_endpoint_answers_503_while_redis_is_down_and_recovers_without_a_restart(trained, own_redis, tmp_path) -> None:

    from serving.server import ServerFailed, running_server

    port, stop, restart = own_redis
    root = tmp_path / "data"
    on_redis, env, customer = _production_world(trained, root, port, f"sqlite:///{root / 'feast' / 'registry-sql.db'}", 60)
    ask = {"customer_ids": [customer], "reasons": 0}
    try:
        with running_server(on_redis, api_key=API_KEY, environ=env) as url:
            assert httpx.post(f"{url}/profile", json=ask, headers=AUTH, timeout=30).status_code == 200
            time.sleep(1.5)  # Redis appends to its log every second: what was written survives the kill
            stop()
            down = httpx.post(f"{url}/profile", json=ask, headers=AUTH, timeout=60)
            assert down.status_code == 503 and "online feature store unavailable" in down.json()["error"]
            restart()
            back = httpx.post(f"{url}/profile", json=ask, headers=AUTH, timeout=60)
            assert back.status_code == 200 and back.json()["profiles"][0]["customer_id"] == customer
    except ServerFailed as error:
        pytest.fail(str(error))


@pytest.fixture()
def own_postgres():
    """A PostgreSQL of this test's own (initdb, pg_ctl) on a free port, never the machine's."""
    import tempfile

    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.skip("initdb/pg_ctl are not installed")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    home = Path(tempfile.mkdtemp(prefix="indicators-pg-"))
    if as_postgres:
        shutil.chown(home, "postgres")
    port = _free_port()
    cluster = home / "cluster"
    subprocess.run([*as_postgres, "initdb", "-D", str(cluster), "-U", "postgres", "--auth=trust"], check=True,
                   capture_output=True)
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1"

    def start() -> None:
        subprocess.run([*as_postgres, "pg_ctl", "-D", str(cluster), "-o", options, "-l", str(home / "log"), "-w", "start"],
                       check=True, capture_output=True)

    def stop() -> None:
        subprocess.run([*as_postgres, "pg_ctl", "-D", str(cluster), "-m", "immediate", "-w", "stop"], capture_output=True)

    start()
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", stop, start
    finally:
        stop()
        shutil.rmtree(home, ignore_errors=True)


def test_the_endpoint_serves_from_its_registry_copy_while_postgresql_is_down(trained, own_redis, own_postgres, tmp_path) -> None:
    """PostgreSQL holds the Feast registry; features come from Redis. With the database away
    the endpoint keeps answering from its copy of the registry (past its refresh time), and
    picks the database up again when it is back."""

    from serving.server import ServerFailed, running_server

    redis_port, _, _ = own_redis
    registry, stop_postgres, start_postgres = own_postgres
    on_postgres, env, customer = _production_world(trained, tmp_path / "data", redis_port, registry, 1)
    ask = {"customer_ids": [customer], "reasons": 0}
    try:
        with running_server(on_postgres, api_key=API_KEY, environ=env) as url:
            assert httpx.post(f"{url}/profile", json=ask, headers=AUTH, timeout=30).status_code == 200
            stop_postgres()
            time.sleep(2.5)  # past the registry's refresh time: the refresh fails
            for _ in range(3):
                down = httpx.post(f"{url}/profile", json=ask, headers=AUTH, timeout=60)
                assert down.status_code == 200 and down.json()["profiles"][0]["customer_id"] == customer, down.text
            start_postgres()
            time.sleep(1.5)
            assert httpx.post(f"{url}/profile", json=ask, headers=AUTH, timeout=60).status_code == 200
    except ServerFailed as error:
        pytest.fail(str(error))
