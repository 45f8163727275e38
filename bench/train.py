"""Training benchmark: stage times and backtest metrics against our targets for the models.

    python -m bench.train --customers 100000 --out bench/train_results.json

Generates three years of customers into a scratch directory, runs ``indicators train`` there
(own MLflow store), and writes per-stage seconds, peak memory, every model's headline metric
next to its best classical baseline and the oracle, and whether each target is met.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd

from bench.run import machine_info
from training.config import Config, ModelSettings
from training.data.generate import GenerationSpec, generate
from training.pipeline import TrainingResult, run_training


def _metric(result: TrainingResult, indicator: str, metric: str, method: str) -> float | None:
    for report in result.reports:
        rows = report.metrics.query(
            "indicator == @indicator and metric == @metric and method == @method"
        )
        if len(rows):
            return float(rows["value"].iloc[0])
    return None


def targets(result: TrainingResult) -> dict:
    """Our targets for the models, each with the numbers it is judged on."""
    out = {}
    by_indicator = {r.indicator: r for r in result.reports}
    for indicator, margin, kind in (
        ("churn", 0.02, "abs"),
        ("p_purchase_30d", 0.02, "abs"),
        ("expected_purchases", 0.05, "rel"),
        ("expected_revenue", 0.02, "abs"),
    ):
        report = by_indicator[indicator]
        name, baseline = report.best_baseline
        if kind == "abs":
            gap = report.model_value - baseline
            met = gap >= margin
        else:  # MAE: lower is better, by at least 5 %
            gap = 1 - report.model_value / baseline
            met = gap >= margin
        out[f"{indicator}_{report.metric}_beats_best_baseline"] = {
            "model": report.model_value,
            "best_baseline": baseline,
            "baseline": name,
            "oracle": report.oracle,
            "gap": gap,
            "required": margin,
            "met": bool(met),
            "gap_to_oracle": None if report.oracle is None else report.oracle - report.model_value,
        }
    ece = _metric(result, "churn", "ece", "model")
    out["churn_ece_below_0.02"] = {"value": ece, "met": ece is not None and ece < 0.02}
    total = _metric(result, "expected_revenue", "total_error", "model")
    out["clv_total_error_within_5pct"] = {
        "value": total,
        "met": total is not None and abs(total) <= 0.05,
    }
    coverage = _metric(result, "expected_revenue", "p10_p90_coverage", "model")
    out["clv_p10_p90_coverage_75_to_85pct"] = {
        "value": coverage,
        "met": coverage is not None and 0.75 <= coverage <= 0.85,
    }
    return out


def run(customers: int, trials: int, work: Path) -> dict:
    data_dir = work / f"customers-{customers}"
    began = time.perf_counter()
    generate(
        GenerationSpec(customers=customers, seed=42, start=date(2023, 11, 1), days=1095), data_dir
    )
    generation = time.perf_counter() - began
    config = Config(
        data_dir=data_dir, mlflow_dir=data_dir / "mlflow", models=ModelSettings(trials=trials)
    )
    began = time.perf_counter()
    result = run_training(config)
    total = time.perf_counter() - began
    metrics = pd.concat([r.metrics.assign(model=r.name) for r in result.reports]).drop_duplicates()
    return {
        "customers": customers,
        "customers_modelled": int(min(customers, config.models.max_customers or customers)),
        "trials_per_model": trials,
        "seconds": {"generate": generation, **result.timings, "train_total": total},
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "headline": [
            {
                "model": r.name,
                "indicator": r.indicator,
                "metric": r.metric,
                "model_value": r.model_value,
                "baselines": r.baselines,
                "oracle": r.oracle,
            }
            for r in result.reports
        ],
        "targets": targets(result),
        "metrics": metrics.to_dict(orient="records"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[100_000])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench/train_results.json"))
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="Scratch directory (default: a temp dir, removed).",
    )
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-train-"))
    payload = {"created": datetime.now(UTC).isoformat(), "machine": machine_info(), "runs": []}
    runs = payload["runs"]
    try:
        for n in args.customers:
            runs.append(run(n, args.trials, work))
            args.out.write_text(json.dumps(payload, indent=2, default=str))  # a later scale may fail
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    for r in runs:
        print(
            f"{r['customers']:,} customers: "
            + ", ".join(f"{k} {v:.0f}s" for k, v in r["seconds"].items())
        )
        for name, target in r["targets"].items():
            print(
                f"  {'OK  ' if target['met'] else 'MISS'} {name}: {json.dumps(target, default=str)}"
            )


if __name__ == "__main__":
    main()
