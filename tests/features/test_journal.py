"""The event journal is part of the raw log, exactly once: a repeated batch adds nothing, and
neither does a later import of the same rows (a nightly export of what was streamed)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd

from serving.events import EventSink
from tests.conftest import event_world
from training.data import journal
from training.data.generate import random_events
from training.data.ingest import ImportOptions, ingest
from training.features.snapshots import connect, data_end


def test_a_repeated_batch_is_accepted_once(generated_dir, tmp_path) -> None:
    config = event_world(generated_dir, tmp_path / "data", bare=True)
    sink = EventSink(config)
    now = data_end(config.paths) + timedelta(days=1)
    events = random_events(np.random.default_rng(1), ["C1", "C2"], now - timedelta(days=30), now, 50)
    first = sink.accept(events, now=now)
    again = sink.accept(events, now=now)
    assert again.accepted == 0 and again.duplicates == len(events)
    assert sum(len(rows) for rows in journal.rows(sink._journal).values()) == first.accepted


def test_an_import_of_streamed_rows_adds_nothing_and_the_log_holds_each_once(generated_dir, tmp_path) -> None:
    config = event_world(generated_dir, tmp_path / "data", bare=True)
    sink = EventSink(config)
    now = data_end(config.paths) + timedelta(days=1)
    purchases = [{"event_id": f"p{k}", "kind": "transaction", "customer_id": f"C{k % 7}", "timestamp": (now - timedelta(hours=k)).isoformat(),
                  "amount": 10.0 + k} for k in range(20)]
    assert sink.accept(purchases, now=now).accepted == 20
    export = tmp_path / "nightly.csv"
    pd.DataFrame([{k: e[k] for k in ("customer_id", "timestamp", "amount")} for e in purchases[:15]]).to_csv(export, index=False)
    [report] = ingest(config.paths, {"transactions": export}, ImportOptions(as_of=now + timedelta(days=1)))
    assert (report.rows_added, report.rows_already_present) == (0, 15)
    con = connect(config.paths)
    try:
        counted = con.execute("SELECT count(*) FROM transactions WHERE customer_id LIKE 'C_' AND amount >= 10").fetchone()[0]
    finally:
        con.close()
    assert counted == 20  # the journal's rows, once; none imported again


def test_a_write_from_an_older_read_of_the_journal_never_lands_after_a_newer_one(generated_dir, tmp_path, monkeypatch) -> None:
    """Two writers (two endpoint processes) recompute outside the data lock. Here one batch's
    recomputation is overtaken: while it runs, another writer journals a later purchase of
    the same customer and writes it online. The overtaken batch's rows, read from the older
    journal, are not written: the online rows end equal to a full rebuild, both purchases in."""
    import serving.events
    from training.features import live
    from training.features import store as feature_store

    config = event_world(generated_dir, tmp_path / "data", bare=True)
    first, second = EventSink(config), EventSink(config)
    customer = pd.read_parquet(config.paths.raw_table("transactions"), columns=["customer_id"])["customer_id"].iloc[0]
    now = data_end(config.paths) + timedelta(days=1)

    def purchase(event_id: str, hours: int) -> dict:
        return {"event_id": event_id, "kind": "transaction", "customer_id": customer,
                "timestamp": (now - timedelta(hours=hours)).isoformat(), "amount": 10.0 + hours}

    recompute, overtaken = serving.events.recompute, []

    def overtaken_once(*args, **kwargs):
        if not overtaken:
            overtaken.append(True)
            second.accept([purchase("later", 1)], now=now)  # journals and writes while this one computes
        return recompute(*args, **kwargs)

    monkeypatch.setattr(serving.events, "recompute", overtaken_once)
    first.accept([purchase("earlier", 2)], now=now)
    assert overtaken
    store = feature_store.feature_store(config)
    cutoff = first._cutoff(pd.Timestamp(now))
    online = feature_store.online_features(store, [customer], cutoff)
    assert live.batch_mismatches(config.paths, online, [customer], cutoff) == []
