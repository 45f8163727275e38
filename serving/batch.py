"""Batch enrichment (`indicators score`): every customer scored by the champions.

Features are read as of the end of the data (Feast, point in time), so the endpoint and the
batch give the same scores for the same customer and feature time. Results go to Parquet and
to the ``customer_predictions`` feature view, written online, so one profile lookup returns
features and indicators together. Customers without profiling consent are not scored, and
what an earlier run stored online for them is cleared.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from serving.scoring import Champions
from training.config import Config
from training.dataset import features_at
from training.features import store as feature_store
from training.features.snapshots import data_end


@dataclass(frozen=True)
class ScoreSummary:
    scored: int
    skipped_without_consent: int
    parquet: Path
    scored_at: datetime
    # Wall time per stage, summing to the run's: load, features, value_tiers, scoring,
    # online_write (waiting for the writer once scoring is done), parquet.
    seconds: dict[str, float]
    online_write_busy: float = 0.0  # the writer thread's own time, mostly under scoring


PREDICTIONS_VIEW = "customer_predictions"


def score_all(config: Config, slice_size: int = 250_000) -> ScoreSummary:
    """Score every consenting customer; write Parquet and the online store.

    Features are read for everyone first (Feast, point in time, in slices), so the value-tier
    thresholds (from everyone's expected revenue) are known before any row is written. Then
    each slice is scored while a second thread writes the previous one online: LightGBM and
    SQLite release the GIL, so the write runs mostly under the scoring. Online rows are thus
    replaced slice by slice; the Parquet files are replaced whole, at the end.
    """
    paths = config.paths
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    champions = Champions.load(config)
    store = feature_store.feature_store(config)
    feature_store.apply(store, paths)  # registers customer_predictions if this repo predates it
    as_of = data_end(paths)
    profile = pd.read_parquet(paths.features / "customer_profile.parquet", columns=["customer_id", "profiling_consent"])
    consent = profile["profiling_consent"].fillna(False).astype(bool)
    ids = profile.loc[consent, "customer_id"].sort_values().to_numpy()
    if not len(ids):
        raise ValueError(f"no customer in {paths.features / 'customer_profile.parquet'} has profiling consent: nothing to score")
    seconds["load"] = time.perf_counter() - clock

    clock = time.perf_counter()
    slices = [
        features_at(store, pd.DataFrame({"customer_id": ids[start : start + slice_size], "cutoff": pd.Timestamp(as_of)}))
        for start in range(0, len(ids), slice_size)
    ]
    seconds["features"] = time.perf_counter() - clock
    clock = time.perf_counter()
    champions.calibrate_tiers(*slices)  # the endpoint derives the same thresholds from scores.parquet
    seconds["value_tiers"] = time.perf_counter() - clock

    writer = _OnlineWriter(store)
    tables = []
    seconds["scoring"] = seconds["online_write"] = 0.0
    try:
        for k, features in enumerate(slices):
            clock = time.perf_counter()
            tables.append(prediction_rows(champions.table(features), champions.versions, as_of))
            seconds["scoring"] += time.perf_counter() - clock
            last = k == len(slices) - 1
            seconds["online_write"] += writer.write(with_cleared(tables[-1], profile.loc[~consent, "customer_id"], as_of) if last else tables[-1])
        seconds["online_write"] += writer.wait()
    finally:
        writer.close()

    clock = time.perf_counter()
    scores = pd.concat(tables, ignore_index=True)
    paths.predictions.mkdir(parents=True, exist_ok=True)
    target = paths.predictions / "scores.parquet"
    partial = target.with_name(target.name + ".partial")
    scores.to_parquet(partial, index=False)
    partial.replace(target)
    scores.to_parquet(paths.features / f"{PREDICTIONS_VIEW}.parquet", index=False)
    seconds["parquet"] = time.perf_counter() - clock
    return ScoreSummary(len(scores), int((~consent).sum()), target, as_of, seconds, writer.busy)


def prediction_rows(table: pd.DataFrame, versions: dict[str, str], scored_at: datetime) -> pd.DataFrame:
    """The scored table as the ``customer_predictions`` view stores it."""
    rows = table.drop(columns=[c for c in table.columns if c.startswith("next_purchase_days_")])
    rows["model_versions"] = json.dumps(versions, sort_keys=True)
    rows["scored_at"] = pd.Timestamp(scored_at)
    return rows


def with_cleared(rows: pd.DataFrame, without_consent: pd.Series, scored_at: datetime) -> pd.DataFrame:
    """``rows`` plus an empty row for every customer without consent, in customer order.

    Written online, the empty rows clear what an earlier run stored for a customer who has
    since withdrawn consent: a profile lookup then finds no indicators for them. (They go with
    scored rows: Feast's own writer skips a frame whose features are all empty.)
    """
    empty = pd.DataFrame({"customer_id": without_consent.to_numpy(), "scored_at": pd.Timestamp(scored_at)})
    for column in rows.columns.difference(empty.columns):
        empty[column] = np.nan if pd.api.types.is_float_dtype(rows[column]) else None
    return pd.concat([rows, empty[rows.columns]], ignore_index=True).sort_values("customer_id", kind="stable", ignore_index=True)


class _OnlineWriter:
    """Writes frames to the predictions view on one background thread, one frame at a time."""

    def __init__(self, store) -> None:
        self._store, self._pool, self._pending = store, ThreadPoolExecutor(1, thread_name_prefix="online-write"), None
        self.busy = 0.0

    def _write(self, frame: pd.DataFrame) -> None:
        started = time.perf_counter()
        feature_store.write_online(self._store, PREDICTIONS_VIEW, frame)
        self.busy += time.perf_counter() - started

    def wait(self) -> float:
        """Wait for the frame being written; the seconds waited. A failed write fails the run."""
        started = time.perf_counter()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()
        return time.perf_counter() - started

    def write(self, frame: pd.DataFrame) -> float:
        """Queue ``frame`` once the previous one is written (memory stays at two slices);
        the seconds waited for it."""
        waited = self.wait()
        self._pending = self._pool.submit(self._write, frame)
        return waited

    def close(self) -> None:
        self._pool.shutdown(wait=True)
