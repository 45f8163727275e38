"""Short history on real data: `indicators train` on six months of CDNOW, scored against the year after.

    python -m bench.short_history --out bench/short_history_results.json

CDNOW (shipped in the ``lifetimes`` wheel, a dev dependency) to 1997-06-30 is 181 days of
history, too short to learn a 90-day window, let alone 365: train learns 30 days and carries
churn and expected purchases to 90 days and the CLV to 365 (``training.carry``), and the gate
serves the classical model where the learnt one loses (the CLV, on its level). Its scores
are compared on the 365 days after the cutoff with BG/NBD x Gamma-Gamma (PyMC-Marketing) and
Pareto/NBD x Gamma-Gamma fitted on the same six months.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from bench.run import machine_info
from serving.backtest import read_log
from training import baselines
from training.data.ingest import ImportOptions
from training.evaluation import normalized_gini

CUTOFF = "1997-06-30"
COLUMNS = {"customer_id": "customer", "timestamp": "date", "amount": "dollars", "quantity": "cds"}


def cdnow_master() -> pd.DataFrame:
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the lifetimes wheel (a dev dependency: `make setup`) ships CDNOW; it is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "CDNOW_master.txt"
    return pd.read_csv(path, sep=r"\s+", header=None, dtype=str, names=["customer", "date", "cds", "dollars"])


def train_and_score(work: Path, cutoff: str, trials: int, *train_args: str) -> tuple[Path, Path, list[str], float]:
    """CDNOW to ``cutoff`` through ``indicators ingest``, ``train`` and ``score`` in ``work``:
    the full log's CSV, the data directory, each command's output and the seconds they took."""
    raw = cdnow_master()
    full_csv, cut_csv, data = work / "cdnow.csv", work / "cdnow_to_cutoff.csv", work / "data"
    raw.to_csv(full_csv, index=False)
    raw[raw["date"] <= cutoff.replace("-", "")].to_csv(cut_csv, index=False)
    mapping = [arg for canonical, source in COLUMNS.items() for arg in ("--column", f"{canonical}={source}")]
    indicators = str(Path(sys.executable).with_name("indicators"))
    commands = [
        [indicators, "ingest", "--transactions", str(cut_csv), *mapping, "--data-dir", str(data), "--as-of", "2100-01-01"],
        [indicators, "train", "--data-dir", str(data), "--trials", str(trials), *train_args],
        [indicators, "score", "--data-dir", str(data)],
    ]
    started = time.perf_counter()
    outputs = [subprocess.run(c, check=True, capture_output=True, text=True).stderr for c in commands]  # rich writes to stderr
    return full_csv, data, outputs, time.perf_counter() - started


def gate_notes(train_output: str) -> list[str]:
    """The gate's notes of a train summary, each joined back into one line (the console wraps
    lines at 150 characters when piped)."""
    from training.catalogue import MODELS

    starts = tuple(f"{model.name}:" for model in MODELS)
    blocks: list[str] = []
    for line in train_output.splitlines():
        if line.startswith(starts):
            blocks.append(line)
        elif blocks and line and not line[0].isspace() and not line.startswith("stage seconds"):
            blocks[-1] = blocks[-1].rstrip() + " " + line.strip()
        elif blocks:
            blocks.append("")  # the notes end here
    return [block for block in blocks if "loses to baseline" in block]


def main_of(run: Callable[[Path, int], dict], doc: str, default_out: str) -> None:
    """A CDNOW benchmark's command line: ``--out`` and ``--trials``; the table printed."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(default_out))
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), args.trials)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(pd.DataFrame(result["methods"]).T.round(4).to_string())


def run(work: Path, trials: int) -> dict:
    full_csv, data, outputs, seconds = train_and_score(work, CUTOFF, trials)

    cutoff = pd.Timestamp(CUTOFF, tz="UTC") + pd.Timedelta(hours=23, minutes=59, seconds=59)
    log, _ = read_log(full_csv, pd.Timestamp("2100-01-01", tz="UTC"), ImportOptions(columns=COLUMNS))
    past = log[log["timestamp"] <= cutoff]
    ids = pd.Series(sorted(past.loc[past["amount"] > 0, "customer_id"].unique()))

    def after(days: int) -> tuple[np.ndarray, np.ndarray]:
        window = log[(log["timestamp"] > cutoff) & (log["timestamp"] <= cutoff + pd.Timedelta(days=days))]
        bought = window[window["amount"] > 0]
        purchase_days = bought.assign(day=bought["timestamp"].dt.floor("D")).groupby("customer_id")["day"].nunique()
        return ids.map(purchase_days).fillna(0).to_numpy(float), ids.map(window.groupby("customer_id")["amount"].sum()).fillna(0).to_numpy(float)

    purchases_90, _ = after(90)
    _, revenue_365 = after(365)

    def scored(revenue: np.ndarray, purchases: np.ndarray, churn: np.ndarray) -> dict[str, float]:
        return {
            "revenue_365d_normalized_gini": normalized_gini(revenue_365, revenue),
            "revenue_365d_total_error": float(revenue.sum() / revenue_365.sum() - 1),
            "revenue_365d_rmse": float(np.sqrt(np.mean((revenue - revenue_365) ** 2))),
            "purchases_90d_normalized_gini": normalized_gini(purchases_90, purchases),
            "purchases_90d_total_error": float(purchases.sum() / purchases_90.sum() - 1),
            "purchases_90d_mae": float(np.mean(np.abs(purchases - purchases_90))),
            "churn_90d_auc": float(roc_auc_score(purchases_90 == 0, churn)),
        }

    def column(frame: pd.DataFrame, name: str) -> np.ndarray:
        return ids.map(frame.set_index("customer_id")[name]).to_numpy(float)

    scores = pd.read_parquet(data / "predictions" / "scores.parquet")
    methods = {"indicators train + score (as the gate serves)": scored(
        column(scores, "expected_revenue"), column(scores, "expected_purchases"), column(scores, "p_churn"))}
    for name, predictions in (
        ("BG/NBD x Gamma-Gamma (PyMC-Marketing)", baselines.btyd_predictions(past, cutoff.to_pydatetime(), (90,), 90, 365)),
        ("Pareto/NBD x Gamma-Gamma", baselines.pareto_nbd_predictions(past, cutoff.to_pydatetime(), (90,), 90, 365)),
    ):
        methods[name] = scored(column(predictions, "expected_revenue"), column(predictions, "expected_purchases"),
                               1 - column(predictions, "p_purchase_90d"))
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "data": f"CDNOW master, {len(ids):,} customers who bought by {CUTOFF}; outcomes from the full log",
        "train_and_score_seconds": round(seconds, 1),
        "train_summary_horizons": [line for line in outputs[1].splitlines() if "carried" in line],
        "train_summary_gate_notes": gate_notes(outputs[1]),
        "methods": methods,
    }


def main() -> None:
    main_of(run, __doc__, "bench/short_history_results.json")


if __name__ == "__main__":
    main()
