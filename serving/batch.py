"""Batch enrichment (`indicators score`): every customer scored by the champions.

Features are read as of the end of the data (Feast, point in time), so the endpoint and the
batch give the same scores for the same customer and feature time. Results go to Parquet and
to the ``customer_predictions`` feature view, written online, so one profile lookup returns
features and indicators together. Customers without profiling consent are not scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from serving.scoring import Champions, value_tier, value_tiers_of
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


def flatten(records: list[dict], scored_at: datetime) -> pd.DataFrame:
    """One row per customer: indicators, segments and model versions as columns."""
    rows = []
    for record in records:
        indicators = {k: v for k, v in record["indicators"].items() if not k.startswith("next_purchase_days_")}
        rows.append(
            {
                "customer_id": record["customer_id"],
                **indicators,
                **record["segments"],
                "model_versions": json.dumps(record["model_versions"], sort_keys=True),
                "scored_at": pd.Timestamp(scored_at),
            }
        )
    return pd.DataFrame(rows)


def score_all(config: Config, batch_size: int = 20_000) -> ScoreSummary:
    paths = config.paths
    champions = Champions.load(config)
    store = feature_store.feature_store(config)
    feature_store.apply(store, paths)  # registers customer_predictions if this repo predates it
    as_of = data_end(paths)
    profile = pd.read_parquet(paths.features / "customer_profile.parquet", columns=["customer_id", "profiling_consent"])
    consent = profile["profiling_consent"].fillna(False).astype(bool)
    ids = profile.loc[consent, "customer_id"].sort_values().to_numpy()
    frames = []
    for start in range(0, len(ids), batch_size):
        rows = pd.DataFrame({"customer_id": ids[start : start + batch_size], "cutoff": pd.Timestamp(as_of)})
        features = features_at(store, rows)
        frames.append(flatten(champions.score(features, as_of, reasons=0), as_of))
    scores = pd.concat(frames, ignore_index=True)
    # Tiers need every customer's expected revenue: set once all are scored (the endpoint
    # reads the same thresholds back from this file).
    tiers = value_tiers_of(scores["expected_revenue"].to_numpy())
    scores["value_tier"] = [value_tier(v, tiers) for v in scores["expected_revenue"]]
    paths.predictions.mkdir(parents=True, exist_ok=True)
    target = paths.predictions / "scores.parquet"
    partial = target.with_name(target.name + ".partial")
    scores.to_parquet(partial, index=False)
    partial.replace(target)
    scores.to_parquet(paths.features / "customer_predictions.parquet", index=False)
    store.write_to_online_store("customer_predictions", scores)
    return ScoreSummary(len(scores), int((~consent).sum()), target, as_of)
