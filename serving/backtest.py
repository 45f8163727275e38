"""``indicators backtest``: what ``indicators train`` then ``score`` would have said on a past day.

The log's rows at or before the cutoff are imported into a data directory of its own (with its
own MLflow store, on the embedded profile: a backtest never touches a production store), every
model with a backtested indicator is trained there as ``indicators train`` trains it (the same
window planner, gate and classical fallback; the lookalikes predict nothing a backtest reports),
with every horizon set to the backtest's, and every customer is scored as
``indicators score`` scores, as of the end of that data. Rows after the cutoff are never
imported, so nothing can read them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import pandas as pd

from serving.batch import score_all
from training.catalogue import BACKTEST_INDICATORS, BACKTESTED_MODELS
from training.config import Config, as_utc
from training.data.ingest import ImportOptions, normalize, read_source, write_normalized
from training.pipeline import TrainingResult, run_training
from training.trainers import Step
from training.windows import MIN_BUYERS

OUTPUT_COLUMNS = ["customer_id", *BACKTEST_INDICATORS]


class BacktestError(ValueError):
    """The log cannot be backtested at this cutoff (too little data before it)."""


@dataclass(frozen=True)
class Backtest:
    predictions: pd.DataFrame  # OUTPUT_COLUMNS, one row per customer seen by the cutoff
    training: TrainingResult  # what was trained and served, as ``indicators train`` reports it
    scored_as_of: datetime  # the end of the data up to the cutoff


def read_log(path: Path, cutoff: datetime, options: ImportOptions | None = None) -> tuple[pd.DataFrame, int]:
    """The canonical log restricted to rows at or before ``cutoff``; and the count of bad rows."""
    options = options or ImportOptions()
    source, _ = read_source(path, options.delimiter)
    far_future = replace(options, as_of=datetime(2200, 1, 1))
    result = normalize("transactions", source, far_future)
    clean = result.clean
    return clean[clean["timestamp"] <= pd.Timestamp(as_utc(cutoff))].reset_index(drop=True), len(result.quarantined)


def backtest_config(config: Config, work_dir: Path, horizon: int, kept: bool = False) -> Config:
    """``config``'s models and seed in ``work_dir`` (embedded, its own MLflow store), with every
    horizon set to ``horizon``; the purchase grid gains it. Its MLflow runs keep metrics, SHAP
    importance and model cards; plots only if the directory is ``kept`` after the backtest
    (nobody sees those of a temporary one)."""
    models = replace(
        config.models, churn_horizon_days=horizon, expected_purchases_horizon_days=horizon, clv_horizon_days=horizon,
        purchase_horizons=tuple(sorted({*config.models.purchase_horizons, horizon})), plots=kept,
    )
    return Config(data_dir=work_dir, snapshots=config.snapshots, models=models, scoring=config.scoring, seed=config.seed)


def run_backtest(
    log: pd.DataFrame, cutoff: datetime, config: Config, on_step: Step = lambda _: None, report: bool = False,
) -> Backtest:
    """Train on ``log`` (canonical, as ``read_log`` gives it) up to ``cutoff`` in ``config``'s
    data directory, which must hold no data yet (``backtest_config``), then score everyone;
    ``report``: write the training's HTML report there too."""
    cutoff = pd.Timestamp(as_utc(cutoff))
    past = log[log["timestamp"] <= cutoff]
    buyers = past.loc[past["amount"] > 0, "customer_id"].nunique()
    if not buyers:
        raise BacktestError("no purchase at or before the cutoff")
    if buyers < MIN_BUYERS:
        raise BacktestError(f"{buyers} customers bought before the cutoff; at least {MIN_BUYERS} are needed to fit a model")
    paths = config.paths
    if paths.raw.exists() and any(paths.raw.iterdir()):
        raise BacktestError(f"{paths.data_dir} already holds data: a backtest needs a directory of its own")
    write_normalized(paths, "transactions", past.reset_index(drop=True))
    on_step(f"{len(past):,} transactions of {past['customer_id'].nunique():,} customers imported, up to {cutoff:%Y-%m-%d}")
    training = run_training(config, on_step, BACKTESTED_MODELS, report)  # lookalikes predict no backtested column
    summary = score_all(config)
    scores = pd.read_parquet(summary.parquet, columns=OUTPUT_COLUMNS)
    predictions = scores.sort_values("customer_id").reset_index(drop=True)
    return Backtest(predictions, training, summary.scored_at)
