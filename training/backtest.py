"""``indicators backtest``: any transaction log and a cutoff in, per-customer predictions out.

Only rows dated at or before the cutoff are read. Models are trained on label windows that
end at the cutoff, so the horizon they can learn directly is limited by the history:

- With enough history (at least twice the horizon plus ``MIN_HISTORY_DAYS``), the models learn
  the requested horizon directly.
- BG/NBD estimates at each training cutoff (fitted on the data up to that cutoff) are model
  features, so the boosted models start from the classical model's view of each customer.
- Otherwise (a young business: say 39 weeks of history and a 39-week horizon) they learn the
  longest horizon the history holds, ``h``, and the prediction is carried from ``h`` to the
  requested horizon ``N`` with a BG/NBD model (PyMC-Marketing, MAP) fitted on all history up
  to the cutoff: for each customer, expected counts and revenue are scaled by
  E_btyd[N] / E_btyd[h], and P(no purchase in N) = P(no purchase in h) ** (log S_btyd(N) /
  log S_btyd(h)), so the machine-learned ranking is kept and BTYD supplies the shape of the
  customer's purchase curve beyond what the data can show.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from training import baselines
from training.config import Config, as_utc
from training.data.ingest import ImportOptions, normalize, read_source
from training.dataset import entity_rows, features_at
from training.features import store as feature_store
from training.features.snapshots import build_snapshots, connect
from training.labels import build_labels
from training.models import ClvModel, CountModel, PurchaseTimingModel

OUTPUT_COLUMNS = [
    "customer_id",
    "p_churn",
    "p_purchase_30d",
    "expected_purchases",
    "expected_revenue",
    "expected_revenue_p10",
    "expected_revenue_p90",
    "next_purchase_days",
]
MIN_HISTORY_DAYS = 56
GRID = (7, 14, 30, 60, 90, 180, 365)
FIT_CUTOFFS = 3


class BacktestError(ValueError):
    """The log cannot be backtested at this cutoff (too little data before it)."""


@dataclass(frozen=True)
class BacktestPlan:
    learned_horizon: int
    requested_horizon: int
    fit: tuple[datetime, ...]
    tune: datetime
    cutoff: datetime

    @property
    def scaled(self) -> bool:
        """True when the requested horizon is longer than the history lets the models learn."""
        return self.learned_horizon < self.requested_horizon


def plan(first_purchase: datetime, cutoff: datetime, horizon: int) -> BacktestPlan:
    """Training cutoffs whose label windows end by ``cutoff``; the horizon the history allows."""
    history = (cutoff - first_purchase).total_seconds() / 86_400
    learnable = int((history - MIN_HISTORY_DAYS) // 2)
    if learnable < 14:
        raise BacktestError(
            f"{history:.0f} days of history before the cutoff; at least {MIN_HISTORY_DAYS + 28} are needed"
        )
    learned = min(max(horizon, 30), learnable)  # at least 30 days, for p_purchase_30d
    tune = cutoff - timedelta(days=learned)
    step = max(7, min(30, learned // 2))
    earliest = first_purchase + timedelta(days=MIN_HISTORY_DAYS)
    fit = [tune - timedelta(days=step * k) for k in range(1, FIT_CUTOFFS + 1)]
    fit = [c for c in fit if c >= earliest] or [earliest]
    return BacktestPlan(learned, horizon, tuple(sorted(fit)), tune, cutoff)


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
) -> tuple[pd.DataFrame, BacktestPlan]:
    """Predictions for every customer with a transaction at or before ``cutoff``."""
    cutoff = as_utc(cutoff)
    transactions = transactions[transactions["timestamp"] <= pd.Timestamp(cutoff)]
    purchases = transactions[transactions["amount"] > 0]
    if purchases.empty:
        raise BacktestError("no purchase at or before the cutoff")
    schedule = plan(purchases["timestamp"].min().to_pydatetime(), cutoff, horizon)
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(data_dir=Path(tmp))
        paths = config.paths
        paths.raw.mkdir(parents=True)
        transactions.to_parquet(paths.raw_table("transactions"), index=False)
        cutoffs = [*schedule.fit, schedule.tune, cutoff]
        build_snapshots(paths, cutoffs)
        store = feature_store.feature_store(config)
        feature_store.apply(store, paths)
        profile = pd.read_parquet(paths.features / "customer_profile.parquet", columns=["customer_id", "signup_at"])
        rows = entity_rows(profile, cutoffs)
        features = features_at(store, rows)
        learned = schedule.learned_horizon
        grid = tuple(sorted({g for g in (*GRID, horizon) if g < learned} | {learned}))
        con = connect(paths)
        try:
            labels = build_labels(con, rows, grid, [schedule.learned_horizon], cutoff)
        finally:
            con.close()
    data = features.merge(labels, on=["customer_id", "cutoff"], validate="one_to_one")
    data = data.merge(_btyd_features(transactions, cutoffs, schedule.learned_horizon), on=["customer_id", "cutoff"], how="left")
    # The boosters stop early and calibrate on the last fit cutoff; the tune cutoff is kept
    # apart for the stacker below, so its weights are fitted on predictions no model has seen.
    fit = data[data["cutoff"].isin(list(schedule.fit[:-1]) or list(schedule.fit))]
    calibrate = data[data["cutoff"] == pd.Timestamp(schedule.fit[-1])]
    tune = data[data["cutoff"] == pd.Timestamp(schedule.tune)]
    now = data[data["cutoff"] == pd.Timestamp(cutoff)].reset_index(drop=True)
    seen = set(transactions["customer_id"])
    now = now[now["customer_id"].isin(seen)].reset_index(drop=True)

    h = schedule.learned_horizon
    common = {"seed": seed, "threads": threads, "max_rounds": 400}
    sets = {
        g: (fit, (fit[f"future_purchase_days_{g}d"] > 0).to_numpy(float), calibrate, (calibrate[f"future_purchase_days_{g}d"] > 0).to_numpy(float))
        for g in grid
    }
    timing = PurchaseTimingModel(horizons=grid, churn_horizon=h, **common).fit(sets)
    counts = CountModel(horizon=h, **common).fit(
        fit, fit[f"future_purchase_days_{h}d"].to_numpy(float), tune, tune[f"future_purchase_days_{h}d"].to_numpy(float)
    )
    clv = ClvModel(horizon=h, **common).fit(
        fit, fit[f"future_revenue_{h}d"].to_numpy(float), tune, tune[f"future_revenue_{h}d"].to_numpy(float)
    )
    curve = timing.predict(now)
    # Stack the learned curve's last point with BG/NBD's estimate for the same horizon; the
    # weights are fitted on the tune window, so a young business leans on the structural model
    # exactly as much as it earned there.
    bought_in_tune = (tune[f"future_purchase_days_{h}d"] > 0).to_numpy(float)
    stacker = _fit_stacker(timing.purchase_curve(tune)[f"p_purchase_{h}d"], tune["btyd_p_purchase"], bought_in_tune)
    stacked = _apply_stacker(stacker, curve[f"p_purchase_{h}d"], now["btyd_p_purchase"])
    curve[f"p_purchase_{h}d"] = stacked
    ordered = curve[[f"p_purchase_{g}d" for g in grid]].to_numpy()
    curve[[f"p_purchase_{g}d" for g in grid]] = np.minimum.accumulate(ordered[:, ::-1], axis=1)[:, ::-1]
    expected = counts.predict(now)["expected_purchases"].to_numpy()
    revenue = clv.predict(now)
    out = pd.DataFrame({"customer_id": now["customer_id"]})
    if schedule.scaled:
        btyd = baselines.btyd_predictions(transactions, cutoff, sorted({h, horizon, 30}), h, horizon)
        btyd = now[["customer_id"]].merge(btyd, on="customer_id", how="left")
        s_learned = np.clip(1.0 - btyd[f"p_purchase_{h}d"].to_numpy(), 1e-9, 1 - 1e-9)

        def carried(days: int) -> np.ndarray:
            """P(purchase within ``days`` > h): the learned survival raised to BG/NBD's log-survival ratio."""
            s_days = np.clip(1.0 - btyd[f"p_purchase_{days}d"].to_numpy(), 1e-9, 1 - 1e-9)
            exponent = np.nan_to_num(np.maximum(np.log(s_days) / np.log(s_learned), 1.0), nan=days / h)
            p_learned = curve[f"p_purchase_{h}d"].to_numpy()
            return np.maximum(1.0 - (1.0 - p_learned) ** exponent, p_learned)

        p_horizon = carried(horizon)
        p_30 = _read_curve(curve, grid, 30) if h >= 30 else carried(30)
        factor = btyd[f"expected_purchases_{horizon}d"].to_numpy() / np.maximum(btyd[f"expected_purchases_{h}d"].to_numpy(), 1e-9)
        factor = np.nan_to_num(np.maximum(factor, 1.0), nan=horizon / h)
    else:
        factor = np.ones(len(now))
        p_horizon, p_30 = _read_curve(curve, grid, horizon), _read_curve(curve, grid, 30)
    out["p_churn"] = 1.0 - p_horizon
    out["p_purchase_30d"] = np.minimum(p_30, p_horizon) if horizon >= 30 else np.maximum(p_30, p_horizon)
    out["expected_purchases"] = expected * factor
    for column in ("expected_revenue", "expected_revenue_p10", "expected_revenue_p90"):
        out[column] = revenue[column].to_numpy() * factor
    out["next_purchase_days"] = curve["next_purchase_days"].to_numpy()
    return out[OUTPUT_COLUMNS], schedule


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _fit_stacker(p_model, p_btyd, y) -> LogisticRegression:
    btyd = np.nan_to_num(_logit(p_btyd), nan=0.0)
    x = np.column_stack([_logit(p_model), btyd, np.isnan(np.asarray(p_btyd, dtype=float))])
    return LogisticRegression(C=10.0).fit(x, np.asarray(y).astype(int))


