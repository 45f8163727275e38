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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from serving.scoring import Champions, value_tiers, value_tiers_of
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
    seconds: dict[str, float]  # per stage: features, scoring, parquet, online_write


def score_all(config: Config, batch_size: int = 250_000) -> ScoreSummary:
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
    seconds["load"] = time.perf_counter() - clock
    tables = []
    seconds["features"] = seconds["scoring"] = 0.0
    for start in range(0, len(ids), batch_size):
        clock = time.perf_counter()
        rows = pd.DataFrame({"customer_id": ids[start : start + batch_size], "cutoff": pd.Timestamp(as_of)})
        features = features_at(store, rows)
        seconds["features"] += time.perf_counter() - clock
        clock = time.perf_counter()
        tables.append(champions.table(features))
        seconds["scoring"] += time.perf_counter() - clock
    clock = time.perf_counter()
    scores = pd.concat(tables, ignore_index=True)
    # Tiers need every customer's expected revenue: set once all are scored (the endpoint
    # reads the same thresholds back from this file).
    scores["value_tier"] = value_tiers(scores["expected_revenue"].to_numpy(), value_tiers_of(scores["expected_revenue"].to_numpy()))
    scores = scores.drop(columns=[c for c in scores.columns if c.startswith("next_purchase_days_")])
    scores["model_versions"] = json.dumps(champions.versions, sort_keys=True)
    scores["scored_at"] = pd.Timestamp(as_of)
    paths.predictions.mkdir(parents=True, exist_ok=True)
    target = paths.predictions / "scores.parquet"
    partial = target.with_name(target.name + ".partial")
    scores.to_parquet(partial, index=False)
    partial.replace(target)
    scores.to_parquet(paths.features / "customer_predictions.parquet", index=False)
    seconds["parquet"] = time.perf_counter() - clock
    clock = time.perf_counter()
    feature_store.write_online(store, "customer_predictions", with_withdrawn(scores, profile.loc[~consent, "customer_id"], as_of))
    seconds["online_write"] = time.perf_counter() - clock
    return ScoreSummary(len(scores), int((~consent).sum()), target, as_of, seconds)


def with_withdrawn(scores: pd.DataFrame, without_consent: pd.Series, scored_at: datetime) -> pd.DataFrame:
    """``scores`` plus an empty row for every customer without consent, in customer order.

    Written online, the empty rows clear what an earlier run stored for a customer who has
    since withdrawn consent: a profile lookup then finds no indicators for them.
    """
    empty = pd.DataFrame({"customer_id": without_consent.to_numpy(), "scored_at": pd.Timestamp(scored_at)})
    for column in scores.columns.difference(empty.columns):
        empty[column] = np.nan if pd.api.types.is_float_dtype(scores[column]) else None
    return pd.concat([scores, empty[scores.columns]], ignore_index=True).sort_values("customer_id", kind="stable", ignore_index=True)
