"""``indicators backtest``: any transaction log and a cutoff in, per-customer predictions out.

Only rows dated at or before the cutoff are read. A transaction log alone says who bought
when and for how much, which is what the classical buy-till-you-die models describe; the
forecast starts from them and learns only the corrections an inner window before the
cutoff supports (``training.structural``). It works on any history from 8 weeks up, a young
business whose history is shorter than the horizon included.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd

from training.catalogue import BACKTEST_INDICATORS
from training.config import as_utc
from training.data.ingest import ImportOptions, normalize, read_source
from training.structural import Choice, forecast
from training.windows import MIN_BUYERS, MIN_HISTORY_DAYS

OUTPUT_COLUMNS = ["customer_id", *BACKTEST_INDICATORS]


class BacktestError(ValueError):
    """The log cannot be backtested at this cutoff (too little data before it)."""


def read_log(path: Path, cutoff: datetime, options: ImportOptions | None = None) -> tuple[pd.DataFrame, int]:
    """The canonical log restricted to rows at or before ``cutoff``; and the count of bad rows."""
    options = options or ImportOptions()
    source, _ = read_source(path, options.delimiter)
    far_future = ImportOptions(**{**options.__dict__, "as_of": datetime(2200, 1, 1)})
    result = normalize("transactions", source, far_future)
    clean = result.clean
    return clean[clean["timestamp"] <= pd.Timestamp(as_utc(cutoff))].reset_index(drop=True), len(result.quarantined)


def run_backtest(
    transactions: pd.DataFrame, cutoff: datetime, horizon: int, seed: int = 42, threads: int = 2
) -> tuple[pd.DataFrame, Choice]:
    """Predictions for every customer with a transaction at or before ``cutoff``, and what the
    forecast chose. ``p_churn`` is the probability of no purchase in (cutoff, cutoff + horizon]."""
    cutoff = pd.Timestamp(as_utc(cutoff))
    log = transactions[transactions["timestamp"] <= cutoff]
    bought = log.loc[log["amount"] > 0, "timestamp"]
    if bought.empty:
        raise BacktestError("no purchase at or before the cutoff")
    buyers = log.loc[log["amount"] > 0, "customer_id"].nunique()
    if buyers < MIN_BUYERS:
        raise BacktestError(f"{buyers} customers bought before the cutoff; at least {MIN_BUYERS} are needed to fit a model")
    history = (cutoff - bought.min()).total_seconds() / 86_400
    if history < MIN_HISTORY_DAYS:
        raise BacktestError(f"{history:.0f} days of history before the cutoff; at least {MIN_HISTORY_DAYS} are needed")
    predictions, choice = forecast(log, cutoff, horizon, seed=seed, threads=threads)
    return predictions[OUTPUT_COLUMNS], choice


def choice_note(choice: Choice) -> str:
    """One line for the command's output: which model the gate chose, and why."""
    level = f", level x{choice.level:.3f}" if choice.level != 1.0 else ""
    boost = ", LightGBM correction" if choice.boosted else ""
    return f"model: {choice.model}{level}{boost} ({choice.reason})"
