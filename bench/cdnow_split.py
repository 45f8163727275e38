"""The CDNOW 39/39-week split through both routes a user has, beside the classical models.

    python -m bench.cdnow_split --out bench/cdnow_split_results.json

Calibration to 1997-09-30, holdout of 273 days; purchases are distinct purchase days; every
customer of the calibration period, through ``indicators backtest`` (``indicators train`` on
the log up to the cutoff with every horizon at 273 days: learnt where the 39 weeks allow,
carried beyond, gated against the classical models; then ``indicators score``). Beside it,
BG/NBD (PyMC-Marketing; churn by the exact likelihood ratio) and Pareto/NBD fitted on the same
calibration data.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from bench.run import machine_info
from bench.short_history import COLUMNS, cdnow_master, gate_notes, main_of
from serving.backtest import read_log
from training import baselines
from training.btyd import fit_btyd
from training.data.ingest import ImportOptions
from training.evaluation import normalized_gini
from training.structural import customer_summary, rfm_of

CUTOFF = "1997-09-30"
HORIZON = 273


def _scores(truth: dict[str, np.ndarray], predictions: pd.DataFrame) -> dict[str, float]:
    y, expected = truth["purchases"], predictions["expected_purchases"].to_numpy(float)
    scores = {
        "purchases_normalized_gini": normalized_gini(y, expected),
        "purchases_total_error": float(expected.sum() / y.sum() - 1),
        "purchases_rmse": float(np.sqrt(np.mean((expected - y) ** 2))),
        "purchases_mae": float(np.mean(np.abs(expected - y))),
        "churn_auc": float(roc_auc_score(y == 0, predictions["p_churn"])),
        "p_purchase_30d_auc": float(roc_auc_score(truth["bought_30d"], predictions["p_purchase_30d"])),
        "revenue_normalized_gini": normalized_gini(truth["revenue"], predictions["expected_revenue"].to_numpy(float)),
    }
    if "expected_revenue_p10" in predictions:  # the classical baselines give no interval
        low, high = predictions["expected_revenue_p10"].to_numpy(float), predictions["expected_revenue_p90"].to_numpy(float)
        scores["revenue_p10_p90_coverage"] = float(np.mean((truth["revenue"] >= low - 1e-9) & (truth["revenue"] <= high + 1e-9)))
    return scores


def _truth(log: pd.DataFrame, cutoff: pd.Timestamp, ids: pd.Series) -> dict[str, np.ndarray]:
    after = log[(log["timestamp"] > cutoff) & (log["timestamp"] <= cutoff + pd.Timedelta(days=HORIZON))]
    bought = after[after["amount"] > 0]
    days = bought.assign(day=bought["timestamp"].dt.floor("D")).groupby("customer_id")["day"].nunique()
    in_30 = set(bought.loc[bought["timestamp"] <= cutoff + pd.Timedelta(days=30), "customer_id"])
    return {
        "purchases": ids.map(days).fillna(0).to_numpy(float),
        "revenue": ids.map(after.groupby("customer_id")["amount"].sum()).fillna(0).to_numpy(float),
        "bought_30d": ids.isin(in_30).to_numpy(),
    }


def _classical(past: pd.DataFrame, cutoff: pd.Timestamp, ids: pd.Series, kind: str) -> pd.DataFrame:
    """A classical model's predictions; P(no purchase) by the exact likelihood ratio."""
    fitted = baselines.btyd_predictions if kind == "bg_nbd" else baselines.pareto_nbd_predictions
    frame = ids.to_frame("customer_id").merge(fitted(past, cutoff.to_pydatetime(), (30, HORIZON), HORIZON, HORIZON),
                                              on="customer_id", how="left")
    rfm = rfm_of(ids.to_frame("customer_id").merge(customer_summary(past, cutoff), on="customer_id", how="left"))
    exact = fit_btyd(kind, rfm)
    frame["p_churn"], frame["p_purchase_30d"] = exact.p_no_purchase(rfm, HORIZON), 1 - exact.p_no_purchase(rfm, 30)
    return frame.fillna({"expected_purchases": 0.0, "expected_revenue": 0.0})


def run(work: Path, trials: int) -> dict:
    full_csv, out = work / "cdnow.csv", work / "predictions.csv"
    cdnow_master().to_csv(full_csv, index=False)
    mapping = [arg for canonical, source in COLUMNS.items() for arg in ("--column", f"{canonical}={source}")]
    command = [str(Path(sys.executable).with_name("indicators")), "backtest", "--transactions", str(full_csv), *mapping,
               "--cutoff", CUTOFF, "--horizon-days", str(HORIZON), "--out", str(out), "--trials", str(trials)]
    started = time.perf_counter()
    output = subprocess.run(command, check=True, capture_output=True, text=True).stderr  # rich writes to stderr
    backtest_seconds = time.perf_counter() - started

    cutoff = pd.Timestamp(CUTOFF, tz="UTC") + pd.Timedelta(hours=23, minutes=59, seconds=59)
    log, _ = read_log(full_csv, pd.Timestamp("2100-01-01", tz="UTC"), ImportOptions(columns=COLUMNS))
    past = log[log["timestamp"] <= cutoff]
    predictions = pd.read_csv(out, dtype={"customer_id": str})
    ids = predictions["customer_id"].sort_values().reset_index(drop=True)
    truth = _truth(log, cutoff, ids)
    methods = {
        "BG/NBD (PyMC-Marketing)": _scores(truth, _classical(past, cutoff, ids, "bg_nbd")),
        "Pareto/NBD": _scores(truth, _classical(past, cutoff, ids, "pareto_nbd")),
        "indicators backtest": _scores(truth, ids.to_frame("customer_id").merge(predictions, on="customer_id", how="left")),
    }
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "data": f"CDNOW master, {len(ids):,} customers of the calibration period to {CUTOFF}; {HORIZON} days of holdout",
        "seconds": {"backtest": round(backtest_seconds, 1)},
        "gate_notes": gate_notes(output),
        "methods": methods,
    }


def main() -> None:
    main_of(run, __doc__, "bench/cdnow_split_results.json")


if __name__ == "__main__":
    main()
