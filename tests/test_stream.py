"""`indicators stream` against the machine's RabbitMQ, on queues each test creates and deletes:
messages acknowledged once durable, poison messages dead-lettered with their reason, and no
event lost or applied twice across a `kill -9` of the consumer and the redeliveries after it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import _reachable, event_world

AMQP = os.environ.get("INDICATORS_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")
INDICATORS = str(Path(sys.executable).with_name("indicators"))

@pytest.fixture()
def queue():
    """A durable queue of its own (and its dead-letter queue), deleted afterwards. Without a
    RabbitMQ on 127.0.0.1:5672 the test is skipped, except under CI, where it fails."""
    import pika

    if not _reachable(5672):
        if os.environ.get("CI") == "true":
            pytest.fail("RabbitMQ not reachable on 127.0.0.1:5672 under CI")
        pytest.skip("RabbitMQ not reachable on 127.0.0.1:5672")

    name = f"indicators-test-{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(AMQP))
    channel = connection.channel()
    channel.queue_declare(name, durable=True)
    yield name, channel
    for q in (name, f"{name}.dead-letter"):
        channel.queue_delete(q)
    connection.close()


def _publish(channel, queue: str, body: bytes) -> None:
    import pika

    channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))


def _journal_ids(config) -> list[str]:
    import sqlite3

    from training.data import journal

    connection = sqlite3.connect(journal.journal_file(config.paths))
    try:
        return [row[0] for row in connection.execute("SELECT event_id FROM accepted WHERE event_id NOT LIKE '%#signup'")]
    except sqlite3.OperationalError:  # the consumer is creating it
        return []
    finally:
        connection.close()


def _events(config, n: int, prefix: str) -> list[dict]:
    import pandas as pd

    from training.data.generate import random_events
    from training.features.snapshots import data_end

    known = pd.read_parquet(config.paths.raw_table("transactions"), columns=["customer_id"])["customer_id"].unique().tolist()
    end = data_end(config.paths)
    events = random_events(np.random.default_rng(5), known, end - timedelta(days=200), end, n, prefix=prefix)
    return list({e["event_id"]: e for e in events}.values())  # each id once: counts below are exact


def test_messages_are_acknowledged_once_durable_and_poison_is_dead_lettered(generated_dir, tmp_path, queue) -> None:
    from serving.stream import consume

    name, channel = queue
    config = event_world(generated_dir, tmp_path / "data", bare=True)
    events = _events(config, 60, "s")
    _publish(channel, name, json.dumps({"events": events[:30]}).encode())
    _publish(channel, name, json.dumps(events[30:-1]).encode())  # a list
    _publish(channel, name, json.dumps(events[-1]).encode())  # one event
    _publish(channel, name, json.dumps({"events": events[:30]}).encode())  # delivered again
    poison = [b"not json", json.dumps({"events": [{"kind": "event"}]}).encode(),
              json.dumps({**events[0], "event_id": "late", "timestamp": "2100-01-01T00:00:00Z"}).encode()]
    for body in poison:
        _publish(channel, name, body)
    stats = consume(config, AMQP, name, idle_seconds=1.5)
    assert (stats.messages, stats.events_accepted, stats.duplicates, stats.dead_lettered) == (7, len(events), 30, 3)
    assert sorted(_journal_ids(config)) == sorted(e["event_id"] for e in events)
    assert channel.queue_declare(name, passive=True).method.message_count == 0
    dead = []
    while (message := channel.basic_get(f"{name}.dead-letter", auto_ack=True))[0] is not None:
        dead.append((message[2], message[1].headers["x-death-reason"]))
    assert [body for body, _ in dead] == poison
    reasons = [reason for _, reason in dead]
    assert reasons[0].startswith("not JSON") and reasons[1].startswith("not a batch of events")
    assert "late: future timestamp" in reasons[2]


def test_no_event_is_lost_or_applied_twice_across_a_killed_consumer(generated_dir, tmp_path, queue) -> None:
    name, channel = queue
    config = event_world(generated_dir, tmp_path / "data", bare=True)
    events = _events(config, 1500, "k")
    for start in range(0, len(events), 10):
        _publish(channel, name, json.dumps({"events": events[start : start + 10]}).encode())
    env = {**os.environ, "INDICATORS_DATA_DIR": str(config.data_dir), "INDICATORS_MLFLOW_DIR": str(config.data_dir / "mlflow")}
    consumer = subprocess.Popen([INDICATORS, "stream", "--amqp", AMQP, "--queue", name], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    from training.data import journal

    while time.monotonic() < deadline and not (journal.journal_file(config.paths).exists() and len(_journal_ids(config)) > 200):
        time.sleep(0.05)
    os.killpg(consumer.pid, signal.SIGKILL)
    consumer.wait()
    assert consumer.returncode == -signal.SIGKILL
    assert len(_journal_ids(config)) < len(events)  # killed mid-way
    drained = subprocess.run([INDICATORS, "stream", "--amqp", AMQP, "--queue", name, "--idle-exit", "2"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert drained.returncode == 0, drained.stdout + drained.stderr
    ids = _journal_ids(config)
    assert len(ids) == len(set(ids)) == len(events)  # none lost, none twice
    assert channel.queue_declare(name, passive=True).method.message_count == 0
