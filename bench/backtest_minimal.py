"""`indicators backtest` on the smallest log a shop exports: customer_id, timestamp, amount.

    python -m bench.backtest_minimal --out bench/backtest_minimal_results.json

Generated customers (``indicators generate --transactions-only`` with every optional column
left out) are written as a CSV and backtested through the commands a user runs, each as its
own process, timed from outside: what a user waits for, imports included. The training
stages' seconds come from the command's own summary.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from bench.run import machine_info

OPTIONAL = ("order_id", "quantity", "category", "channel", "discount")


def run(customers: int, horizon_days: int) -> dict:
    indicators = str(Path(sys.executable).with_name("indicators"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        omit = [arg for column in OPTIONAL for arg in ("--omit", column)]
        subprocess.run([indicators, "generate", "--customers", str(customers), "--seed", "21", "--start", "2025-01-01",
                        "--days", "500", "--transactions-only", *omit, "--out", str(work / "generated")],
                       check=True, capture_output=True)
        log = pd.read_parquet(work / "generated" / "raw" / "transactions.parquet")
        source = work / "export.csv"
        log.to_csv(source, index=False)
        cutoff = (log["timestamp"].max() - pd.Timedelta(days=horizon_days + 15)).strftime("%Y-%m-%d")
        started = time.perf_counter()
        output = subprocess.run(
            [indicators, "backtest", "--transactions", str(source), "--cutoff", cutoff, "--horizon-days", str(horizon_days),
             "--out", str(work / "predictions.csv")], check=True, capture_output=True, text=True,
        ).stderr  # rich writes to stderr
        wall = time.perf_counter() - started
        scored = len(pd.read_csv(work / "predictions.csv"))
    stages = re.search(r"stage seconds: (.*?); total ([\d.]+)", " ".join(output.split()))
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "data": f"{customers} generated customers, columns {list(log.columns)}, {len(log):,} rows, cutoff {cutoff}, "
                f"horizon {horizon_days} days",
        "seconds": {"backtest_wall": round(wall, 1), "training_stages": float(stages.group(2)) if stages else None},
        "stages": stages.group(1) if stages else None,
        "customers_scored": scored,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/backtest_minimal_results.json"))
    parser.add_argument("--customers", type=int, default=900)
    parser.add_argument("--horizon-days", type=int, default=90)
    args = parser.parse_args()
    result = run(args.customers, args.horizon_days)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["seconds"]), result["stages"])


if __name__ == "__main__":
    main()
