"""The backtest's contract: its columns, their ranges, one row per customer, no future data."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.cli import app
from training.backtest import OUTPUT_COLUMNS, BacktestError, run_backtest

# A young business: 39 weeks of history before the cutoff, and a 39-week horizon.
START = date(2025, 1, 1)
CUTOFF = datetime(2025, 10, 1, tzinfo=UTC)
HORIZON = 273


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    from training.data.generate import GenerationSpec, generate

    root = tmp_path_factory.mktemp("young")
    generate(GenerationSpec(customers=900, seed=21, start=START, days=500), root)
    return pd.read_parquet(root / "raw" / "transactions.parquet")


@pytest.fixture(scope="module")
def result(log: pd.DataFrame):
    return run_backtest(log, CUTOFF, HORIZON)


def test_one_row_per_customer_seen_before_the_cutoff(log: pd.DataFrame, result) -> None:
    predictions, _ = result
    assert list(predictions.columns) == OUTPUT_COLUMNS
    seen = set(log.loc[log["timestamp"] <= CUTOFF, "customer_id"])
    assert predictions["customer_id"].is_unique and set(predictions["customer_id"]) == seen


def test_values_are_in_range_and_consistent(result) -> None:
    predictions, choice = result
    assert choice.inner_horizon_days == 136  # half the 273 days of history: the horizon cannot be held
    for column in ("p_churn", "p_purchase_30d"):
        assert predictions[column].between(0, 1).all(), column
    # P(purchase within 30 days) <= P(purchase within the 273-day horizon) = 1 - p_churn
    assert (predictions["p_purchase_30d"] <= 1 - predictions["p_churn"] + 1e-9).all()
    assert (predictions["expected_purchases"] >= 0).all()
    assert (predictions["expected_revenue_p10"] <= predictions["expected_revenue"] + 1e-9).all()
    assert (predictions["expected_revenue"] <= predictions["expected_revenue_p90"] + 1e-9).all()
    assert (predictions["next_purchase_days"] > 0).all()
    assert predictions.notna().all().all()


def test_predictions_carry_signal_about_the_future(log: pd.DataFrame, result) -> None:
    predictions, _ = result
    after = log[(log["timestamp"] > CUTOFF) & (log["timestamp"] <= CUTOFF + pd.Timedelta(days=HORIZON)) & (log["amount"] > 0)]
    bought = predictions["customer_id"].isin(after["customer_id"]).to_numpy()
    from sklearn.metrics import roc_auc_score

    from training.baselines import btyd_predictions

    ours = roc_auc_score(~bought, predictions["p_churn"])
    btyd = btyd_predictions(log, CUTOFF, (HORIZON,), HORIZON, HORIZON)
    classical = roc_auc_score(~bought, 1 - predictions[["customer_id"]].merge(btyd)[f"p_purchase_{HORIZON}d"])
    print(f"backtest AUC {ours:.3f}, BG/NBD {classical:.3f}")
    # On a young business the structural model is hard to beat; the backtest must stay close.
    assert ours > 0.65 and ours > classical - 0.05


def test_nothing_after_the_cutoff_is_read(log: pd.DataFrame, result) -> None:
    before = log[log["timestamp"] <= CUTOFF]
    altered = pd.concat(
        [before, log[log["timestamp"] > CUTOFF].assign(amount=lambda f: f["amount"] * 100)], ignore_index=True
    )
    again, _ = run_backtest(altered, CUTOFF, HORIZON)
    pd.testing.assert_frame_equal(result[0], again)


def test_too_little_history_is_a_clear_error(log: pd.DataFrame) -> None:
    with pytest.raises(BacktestError, match="days of history"):
        run_backtest(log, datetime(2025, 2, 15, tzinfo=UTC), 90)
    buyers = log.loc[(log["timestamp"] <= CUTOFF) & (log["amount"] > 0), "customer_id"].unique()[:5]
    few = log[log["customer_id"].isin(buyers)]
    with pytest.raises(BacktestError, match="^5 customers bought"):
        run_backtest(few, CUTOFF, 90)


@pytest.mark.slow
def test_cli_maps_columns_and_names_the_model(log: pd.DataFrame, tmp_path: Path) -> None:
    source = tmp_path / "log.csv"
    log.rename(columns={"customer_id": "client"}).to_csv(source, index=False)
    out = tmp_path / "predictions.csv"
    result = CliRunner().invoke(
        app,
        ["backtest", "--transactions", str(source), "--cutoff", "2026-02-01", "--horizon-days", "60",
         "--out", str(out), "--column", "customer_id=client"],
    )
    assert result.exit_code == 0, result.output
    assert "model:" in result.output
    frame = pd.read_csv(out)
    assert list(frame.columns) == OUTPUT_COLUMNS and np.isfinite(frame.drop(columns="customer_id")).all().all()
