"""Event-updated features equal the batch SQL: random event sequences, accepted batch by batch,
compared feature by feature with a full rebuild from the raw log at the same moment.

Two logs: the generated one (every table and column) and a bare transaction log (customer_id,
timestamp, amount; no customers or events table), where the customers view is derived.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from serving.events import EventSink
from tests.conftest import event_world
from training.data import journal
from training.data.generate import random_events
from training.features import live
from training.features import store as feature_store
from training.features.snapshots import build_snapshots, data_end, midnight_after

ROUNDS = 8
EVENTS_PER_ROUND = 120


@pytest.mark.parametrize("bare", [False, True], ids=["every-table", "bare-transaction-log"])
def test_random_events_give_the_batch_features_at_once(generated_dir, tmp_path, bare: bool) -> None:
    config = event_world(generated_dir, tmp_path / "data", bare)
    store = feature_store.feature_store(config)
    sink = EventSink(config, store)
    known = pd.read_parquet(config.paths.raw_table("transactions"), columns=["customer_id"])["customer_id"].unique().tolist()
    end = data_end(config.paths)
    now = end + timedelta(days=2)
    rng = np.random.default_rng(3 if bare else 4)
    checked = 0
    for round_ in range(ROUNDS):
        events = random_events(rng, known, end - timedelta(days=400), now, EVENTS_PER_ROUND, prefix=f"r{round_}")
        result = sink.accept(events, now=now)
        assert result.accepted + result.duplicates == len(events)
        cutoff = midnight_after(max(journal.latest_time(sink._journal), sink.raw.latest()))
        online = feature_store.online_features(store, result.customers, cutoff)
        assert live.batch_mismatches(config.paths, online, result.customers, cutoff) == []
        checked += len(result.customers)
    assert checked > ROUNDS * 50
    # The journal is part of the raw log: the batch build includes every accepted event, and
    # its online write leaves the event-updated values as they were (at the same moment: the
    # last batch's customers).
    touched = result.customers
    before = feature_store.online_features(store, touched, cutoff)
    build_snapshots(config.paths, [cutoff])
    feature_store.write_latest_online(store, config.paths)
    assert feature_store.online_features(store, touched, cutoff) == before
