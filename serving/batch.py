"""Batch enrichment (`indicators score`): every customer scored by the champions.

Features are read as of the end of the data (Feast, point in time), so the endpoint and the
batch give the same scores for the same customer and feature time. Results go to Parquet and
to the ``customer_predictions`` feature view, written online, so one profile lookup returns
features and indicators together. Customers without profiling consent are not scored, and
what an earlier run stored online for them is cleared. Customers with no consent record are
scored or not by ``config.scoring.unknown_consent`` (default: scored).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from serving.consent import may_score, policy_for, unrecorded
from serving.scoring import Champions, value_tiers, value_tiers_of
from training.config import Config
from training.data import journal
from training.data.suppression import data_lock
from training.dataset import features_at
from training.features import store as feature_store
from training.features.snapshots import data_end


@dataclass(frozen=True)
class ScoreSummary:
    scored: int
    skipped_without_consent: int  # refused profiling, or no record under the "skip" policy
    without_consent_record: int  # of everyone: no consent value at all (scored or not by the policy)
    parquet: Path
    scored_at: datetime
    seconds: dict[str, float]  # per stage: load, features, scoring, parquet, online_write


PREDICTIONS_VIEW = "customer_predictions"


class NothingToScore(RuntimeError):
    """No customer may be scored (what earlier runs stored is then left as it was)."""


def score_all(config: Config, slice_size: int = 250_000) -> ScoreSummary:
    """Score every customer who may be scored; write Parquet, then the online store.

    Stages run one after another. Writing each slice online on a second thread while the next
    is scored gains nothing: the writer's Python work competes with the scoring for the GIL and
    the cores, and the value tiers would need a pass of their own over everyone's expected
    revenue before the first write.
    """
    with data_lock(config.paths):  # an erasure waits for the scores, or they for it
        return _score_all(config, slice_size)


def _score_all(config: Config, slice_size: int) -> ScoreSummary:
    paths = config.paths
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    champions = Champions.load(config)
    store = feature_store.feature_store(config)
    feature_store.apply(store, paths)  # registers customer_predictions if this repo predates it
    as_of = data_end(paths)
    profile = pd.read_parquet(paths.features / "customer_profile.parquet", columns=["customer_id", "profiling_consent"])
    # A consent given or withdrawn by an event since the features were built counts now.
    changed = journal.latest_consents(paths)
    values = [changed.get(c, v) for c, v in zip(profile["customer_id"], profile["profiling_consent"], strict=True)]
    policy = policy_for(paths, config.scoring.unknown_consent)
    consent = pd.Series(may_score(values, policy), index=profile.index)
    no_record = 0 if policy != config.scoring.unknown_consent else int(unrecorded(values).sum())
    ids = profile.loc[consent, "customer_id"].sort_values().to_numpy()
    if not len(ids):
        if no_record:
            why = (f"{no_record:,} have no consent record, which the policy unknown_consent='skip' leaves out "
                   "(INDICATORS_UNKNOWN_CONSENT=score or `indicators score --unknown-consent score` scores them)")
        else:
            why = "nobody has given profiling consent (an empty consent value is not consent)"
        raise NothingToScore(f"nobody to score among {len(profile):,} customers: {why}")
    seconds["load"] = time.perf_counter() - clock
    tables = []
    seconds["features"] = seconds["scoring"] = 0.0
    for start in range(0, len(ids), slice_size):
        clock = time.perf_counter()
        features = features_at(store, pd.DataFrame({"customer_id": ids[start : start + slice_size], "cutoff": pd.Timestamp(as_of)}))
        seconds["features"] += time.perf_counter() - clock
        clock = time.perf_counter()
        tables.append(champions.table(features))
        seconds["scoring"] += time.perf_counter() - clock
    clock = time.perf_counter()
    scores = prediction_rows(pd.concat(tables, ignore_index=True), champions.versions, as_of)
    # Tiers need every customer's expected revenue: set once all are scored (the endpoint
    # derives the same thresholds from this file).
    revenue = scores["expected_revenue"].to_numpy()
    scores["value_tier"] = value_tiers(revenue, value_tiers_of(revenue))
    paths.predictions.mkdir(parents=True, exist_ok=True)
    target = paths.predictions / "scores.parquet"
    partial = target.with_name(target.name + ".partial")
    scores.to_parquet(partial, index=False)
    partial.replace(target)
    scores.to_parquet(paths.features / f"{PREDICTIONS_VIEW}.parquet", index=False)
    seconds["parquet"] = time.perf_counter() - clock
    clock = time.perf_counter()
    # Online rows carry the time of this run, so stores that keep a row only when it is newer
    # (Feast's Redis store skips an equal timestamp) take every run: a re-score of the same
    # data by a new champion, and the cleared rows, included.
    written_at = max(pd.Timestamp(as_of), pd.Timestamp.now(tz="UTC"))
    online_rows = with_cleared(scores.assign(scored_at=written_at), profile.loc[~consent, "customer_id"], written_at)
    feature_store.write_online(store, PREDICTIONS_VIEW, online_rows)
    seconds["online_write"] = time.perf_counter() - clock
    return ScoreSummary(len(scores), int((~consent).sum()), no_record, target, as_of, seconds)


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
    empty = pd.DataFrame({"customer_id": without_consent.astype(str).to_numpy(), "scored_at": pd.Timestamp(scored_at)})
    for column in rows.columns.difference(empty.columns):
        empty[column] = np.nan if pd.api.types.is_float_dtype(rows[column]) else None
    return pd.concat([rows, empty[rows.columns]], ignore_index=True).sort_values("customer_id", kind="stable", ignore_index=True)
