"""``indicators train``: snapshots -> features -> labels -> each trainer -> MLflow -> gate.

``prepare`` builds what every trainer reads (one Feast retrieval for every cutoff, labels for
every row); the trainers (``training.trainers``) fit and backtest; ``training.publish`` logs,
registers and gates what they return; the report sums it up.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from training import tracking
from training.carry import Carry
from training.config import Config
from training.dataset import entity_rows, features_at
from training.features import store as feature_store
from training.features.snapshots import build_snapshots, connect, data_end
from training.labels import build_labels
from training.publish import ModelReport, publish
from training.report import build_report
from training.trainers import (
    TRAINERS,
    ModelingData,
    Step,
    modelled_customers,
    start_btyd,
)
from training.windows import MIN_BUYERS, HistoryTooShort, plan_horizons


@dataclass
class TrainingResult:
    reports: list[ModelReport]
    timings: dict[str, float]
    data_window: tuple[datetime, datetime]
    report_path: Path | None = None  # the run's HTML report


def prepare(
    config: Config, on_step: Step, timings: dict[str, float], btyd_for: tuple[str, ...] = (),
) -> tuple[ModelingData, Any]:
    """Snapshots at every cutoff the models need, one Feast retrieval, labels for all rows.
    ``btyd_for``: the trainers (``TRAINERS`` keys) whose PyMC-Marketing baselines start
    fitting now, beside the rest (``close`` the data when done)."""
    paths = config.paths
    settings = config.models
    started = time.perf_counter()
    end = data_end(paths)
    with contextlib.ExitStack() as on_failure, contextlib.closing(connect(paths)) as con:
        first, buyers = con.execute(
            "SELECT min(\"timestamp\"), count(DISTINCT customer_id) FILTER (WHERE amount > 0) FROM transactions"
        ).fetchall()[0]
        if buyers < MIN_BUYERS:
            raise HistoryTooShort(f"{buyers} customers have bought; at least {MIN_BUYERS} are needed to fit a model")
        start = pd.Timestamp(first).tz_convert("UTC").floor("D").to_pydatetime()
        horizons = plan_horizons(start, end, settings)
        # The customers of the profile view, read before its snapshot: the baselines start on them.
        profile = modelled_customers(con.sql("SELECT customer_id, signup_at FROM customers").df(), settings.max_customers, config.seed)
        modelled = pd.Index(profile["customer_id"])
        transactions = pd.read_parquet(paths.raw_table("transactions"), columns=["customer_id", "timestamp", "amount"])
        transactions = transactions[transactions["customer_id"].isin(modelled)].reset_index(drop=True)
        ahead = start_btyd(transactions, horizons, settings, btyd_for)
        if ahead is not None:
            on_failure.callback(ahead.close)
        snapshot_dates = set(config.snapshots.dates(end)) | set(horizons.cutoffs) | {end}
        build_snapshots(paths, sorted(snapshot_dates))
        store = feature_store.feature_store(config)
        feature_store.apply(store, paths)
        timings["snapshots"] = time.perf_counter() - started
        on_step(f"snapshots at {len(snapshot_dates)} dates")
        if horizons.carries:
            on_step(f"{(end - start).days} days of history: horizons up to {horizons.longest} days are learned, "
                    f"longer ones carried from there (fit cutoffs after {horizons.min_history_days} days of history)")
        started = time.perf_counter()
        feature_store.write_latest_online(store, paths)
        timings["online_write"] = time.perf_counter() - started
        on_step("latest features written to the online store")

        started = time.perf_counter()
        rows = entity_rows(profile, sorted({*horizons.cutoffs, end}))
        features = features_at(store, rows)
        timings["feature_retrieval"] = time.perf_counter() - started
        on_step(f"features for {len(rows):,} (customer, cutoff) rows of {len(profile):,} customers")

        started = time.perf_counter()
        counted = {*horizons.learned_grid, horizons.learned(settings.expected_purchases_horizon_days)}
        labels = build_labels(con, rows, sorted(counted), [horizons.learned(settings.clv_horizon_days)], end)
        timings["labels"] = time.perf_counter() - started
        merged = features.merge(labels, on=["customer_id", "cutoff"], how="left", validate="one_to_one")
        truth_file = paths.truth / "latent.parquet"
        truth = pd.read_parquet(truth_file) if truth_file.exists() else None
        if truth is not None:
            truth = truth[truth["customer_id"].isin(modelled)].reset_index(drop=True)
        carry = None
        if horizons.carries:
            carry = Carry.fitted(transactions, pd.Timestamp(end))
            on_step(f"{carry.describe()} fitted on the whole history carries the longer horizons")
        data = ModelingData(merged, horizons, start, end, transactions, truth, carry, config.seed, config.models.threads,
                            btyd_ahead=ahead)
        on_failure.pop_all()  # the fits under way are the data's from here
    return data, store


def run_training(
    config: Config, on_step: Step = lambda _: None, models: tuple[str, ...] = tuple(TRAINERS), report: bool = True,
) -> TrainingResult:
    """Train, backtest, log and gate ``models``, then write the HTML report (unless not
    ``report``). A run that fails promotes nothing: the champions it moved go back to where
    they were (its versions stay registered, unaliased)."""
    began = datetime.now(UTC)
    timings: dict[str, float] = {}
    data, _store = prepare(config, on_step, timings, btyd_for=models)
    try:
        client = tracking.setup_tracking(config)  # after prepare, which starts the baselines' fits
        before = tracking.champion_versions(client, [m.name for m in client.search_registered_models()])
        try:
            reports = _train_models(config, data, client, on_step, models, timings)
        except BaseException:
            tracking.restore_champions(client, before)
            raise
    finally:
        data.close()
    result = TrainingResult(reports, timings, (data.data_start, data.data_end))
    if report:
        result.report_path = build_report(config, result, began)
        on_step(f"report: {result.report_path}")
    return result


def _train_models(
    config: Config, data: ModelingData, client, on_step: Step, models: tuple[str, ...], timings: dict[str, float]
) -> list[ModelReport]:
    reports: list[ModelReport] = []
    for key in models:
        started = time.perf_counter()
        experiment_id = tracking.experiment(client, config, key)
        mlflow.set_experiment(experiment_id=experiment_id)  # nested trial runs land here too
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{key}"):
            mlflow.log_params(
                {
                    "data_start": f"{data.data_start:%Y-%m-%d}",
                    "data_end": f"{data.data_end:%Y-%m-%d}",
                    "rows": len(data.rows),
                    "customers_modelled": data.rows["customer_id"].nunique(),
                    "seed": config.seed,
                    "trials": config.models.trials,
                }
            )
            tracking.log_experiment(config)
            for trained in TRAINERS[key](config, data, on_step):
                reports += publish(config, client, trained)
        timings[f"train_{key}"] = time.perf_counter() - started
    return reports
