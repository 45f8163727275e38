"""Real data: the public CDNOW log (shipped in the ``lifetimes`` wheel), through the commands a
user runs, compared with BG/NBD fitted in the same test on the same calibration period."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from serving.cli import app
from training.evaluation import normalized_gini

CUTOFF = pd.Timestamp("1997-09-30", tz="UTC")  # 39 weeks of calibration
HORIZON = 273  # and 39 weeks of holdout


def cdnow_file(name: str) -> Path:
    """A file of ``lifetimes/datasets`` (found without importing lifetimes)."""
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.submodule_search_locations, "the lifetimes wheel (dev dependency) is missing"
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / name


@pytest.fixture(scope="module")
def sample_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 1/10 sample (2,357 customers) as a CSV export with a header."""
    sample = pd.read_csv(cdnow_file("CDNOW_sample.txt"), sep=r"\s+", header=None, dtype=str,
                         names=["customer", "index", "date", "cds", "dollars"])
    path = tmp_path_factory.mktemp("cdnow") / "cdnow_sample.csv"
    sample.drop(columns="index").to_csv(path, index=False)
    return path


MAPPING = ["--column", "customer_id=customer", "--column", "timestamp=date", "--column", "amount=dollars",
           "--column", "quantity=cds"]


def holdout_truth(log: pd.DataFrame, customers: pd.Series) -> dict[str, np.ndarray]:
    after = log[(log["timestamp"] > CUTOFF) & (log["timestamp"] <= CUTOFF + pd.Timedelta(days=HORIZON))]
    bought = after[after["amount"] > 0]
    days = bought.assign(day=bought["timestamp"].dt.floor("D")).groupby("customer_id")["day"].nunique()
    in_30 = set(bought.loc[bought["timestamp"] <= CUTOFF + pd.Timedelta(days=30), "customer_id"])
    return {
        "purchases": customers.map(days).fillna(0).to_numpy(float),
        "revenue": customers.map(after.groupby("customer_id")["amount"].sum()).fillna(0).to_numpy(float),
        "bought_30d": customers.isin(in_30).to_numpy(),
    }


def metrics(truth: dict[str, np.ndarray], predictions: pd.DataFrame) -> dict[str, float]:
    y, expected = truth["purchases"], predictions["expected_purchases"].to_numpy(float)
    return {
        "gini": normalized_gini(y, expected),
        "total_error": expected.sum() / y.sum() - 1,
        "rmse": float(np.sqrt(np.mean((expected - y) ** 2))),
        "mae": float(np.mean(np.abs(expected - y))),
        "churn_auc": roc_auc_score(y == 0, predictions["p_churn"]),
        "p30_auc": roc_auc_score(truth["bought_30d"], predictions["p_purchase_30d"]),
        "revenue_gini": normalized_gini(truth["revenue"], predictions["expected_revenue"].to_numpy(float)),
    }


def bgnbd_same_data(log: pd.DataFrame, customers: pd.Series) -> pd.DataFrame:
    """BG/NBD + Gamma-Gamma fitted here on the calibration period: PyMC-Marketing (the project's
    baseline) for counts and revenue; P(no purchase) by the exact likelihood ratio (PyMC's
    ``expected_probability_no_purchase`` ranks customers differently from it)."""
    from training.baselines import btyd_predictions
    from training.btyd import fit_btyd
    from training.structural import customer_summary, rfm_of

    classical = btyd_predictions(log, CUTOFF, (30, HORIZON), HORIZON, HORIZON)
    frame = customers.to_frame().merge(classical, on="customer_id", how="left")
    summary = customers.to_frame().merge(customer_summary(log, CUTOFF), on="customer_id", how="left")
    rfm = rfm_of(summary)
    exact = fit_btyd("bg_nbd", rfm)
    frame["p_churn"] = exact.p_no_purchase(rfm, HORIZON)
    frame["p_purchase_30d"] = 1 - exact.p_no_purchase(rfm, 30)
    return frame.fillna({"expected_purchases": 0.0, "expected_revenue": 0.0})


def backtest_cli(source: Path, mapping: list[str], out: Path) -> tuple[pd.DataFrame, str]:
    result = CliRunner().invoke(
        app, ["backtest", "--transactions", str(source), *mapping, "--cutoff", "1997-09-30",
              "--horizon-days", str(HORIZON), "--out", str(out), "--trials", "2"],
    )
    assert result.exit_code == 0, result.output
    return pd.read_csv(out, dtype={"customer_id": str}), result.output


def coverage(truth: dict[str, np.ndarray], predictions: pd.DataFrame) -> float:
    low, high = predictions["expected_revenue_p10"].to_numpy(), predictions["expected_revenue_p90"].to_numpy()
    return float(np.mean((truth["revenue"] >= low - 1e-9) & (truth["revenue"] <= high + 1e-9)))


