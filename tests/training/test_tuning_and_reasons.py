"""Optuna is seeded (a rerun gives the same parameters); SHAP reasons add up to the prediction;
trees stay shallow; the CLV interval is conformalized to its coverage."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from training.boosting import MAX_DEPTH, contributions, fit_booster, predict
from training.explain import top_reasons
from training.models import upper_shift
from training.tracking import log_study
from training.tuning import tune


def _data(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"recency": rng.exponential(60, 3000), "frequency": rng.poisson(3, 3000).astype(float),
                      "noise": rng.normal(size=3000)})
    logit = 1.5 - x["recency"] / 40 + 0.4 * x["frequency"]
    y = (rng.random(3000) < 1 / (1 + np.exp(-logit))).astype(float)
    return x, y


def test_a_rerun_of_tuning_gives_the_same_parameters_and_every_trial_is_logged(tmp_path) -> None:
    x, y = _data()
    results = []
    for _ in range(2):  # tuning itself needs no MLflow run
        best, study = tune(x[:2000], y[:2000], x[2000:], y[2000:], "binary", trials=4, timeout_seconds=120,
                           seed=7, threads=1, max_rounds=100)
        results.append((best, study.best_value))
    assert results[0] == results[1]
    best = results[0][0]
    assert best["num_leaves"] <= 2 ** best["max_depth"] <= 2**MAX_DEPTH  # the parameters a booster was fitted with

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("tuning", artifact_location=(tmp_path / "a").as_uri()))
    with mlflow.start_run() as parent:
        log_study(study)
    runs = mlflow.search_runs(search_all_experiments=True)
    trials = runs[runs["tags.mlflow.parentRunId"] == parent.info.run_id]
    assert len(trials) == len(study.trials) == 4  # every trial is a run of its own
    assert set(trials["tags.trial.state"]) <= {"complete", "pruned"} and "complete" in set(trials["tags.trial.state"])
    logged = runs.set_index("run_id").loc[parent.info.run_id]
    assert logged["metrics.tuning_best_loss"] == study.best_value
    assert int(logged["params.best_max_depth"]) == best["max_depth"]


def test_trees_never_grow_deeper_than_the_limit() -> None:
    """Reasons cost leaves x depth^2 per tree: leaf-wise growth must not build deep chains."""
    x, y = _data(2)
    booster = fit_booster(x, y, "binary", overrides={"num_leaves": 64}, rounds=30, threads=1)

    def depth(node: dict) -> int:
        return 0 if "split_index" not in node else 1 + max(depth(node["left_child"]), depth(node["right_child"]))

    assert max(depth(tree["tree_structure"]) for tree in booster.dump_model()["tree_info"]) <= MAX_DEPTH


def test_top_reasons_are_the_largest_contributions_and_add_up() -> None:
    x, y = _data(1)
    booster = fit_booster(x, y, "binary", rounds=50, threads=1)
    values = contributions(booster, x.head(20))
    raw = predict(booster, x.head(20))
    np.testing.assert_allclose(1 / (1 + np.exp(-values.sum(axis=1))), raw, rtol=1e-6)
    reasons = top_reasons(x.head(20), values, k=2)
    assert all(len(r) == 2 for r in reasons)
    for row, reason in enumerate(reasons):
        magnitudes = [abs(item["contribution"]) for item in reason]
        assert magnitudes == sorted(magnitudes, reverse=True)
        assert magnitudes[0] == max(abs(values[row, :-1]))
        assert reason[0]["value"] == x.iloc[row][reason[0]["feature"]]
    flipped = top_reasons(x.head(1), values[:1], k=1, sign=-1.0)
    assert flipped[0][0]["contribution"] == -reasons[0][0]["contribution"]


def test_the_upper_shift_gives_the_coverage_even_when_most_outcomes_are_zero() -> None:
    """Spend is zero for 60% of customers: bounds from over-wide quantiles are shrunk to cover
    80% of a new sample from the same distribution (and widened when too narrow)."""
    rng = np.random.default_rng(3)

    def sample(n: int) -> tuple[np.ndarray, ...]:
        rate = rng.gamma(2.0, 50.0, n)
        y = np.where(rng.random(n) < 0.6, 0.0, rng.exponential(rate))
        mean = 0.4 * rate
        return y, np.zeros(n), mean, 2.5 * rate

    def coverage(y, low, mean, upper, shift: float) -> float:
        return float(np.mean((y >= low) & (y <= np.maximum(upper + shift, mean))))

    y, low, mean, upper = sample(20_000)
    y_new, low_new, mean_new, upper_new = sample(20_000)
    for scale, unshifted in ((1.0, "over"), (0.1, "under")):
        before = coverage(y_new, low_new, mean_new, scale * upper_new, 0.0)
        assert before > 0.85 if unshifted == "over" else before < 0.78, (scale, before)
        shift = upper_shift(y, low, mean, scale * upper, 0.8)
        assert abs(coverage(y_new, low_new, mean_new, scale * upper_new, shift) - 0.8) < 0.015, scale
