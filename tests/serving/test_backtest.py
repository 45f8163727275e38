"""The backtest's contract: train on the log up to the cutoff as `indicators train` does, score
as `indicators score` does; its columns, their ranges, one row per customer, no future data."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.backtest import (
    OUTPUT_COLUMNS,
    Backtest,
    BacktestError,
    backtest_config,
    run_backtest,
)
from serving.cli import app
from training.config import Config, ModelSettings
from training.windows import HistoryTooShort

# A young business: 39 weeks of history before the cutoff, and a 39-week horizon.
START = date(2025, 1, 1)
CUTOFF = datetime(2025, 10, 1, tzinfo=UTC)
HORIZON = 273
QUICK = Config(models=ModelSettings(trials=1, max_rounds=60))


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    from training.data.generate import GenerationSpec, generate

    root = tmp_path_factory.mktemp("young")
    generate(GenerationSpec(customers=900, seed=21, start=START, days=500), root)
    return pd.read_parquet(root / "raw" / "transactions.parquet")


@pytest.fixture(scope="module")
def result(log: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> tuple[Backtest, Config]:
    config = backtest_config(QUICK, tmp_path_factory.mktemp("backtest"), HORIZON)
    return run_backtest(log, CUTOFF, config), config


def test_one_row_per_customer_seen_before_the_cutoff(log: pd.DataFrame, result) -> None:
    predictions = result[0].predictions
    assert list(predictions.columns) == OUTPUT_COLUMNS
    seen = set(log.loc[log["timestamp"] <= CUTOFF, "customer_id"])
    assert predictions["customer_id"].is_unique and set(predictions["customer_id"]) == seen


def test_values_are_in_range_and_consistent(result) -> None:
    predictions = result[0].predictions
    for column in ("p_churn", "p_purchase_30d"):
        assert predictions[column].between(0, 1).all(), column
    # P(purchase within 30 days) <= P(purchase within the 273-day horizon) = 1 - p_churn
    assert (predictions["p_purchase_30d"] <= 1 - predictions["p_churn"] + 1e-9).all()
    assert (predictions["expected_purchases"] >= 0).all()
    assert (predictions["expected_revenue_p10"] <= predictions["expected_revenue"] + 1e-9).all()
    assert (predictions["expected_revenue"] <= predictions["expected_revenue_p90"] + 1e-9).all()
    assert (predictions["next_purchase_days"] > 0).all()
    assert predictions.notna().all().all()


def test_it_trains_as_indicators_train_does_with_every_horizon_at_the_backtests(result) -> None:
    """The 273-day horizon does not fit in 273 days of history: learned shorter, carried to 273,
    and said; the run's MLflow store is the backtest's own."""
    backtest, config = result
    assert config.models.churn_horizon_days == config.models.clv_horizon_days == HORIZON
    assert HORIZON in config.models.purchase_horizons
    horizons = {r.name: r.horizons for r in backtest.training.reports}
    assert "carried to 273 d" in horizons["clv"] and "carried to 273 d" in horizons["expected_purchases"]
    assert config.mlflow_store == (config.data_dir / "mlflow").resolve() and (config.mlflow_store / "mlflow.db").exists()


def test_predictions_carry_signal_about_the_future(log: pd.DataFrame, result) -> None:
    predictions = result[0].predictions
    after = log[(log["timestamp"] > CUTOFF) & (log["timestamp"] <= CUTOFF + pd.Timedelta(days=HORIZON)) & (log["amount"] > 0)]
    bought = predictions["customer_id"].isin(after["customer_id"]).to_numpy()
    from sklearn.metrics import roc_auc_score

    from training.baselines import btyd_predictions

    ours = roc_auc_score(~bought, predictions["p_churn"])
    btyd = btyd_predictions(log, CUTOFF, (HORIZON,), HORIZON, HORIZON)
    classical = roc_auc_score(~bought, 1 - predictions[["customer_id"]].merge(btyd)[f"p_purchase_{HORIZON}d"])
    print(f"backtest AUC {ours:.3f}, BG/NBD {classical:.3f}")
    assert ours > 0.65 and ours > classical - 0.05


def test_nothing_after_the_cutoff_is_imported(log: pd.DataFrame, result) -> None:
    backtest, config = result
    imported = pd.read_parquet(config.paths.raw_table("transactions"))
    assert imported["timestamp"].max() <= CUTOFF
    assert len(imported) == (log["timestamp"] <= CUTOFF).sum()  # every row up to the cutoff, none set aside
    assert backtest.training.data_window[1] <= CUTOFF and backtest.scored_as_of <= CUTOFF


def test_a_backtest_in_a_temporary_directory_draws_no_plots_and_writes_no_report(result) -> None:
    """Nobody opens what a temporary directory held; the runs keep their metrics and model cards."""
    from training import tracking

    backtest, config = result
    assert backtest.training.report_path is None and not (config.mlflow_store / "reports").exists()
    client = tracking.setup_tracking(config)
    runs = [run for e in client.search_experiments() for run in client.search_runs([e.experiment_id])]
    published = [run for run in runs if "model_card.md" in {a.path for a in client.list_artifacts(run.info.run_id)}]
    assert published and all(not client.list_artifacts(run.info.run_id, "plots") for run in published)


def test_bad_starts_are_clear_errors(log: pd.DataFrame, result, tmp_path: Path) -> None:
    with pytest.raises(HistoryTooShort, match="days of history"):
        run_backtest(log, datetime(2025, 2, 15, tzinfo=UTC), backtest_config(QUICK, tmp_path / "short", 90))
    buyers = log.loc[(log["timestamp"] <= CUTOFF) & (log["amount"] > 0), "customer_id"].unique()[:5]
    with pytest.raises(BacktestError, match="^5 customers bought"):
        run_backtest(log[log["customer_id"].isin(buyers)], CUTOFF, backtest_config(QUICK, tmp_path / "few", 90))
    with pytest.raises(BacktestError, match="already holds data"):
        run_backtest(log, CUTOFF, result[1])  # the directory the fixture's backtest filled


@pytest.mark.slow
def test_cli_maps_columns_and_prints_what_was_served(log: pd.DataFrame, tmp_path: Path) -> None:
    source = tmp_path / "log.csv"
    log.rename(columns={"customer_id": "client"}).to_csv(source, index=False)
    out, work = tmp_path / "predictions.csv", tmp_path / "work"
    result = CliRunner().invoke(
        app,
        ["backtest", "--transactions", str(source), "--cutoff", "2026-02-01", "--horizon-days", "60",
         "--out", str(out), "--column", "customer_id=client", "--trials", "1", "--set", "models.max_rounds=60",
         "--work-dir", str(work)],
    )
    assert result.exit_code == 0, result.output
    assert "indicators train (" in result.output and "served" in result.output and f"kept in {work}" in result.output
    assert (work / "mlflow" / "reports" / "latest.html").exists()  # kept: with its report (and plots)
    frame = pd.read_csv(out)
    assert list(frame.columns) == OUTPUT_COLUMNS and np.isfinite(frame.drop(columns="customer_id")).all().all()
