"""Metrics and plots for probabilities, counts and amounts, and the long metrics tables that
set them beside the baselines' (pure functions of arrays and frames)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate - mean prediction| over equal-count bins, weighted by bin size."""
    order = np.argsort(p, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, bins):
        if len(chunk):
            total += len(chunk) * abs(y[chunk].mean() - p[chunk].mean())
    return float(total / len(p))


def lift_table(y: np.ndarray, score: np.ndarray, deciles: int = 10) -> pd.DataFrame:
    """Per score decile (1 = highest): rate, lift over the base rate, cumulative gains."""
    order = np.argsort(-score, kind="stable")
    base = y.mean() if y.mean() > 0 else 1.0
    rows, captured = [], 0.0
    for k, chunk in enumerate(np.array_split(order, deciles), start=1):
        captured += y[chunk].sum()
        rows.append(
            {
                "decile": k,
                "rate": float(y[chunk].mean()),
                "lift": float(y[chunk].mean() / base),
                "cumulative_gain": float(captured / max(y.sum(), 1e-12)),
            }
        )
    return pd.DataFrame(rows)


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    lifts = lift_table(y, p)
    both = len(np.unique(y)) > 1
    return {
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "ece": expected_calibration_error(y, p),
        "lift_top_decile": float(lifts["lift"].iloc[0]),
        "gain_top_2_deciles": float(lifts["cumulative_gain"].iloc[1]),
        "base_rate": float(y.mean()),
        "mean_prediction": float(p.mean()),
        "rows": float(len(y)),
    }


def normalized_gini(y: np.ndarray, score: np.ndarray) -> float:
    """Gini of ``y`` ordered by ``score``, divided by the Gini of the perfect order (1 = perfect)."""

    def gini(order_by: np.ndarray) -> float:
        order = np.argsort(-order_by, kind="stable")
        cumulative = np.cumsum(y[order]) / max(y.sum(), 1e-12)
        return float((cumulative - np.arange(1, len(y) + 1) / len(y)).sum() / len(y))

    y = np.asarray(y, dtype=float)
    perfect = gini(y)
    return gini(np.asarray(score, dtype=float)) / perfect if perfect > 0 else float("nan")


def decile_calibration(y: np.ndarray, prediction: np.ndarray, deciles: int = 10) -> pd.DataFrame:
    order = np.argsort(-prediction, kind="stable")
    return pd.DataFrame(
        [
            {"decile": k, "mean_prediction": float(prediction[c].mean()), "mean_actual": float(y[c].mean())}
            for k, c in enumerate(np.array_split(order, deciles), start=1)
        ]
    )


