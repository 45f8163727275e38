"""LightGBM training shared by every model: parameters, early stopping, Optuna pruning."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

# Trees are depth-limited: exact TreeSHAP costs O(leaves x depth^2) per tree and row, and
# LightGBM's leaf-wise growth left unchecked grows trees many levels deep. At depth 5, with
# learning rates from 0.06 (tuning.py), reasons cost a fraction of what they did, for the same
# accuracy (docs/evaluation.md, "Tree shape").
MAX_DEPTH = 5
BASE_PARAMS: dict[str, Any] = {
    "learning_rate": 0.08,
    "num_leaves": 31,
    "max_depth": MAX_DEPTH,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_cat_to_onehot": 8,
    "verbose": -1,
    "deterministic": True,
    "force_row_wise": True,
}

# objective -> (LightGBM objective params, validation metric, lower is better)
OBJECTIVES: dict[str, dict[str, Any]] = {
    "binary": {"objective": "binary", "metric": "binary_logloss"},
    "poisson": {"objective": "poisson", "metric": "poisson"},
    "tweedie": {"objective": "tweedie", "tweedie_variance_power": 1.3, "metric": "tweedie"},
    "quantile_low": {"objective": "quantile", "alpha": 0.1, "metric": "quantile"},
    "quantile_high": {"objective": "quantile", "alpha": 0.9, "metric": "quantile"},
}
# Below this many rows a prediction runs on one thread (see ``_threads``).
SMALL_BATCH_ROWS = 1_000


def params_for(objective: str, overrides: dict[str, Any] | None, seed: int, threads: int) -> dict[str, Any]:
    return {**BASE_PARAMS, **OBJECTIVES[objective], **(overrides or {}), "seed": seed, "num_threads": threads}


def fit_booster(
    x_fit: pd.DataFrame,
    y_fit: np.ndarray,
    objective: str,
    *,
    x_val: pd.DataFrame | None = None,
    y_val: np.ndarray | None = None,
    overrides: dict[str, Any] | None = None,
    seed: int = 42,
    threads: int = 2,
    max_rounds: int = 600,
    rounds: int | None = None,
    on_round: Callable[[int, float], None] | None = None,
    monotone: dict[str, int] | None = None,
) -> lgb.Booster:
    """Train with early stopping on the validation window (or exactly ``rounds`` rounds).

    ``on_round(iteration, validation_metric)`` is called every 20 rounds; it may raise (Optuna
    pruning) to abandon a poor trial early. ``monotone`` maps feature -> +1/-1: the prediction
    may only rise (fall) with that feature, all else equal.
    """
    params = params_for(objective, overrides, seed, threads)
    if monotone:
        params["monotone_constraints"] = [monotone.get(column, 0) for column in x_fit.columns]
    train_set = lgb.Dataset(x_fit, label=np.asarray(y_fit, dtype=float), free_raw_data=False)
    callbacks: list[Callable] = []
    valid_sets = []
    if x_val is not None and y_val is not None and rounds is None:
        valid_sets = [lgb.Dataset(x_val, label=np.asarray(y_val, dtype=float), reference=train_set)]
        callbacks.append(lgb.early_stopping(40, verbose=False))
        if on_round is not None:
            callbacks.append(_reporting_callback(on_round))
    return lgb.train(
        params,
        train_set,
        num_boost_round=rounds or max_rounds,
        valid_sets=valid_sets,
        callbacks=callbacks,
    )


def _reporting_callback(on_round: Callable[[int, float], None]) -> Callable:
    def callback(env: lgb.callback.CallbackEnv) -> None:
        if env.iteration % 20 == 0 and env.evaluation_result_list:
            on_round(env.iteration, float(env.evaluation_result_list[0][2]))

    callback.order = 30  # after early stopping bookkeeping
    return callback


def predict(booster: lgb.Booster, x: pd.DataFrame | np.ndarray) -> np.ndarray:
    """Predictions for an encoded frame (or its ``as_matrix``, to share one between boosters)."""
    matrix = x if isinstance(x, np.ndarray) else as_matrix(x)
    return booster.predict(matrix, num_iteration=booster.best_iteration or None, num_threads=_threads(matrix))


def contributions(booster: lgb.Booster, x: pd.DataFrame | np.ndarray) -> np.ndarray:
    """SHAP values (last column: expected value), identical to SHAP's TreeExplainer's."""
    matrix = x if isinstance(x, np.ndarray) else as_matrix(x)
    return booster.predict(
        matrix, num_iteration=booster.best_iteration or None, pred_contrib=True, num_threads=_threads(matrix)
    )


def _threads(matrix: np.ndarray) -> int:
    """One thread for small inputs (starting OpenMP's team costs more than a few rows' trees);
    LightGBM's default for batches."""
    return 1 if len(matrix) < SMALL_BATCH_ROWS else 0


def as_matrix(x: pd.DataFrame) -> np.ndarray:
    """The float matrix LightGBM builds from an encoded frame, built once and cheaply.

    Categorical columns become their codes with NaN for missing, exactly as LightGBM's own
    pandas path does (the encoder fixes the vocabulary, so codes match training); this skips
    that path's per-call checks, which dominate the latency of one-customer predictions.
    """
    matrix = np.empty(x.shape, dtype=float)
    for i, (_, values) in enumerate(x.items()):
        if isinstance(values.dtype, pd.CategoricalDtype):
            codes = values.cat.codes.to_numpy()
            matrix[:, i] = np.where(codes < 0, np.nan, codes)
        else:
            matrix[:, i] = values.to_numpy(dtype=float)
    return matrix