def _apply_stacker(stacker: LogisticRegression, p_model, p_btyd) -> np.ndarray:
    btyd = np.nan_to_num(_logit(p_btyd), nan=0.0)
    x = np.column_stack([_logit(p_model), btyd, np.isnan(np.asarray(p_btyd, dtype=float))])
    return stacker.predict_proba(x)[:, 1]


def _btyd_features(transactions: pd.DataFrame, cutoffs: list[datetime], horizon: int) -> pd.DataFrame:
    """BG/NBD estimates at each cutoff, from the data up to it: features for the young-data models."""
    parts = []
    for cutoff in cutoffs:
        btyd = baselines.btyd_predictions(transactions, cutoff, (horizon,), horizon, horizon)
        parts.append(
            pd.DataFrame(
                {
                    "customer_id": btyd["customer_id"],
                    "cutoff": pd.Timestamp(as_utc(cutoff)),
                    "btyd_p_alive": btyd["p_alive"],
                    "btyd_p_purchase": btyd[f"p_purchase_{horizon}d"],
                    "btyd_expected_purchases": btyd["expected_purchases"],
                    "btyd_expected_revenue": btyd["expected_revenue"],
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    frame["cutoff"] = pd.to_datetime(frame["cutoff"], utc=True)
    return frame


def _read_curve(curve: pd.DataFrame, grid: tuple[int, ...], days: int) -> np.ndarray:
    """P(purchase within ``days``) from the learned curve, log-survival interpolated between points."""
    log_s = np.log(np.clip(1.0 - curve[[f"p_purchase_{g}d" for g in grid]].to_numpy(), 1e-9, 1.0))
    times = np.array([0.0, *grid], dtype=float)
    log_s = np.column_stack([np.zeros(len(curve)), log_s])
    position = np.searchsorted(times, days, side="right") - 1
    position = min(position, len(times) - 2)
    weight = (days - times[position]) / (times[position + 1] - times[position])
    value = log_s[:, position] + weight * (log_s[:, position + 1] - log_s[:, position])
    return 1.0 - np.exp(value)


def horizon_note(schedule: BacktestPlan) -> str:
    if not schedule.scaled:
        return f"learned the {schedule.requested_horizon}-day horizon directly"
    return (
        f"history holds {schedule.learned_horizon}-day label windows; carried to "
        f"{schedule.requested_horizon} days with BG/NBD (factor per customer)"
    )