def unit_deviance(y: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Each row's Poisson deviance of outcome ``y`` (>= 0) against the ``expected`` count."""
    expected = np.maximum(expected, 1e-12)
    return 2 * (np.where(y > 0, y * np.log(np.maximum(y, 1e-12) / expected), 0.0) - (y - expected))


def regression_metrics(y: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    y = np.asarray(y, dtype=float)
    prediction = np.asarray(prediction, dtype=float)
    deciles = decile_calibration(y, prediction)
    return {
        "mae": float(np.mean(np.abs(y - prediction))),
        "rmse": float(np.sqrt(np.mean((y - prediction) ** 2))),
        "normalized_gini": normalized_gini(y, prediction),
        "spearman": float(spearmanr(y, prediction).statistic) if np.std(prediction) > 0 else float("nan"),
        "total_error": float(prediction.sum() / y.sum() - 1.0) if y.sum() != 0 else float("nan"),
        "top_decile_calibration": float(deciles["mean_prediction"].iloc[0] / max(deciles["mean_actual"].iloc[0], 1e-12)),
        "mean_actual": float(y.mean()),
        "rows": float(len(y)),
    }


def count_metrics(y: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """``regression_metrics`` of a count (purchase days), with its mean Poisson deviance, which
    judges a count by its likelihood: unlike MAE, it does not reward shrinking every prediction."""
    y, prediction = np.asarray(y, dtype=float), np.asarray(prediction, dtype=float)
    return {**regression_metrics(y, prediction), "poisson_deviance": float(np.mean(unit_deviance(y, prediction)))}


def interval_coverage(y: np.ndarray, low: np.ndarray, high: np.ndarray) -> dict[str, float]:
    inside = (y >= low) & (y <= high)
    return {"coverage": float(inside.mean()), "mean_width": float(np.mean(high - low))}


# --- metrics tables: one row per (indicator, method, metric) -----------------------------------


def metrics_table(
    indicator: str,
    predictions: dict[str, np.ndarray],
    y: np.ndarray,
    metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]],
) -> pd.DataFrame:
    """Long table (indicator, method, metric, value) of every method's predictions on the same rows."""
    rows = []
    for method, p in predictions.items():
        ok = ~np.isnan(p)
        for metric, value in metrics(y[ok], p[ok]).items():
            rows.append({"indicator": indicator, "method": method, "metric": metric, "value": value})
    return pd.DataFrame(rows)


def worse(value: float, reference: float, higher_is_better: bool, tolerance: float) -> bool:
    """Whether ``value`` is worse than ``reference`` by more than ``tolerance``."""
    margin = value - reference if higher_is_better else reference - value
    return margin < -tolerance


LEVEL_TOLERANCE = 0.10  # a total error within +-10% is never held against a model
RANKING_METRICS = frozenset({"normalized_gini", "spearman"})  # blind to the level of an amount


def level_shortfall(metrics: pd.DataFrame, headline: str, against: str) -> str | None:
    """Why the model's level loses to method ``against``'s, where its ``headline`` only ranks
    (a model may rank revenue well and be 40% short of it): its total error is outside
    +-``LEVEL_TOLERANCE`` and further from zero than the other's. None where it holds, where
    the headline weighs the level itself (MAE), or where the indicator has none (probabilities)."""
    if headline not in RANKING_METRICS:
        return None
    rows = metrics[metrics["metric"] == "total_error"]
    model_rows = rows[rows["method"] == "model"]
    if model_rows.empty:
        return None
    values = rows[rows["indicator"] == model_rows["indicator"].iloc[0]].set_index("method")["value"].astype(float)
    if against not in values.index:
        return None
    mine, theirs = values["model"], values[against]
    if not (np.isfinite(mine) and np.isfinite(theirs)) or abs(mine) <= LEVEL_TOLERANCE or abs(mine) <= abs(theirs):
        return None
    return f"total error {mine:+.1%} against {theirs:+.1%}"


def headline_value(metrics: pd.DataFrame, headline: str, method: str = "model") -> float:
    """``method``'s value of the ``headline`` metric (on the model's first indicator)."""
    return float(metrics.query(f"method == '{method}' and metric == '{headline}'")["value"].iloc[0])


def best_baseline(metrics: pd.DataFrame, headline: str, higher_is_better: bool) -> tuple[str, float] | None:
    """The best baseline (not the model, not the oracle) on the headline metric of the headline
    indicator (the first the model reports it for), or None if there is none."""
    model_rows = metrics[(metrics["method"] == "model") & (metrics["metric"] == headline)]
    if model_rows.empty:
        return None
    indicator = model_rows["indicator"].iloc[0]
    rows = metrics[
        (metrics["indicator"] == indicator) & (metrics["metric"] == headline)
        & ~metrics["method"].isin(("model", "oracle")) & np.isfinite(metrics["value"].astype(float))
    ]
    if rows.empty:
        return None
    best = rows.loc[rows["value"].idxmax() if higher_is_better else rows["value"].idxmin()]
    return str(best["method"]), float(best["value"])


# --- plots -------------------------------------------------------------------------------


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, ax, path: Path, title: str, xlabel: str, ylabel: str | None = None) -> Path:
    plt = _figure()
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_calibration(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """Reliability diagram: observed rate against mean prediction in 10 equal-count bins."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for name, (y, p) in curves.items():
        order = np.argsort(p, kind="stable")
        bins = [c for c in np.array_split(order, 10) if len(c)]
        ax.plot([p[c].mean() for c in bins], [y[c].mean() for c in bins], marker="o", label=name)
    return _finish(fig, ax, path, title, "mean predicted probability", "observed rate")


def plot_gains(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for name, (y, score) in curves.items():
        order = np.argsort(-score, kind="stable")
        gains = np.concatenate([[0], np.cumsum(y[order]) / max(y.sum(), 1e-12)])
        ax.plot(np.linspace(0, 1, len(gains)), gains, label=name)
    return _finish(fig, ax, path, title, "share of customers targeted (highest score first)", "share of outcomes captured")


def plot_deciles(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / (len(curves) + 1)
    for k, (name, (y, prediction)) in enumerate(curves.items()):
        table = decile_calibration(y, prediction)
        ax.bar(table["decile"] + k * width, table["mean_prediction"], width=width, label=f"{name} predicted")
        if k == 0:
            actual = table["mean_actual"]
    ax.plot(table["decile"], actual, color="black", marker="o", label="actual (model deciles)")
    return _finish(fig, ax, path, title, "decile of the prediction (1 = highest)")