def test_cdnow_sample_backtest_holds_its_own_against_bgnbd(sample_csv: Path, tmp_path: Path) -> None:
    """The 1/10 sample end to end through `indicators backtest` (train on the 39 weeks, then
    score): at least about as good as BG/NBD fitted on the same data on every metric, with an
    interval that covers about 80%."""
    from serving.backtest import read_log
    from training.data.ingest import ImportOptions

    predictions, output = backtest_cli(sample_csv, MAPPING, tmp_path / "sample.csv")
    assert "indicators train (1997-01-01 .. 1997-09-30)" in output
    options = ImportOptions(columns={"customer_id": "customer", "timestamp": "date", "amount": "dollars", "quantity": "cds"})
    log, _ = read_log(sample_csv, pd.Timestamp("2100-01-01", tz="UTC"), options)
    calibration = log[log["timestamp"] <= CUTOFF]
    assert set(predictions["customer_id"]) == set(calibration["customer_id"]) and len(predictions) == 2_357
    truth = holdout_truth(log, predictions["customer_id"])
    ours, classical = metrics(truth, predictions), metrics(truth, bgnbd_same_data(calibration, predictions["customer_id"]))
    print({k: (round(ours[k], 4), round(classical[k], 4)) for k in ours}, round(coverage(truth, predictions), 3))
    assert ours["gini"] >= classical["gini"] - 0.005 and ours["revenue_gini"] >= classical["revenue_gini"] - 0.005
    assert abs(ours["total_error"]) <= abs(classical["total_error"]) + 0.005
    assert ours["rmse"] <= classical["rmse"] * 1.005 and ours["mae"] <= classical["mae"] * 1.03
    assert ours["churn_auc"] >= classical["churn_auc"] - 0.005 and ours["p30_auc"] >= classical["p30_auc"] - 0.005
    assert 0.72 <= coverage(truth, predictions) <= 0.88


def test_cdnow_imports_as_exported(tmp_path: Path) -> None:
    """The master file as shipped: columns separated by spaces, dates as 19970101, ids with
    leading zeros (kept), identical rows counted as duplicates."""
    from training.config import Paths
    from training.data.ingest import ImportOptions, ingest

    options = ImportOptions(columns={"timestamp": "date", "amount": "dollar_value", "quantity": "number_of_cds"},
                            as_of=pd.Timestamp("2000-01-01", tz="UTC"))
    [report] = ingest(Paths(tmp_path), {"transactions": cdnow_file("CDNOW_master.txt")}, options)
    table = pd.read_parquet(Paths(tmp_path).raw_table("transactions"))
    assert report.rows_read == 69_659 and table["customer_id"].nunique() == 23_570
    assert set(report.reasons) == {"duplicate row"} and report.books.balanced
    assert table["customer_id"].str.fullmatch(r"\d{5}").all()
    assert table["timestamp"].min() == pd.Timestamp("1997-01-01", tz="UTC")


@pytest.mark.slow
def test_cdnow_39_39_weeks_against_the_classical_models(tmp_path: Path) -> None:
    """The full log, 39 weeks of calibration and 39 of holdout, through `indicators backtest`
    (train on the 39 weeks, then score). The gate serves Pareto/NBD for expected purchases (its
    inner-window corrections do not hold on the test window) and its corrected fit for the
    CLV: at least BG/NBD's ranking and error, Pareto/NBD's within a hair, better revenue
    ranking than both, an 80% interval that covers 75-85%. The level stays Pareto/NBD's
    (-12.7%, the +-10% target is missed)."""
    from serving.backtest import read_log
    from training.data.ingest import ImportOptions

    source = cdnow_file("CDNOW_master.txt")
    mapping = ["--column", "timestamp=date", "--column", "amount=dollar_value", "--column", "quantity=number_of_cds"]
    predictions, output = backtest_cli(source, mapping, tmp_path / "master.csv")
    options = ImportOptions(columns={"timestamp": "date", "amount": "dollar_value", "quantity": "number_of_cds"})
    log, _ = read_log(source, pd.Timestamp("2100-01-01", tz="UTC"), options)
    truth = holdout_truth(log, predictions["customer_id"])
    ours = metrics(truth, predictions)
    classical = metrics(truth, bgnbd_same_data(log[log["timestamp"] <= CUTOFF], predictions["customer_id"]))
    print(output, {k: (round(ours[k], 4), round(classical[k], 4)) for k in ours}, round(coverage(truth, predictions), 3))
    assert ours["gini"] >= max(classical["gini"], 0.673 - 0.002)  # Pareto/NBD: 0.674
    assert abs(ours["total_error"]) <= min(abs(classical["total_error"]), 0.128 + 0.005)  # Pareto/NBD: -12.8%
    assert ours["rmse"] <= min(classical["rmse"], 1.726)  # Pareto/NBD: 1.726
    assert ours["mae"] <= 1.03 * min(classical["mae"], 0.794)  # Pareto/NBD: 0.793
    assert ours["churn_auc"] >= classical["churn_auc"] + 0.005
    assert ours["p30_auc"] >= classical["p30_auc"]
    assert ours["revenue_gini"] >= max(classical["revenue_gini"], 0.685)  # Pareto/NBD x Gamma-Gamma: 0.685
    assert 0.75 <= coverage(truth, predictions) <= 0.85
