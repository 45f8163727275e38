"""Optuna tuning of a model's main booster (``tracking.log_study`` logs each trial as a run).

Trials are scored on the tune window (out of time), pruned early by the median rule, and
seeded (TPE sampler, LightGBM deterministic mode), so a rerun with the same trial budget
gives the same parameters. A time budget can end a study early; then the trial count, and so
the result, can differ between machines: the number of finished trials is logged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import pandas as pd

from training.boosting import MAX_DEPTH, fit_booster


def search_space(trial: optuna.Trial) -> dict[str, Any]:
    """Depth-limited trees: serving computes exact SHAP reasons per request, whose cost grows
    with leaves x depth^2, so the search never trades a sliver of loss for deep chains; and
    learning rates from 0.06, as every tree is walked on every prediction (from 0.03 the
    purchase-timing boosters took 430 trees each for the same AUC at 20k)."""
    depth = trial.suggest_int("max_depth", 3, MAX_DEPTH)
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.06, 0.3, log=True),
        "max_depth": depth,
        "num_leaves": min(trial.suggest_int("num_leaves", 8, 64, log=True), 2**depth),
        "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 20, 400, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.6, 1.0),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 30.0, log=True),
    }


def tune(
    x_fit: pd.DataFrame,
    y_fit: np.ndarray,
    x_tune: pd.DataFrame,
    y_tune: np.ndarray,
    objective: str,
    *,
    trials: int,
    timeout_seconds: float,
    seed: int,
    threads: int,
    max_rounds: int,
) -> tuple[dict[str, Any], optuna.Study]:
    """Best LightGBM parameters for ``objective`` (lowest validation loss on the tune window)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=60),
    )

    def run_trial(trial: optuna.Trial) -> float:
        params = search_space(trial)
        trial.set_user_attr("params", params)  # as used: num_leaves is capped by the depth

        def report(iteration: int, value: float) -> None:
            trial.report(value, iteration)
            if trial.should_prune():
                raise optuna.TrialPruned()

        booster = fit_booster(
            x_fit, y_fit, objective, x_val=x_tune, y_val=y_tune, overrides=params,
            seed=seed, threads=threads, max_rounds=max_rounds, on_round=report,
        )
        trial.set_user_attr("best_iteration", booster.best_iteration)
        return float(next(iter(booster.best_score["valid_0"].values())))

    study.optimize(run_trial, n_trials=trials, timeout=timeout_seconds, gc_after_trial=False)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial.user_attrs["params"] if finished else {}
    return best, study
