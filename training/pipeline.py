"""``indicators train``: features -> labels -> tuned models -> backtest -> MLflow -> gate.

One function per model; they share the data preparation (one Feast retrieval for every
cutoff), the baselines (fitted once per test cutoff) and the tracking steps.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from training import baselines, catalogue, classical, evaluation, tracking
from training.btyd import LABELS
from training.carry import CarriedTiming, CarriedValue, Carry, learned_model
from training.config import Config
from training.dataset import FeatureEncoder, entity_rows, features_at
from training.explain import global_importance, shap_plots
from training.features import store as feature_store
from training.features.snapshots import build_snapshots, connect, data_end
from training.labels import build_labels
from training.models import (
    ActivityLookalikeModel,
    ClvModel,
    CountModel,
    LookalikeModel,
    PurchaseTimingModel,
)
from training.report import build_report
from training.tuning import tune
from training.windows import MIN_BUYERS, HistoryTooShort, HorizonPlan, Windows, plan_horizons

Step = Callable[[str], None]
MONETARY_PREFIXES = ("revenue_", "avg_order_value", "max_order_value")
MIN_SEED = 10  # LookalikeModel's minimum: fewer seed members cannot be split into fit and held out
CATEGORY_PREFIXES = ("share_", "category_")
# The plot of each kind of curves an ``Evaluation`` carries, logged under plots/.
PLOTS = {"calibration": evaluation.plot_calibration, "gains": evaluation.plot_gains, "deciles": evaluation.plot_deciles}


@dataclass
class ModelReport:
    name: str
    indicator: str
    metric: str
    higher_is_better: bool
    model_value: float
    baselines: dict[str, float]
    oracle: float | None
    promoted: bool = False
    version: str | None = None
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    run_id: str | None = None  # the MLflow run holding its plots, model card and gate decision
    # Set when the model loses to its best baseline: what the gate did about it (summaries show it).
    gate_note: str | None = None
    horizons: str = ""  # which horizons were learned and how longer ones are carried
    serve_baseline: bool = False  # the gate asks the trainer to serve the baseline in the model's place
    served_baseline: str | None = None  # the baseline served as champion in the model's place, if any

    @property
    def best_baseline(self) -> tuple[str, float]:
        pick = max if self.higher_is_better else min
        name = pick(self.baselines, key=lambda k: self.baselines[k])
        return name, self.baselines[name]


@dataclass
class ModelingData:
    rows: pd.DataFrame  # features and labels of every (customer, cutoff), one row each
    plan: HorizonPlan  # which horizons are learned, their windows, which are carried
    data_start: datetime
    data_end: datetime
    transactions: pd.DataFrame
    truth: pd.DataFrame | None
    carry: Carry | None = None  # fitted at the end of the data when a horizon is carried
    btyd_cache: dict[tuple, pd.DataFrame] = field(default_factory=dict)

    @property
    def windows(self) -> dict[int, Windows]:
        return self.plan.windows

    def at(self, cutoffs, mask: pd.Series | None = None) -> pd.DataFrame:
        chosen = self.rows["cutoff"].isin(list(cutoffs))
        if mask is not None:
            chosen &= mask
        return self.rows[chosen].reset_index(drop=True)


@dataclass
class TrainingResult:
    reports: list[ModelReport]
    timings: dict[str, float]
    data_window: tuple[datetime, datetime]
    report_path: Path | None = None  # the run's HTML report


def prepare(config: Config, on_step: Step, timings: dict[str, float]) -> tuple[ModelingData, Any]:
    """Snapshots at every cutoff the models need, one Feast retrieval, labels for all rows."""
    paths = config.paths
    started = time.perf_counter()
    end = data_end(paths)
    con = connect(paths)
    try:
        first, buyers = con.execute(
            "SELECT min(\"timestamp\"), count(DISTINCT customer_id) FILTER (WHERE amount > 0) FROM transactions"
        ).fetchall()[0]
        if buyers < MIN_BUYERS:
            raise HistoryTooShort(f"{buyers} customers have bought; at least {MIN_BUYERS} are needed to fit a model")
        start = pd.Timestamp(first).tz_convert("UTC").floor("D").to_pydatetime()
        settings = config.models
        horizons = plan_horizons(start, end, settings)
        snapshot_dates = set(config.snapshots.dates(end)) | set(horizons.cutoffs) | {end}
        build_snapshots(paths, sorted(snapshot_dates))
        store = feature_store.feature_store(config)
        feature_store.apply(store, paths)
        timings["snapshots"] = time.perf_counter() - started
        on_step(f"snapshots at {len(snapshot_dates)} dates")
        if horizons.carries:
            on_step(f"{(end - start).days} days of history: horizons up to {horizons.longest} days are learned, "
                    f"longer ones carried from there (fit cutoffs after {horizons.min_history_days} days of history)")
        started = time.perf_counter()
        feature_store.write_latest_online(store, paths)
        timings["online_write"] = time.perf_counter() - started
        on_step("latest features written to the online store")

        started = time.perf_counter()
        model_cutoffs = sorted({*horizons.cutoffs, end})
        profile = modelled_customers(
            pd.read_parquet(paths.features / "customer_profile.parquet", columns=["customer_id", "signup_at"]),
            settings.max_customers, config.seed,
        )
        rows = entity_rows(profile, model_cutoffs)
        features = features_at(store, rows)
        timings["feature_retrieval"] = time.perf_counter() - started
        on_step(f"features for {len(rows):,} (customer, cutoff) rows of {len(profile):,} customers")

        started = time.perf_counter()
        counted = {*horizons.learned_grid, horizons.learned(settings.expected_purchases_horizon_days)}
        labels = build_labels(con, rows, sorted(counted), [horizons.learned(settings.clv_horizon_days)], end)
        timings["labels"] = time.perf_counter() - started
    finally:
        con.close()
    merged = features.merge(labels, on=["customer_id", "cutoff"], how="left", validate="one_to_one")
    modelled = pd.Index(profile["customer_id"])
    transactions = pd.read_parquet(paths.raw_table("transactions"), columns=["customer_id", "timestamp", "amount"])
    transactions = transactions[transactions["customer_id"].isin(modelled)].reset_index(drop=True)
    truth_file = paths.truth / "latent.parquet"
    truth = pd.read_parquet(truth_file) if truth_file.exists() else None
    if truth is not None:
        truth = truth[truth["customer_id"].isin(modelled)].reset_index(drop=True)
    carry = None
    if horizons.carries:
        carry = Carry.fitted(transactions, pd.Timestamp(end))
        on_step(f"{carry.describe()} fitted on the whole history carries the longer horizons")
    return ModelingData(merged, horizons, start, end, transactions, truth, carry), store


def modelled_customers(profile: pd.DataFrame, max_customers: int, seed: int) -> pd.DataFrame:
    """Everyone, or a seeded random sample of ``max_customers`` (the same one on every rerun).

    The baselines and the oracle are evaluated on the same customers as the models.
    """
    if not max_customers or len(profile) <= max_customers:
        return profile
    return profile.sample(n=max_customers, random_state=seed).sort_values("customer_id").reset_index(drop=True)


def _learned_horizons(data: ModelingData, config: Config) -> tuple[tuple[int, ...], int, int]:
    """The purchase grid, expected-purchases and CLV horizons the models learn (and are compared at)."""
    s, plan = config.models, data.plan
    return plan.learned_grid, plan.learned(s.expected_purchases_horizon_days), plan.learned(s.clv_horizon_days)


def _btyd(data: ModelingData, config: Config, cutoff: datetime) -> pd.DataFrame:
    key = (cutoff,)
    if key not in data.btyd_cache:
        data.btyd_cache[key] = baselines.btyd_predictions(data.transactions, cutoff, *_learned_horizons(data, config))
    return data.btyd_cache[key]


def _pareto(data: ModelingData, config: Config, cutoff: datetime) -> pd.DataFrame:
    key = ("pareto_nbd", cutoff)
    if key not in data.btyd_cache:
        data.btyd_cache[key] = baselines.pareto_nbd_predictions(data.transactions, cutoff, *_learned_horizons(data, config))
    return data.btyd_cache[key]


def _aligned(frame: pd.DataFrame, predictions: pd.DataFrame, column: str) -> np.ndarray:
    return frame[["customer_id"]].merge(predictions[["customer_id", column]], on="customer_id", how="left")[column].to_numpy()


def _oracle(data: ModelingData, config: Config, cutoff: datetime) -> pd.DataFrame | None:
    if data.truth is None:
        return None
    return baselines.oracle_predictions(data.truth, cutoff, *_learned_horizons(data, config))


def _buyers(frame: pd.DataFrame) -> pd.Series:
    return frame["purchase_days_total"].fillna(0) > 0


# --- purchase timing: churn and next purchase ---------------------------------------------


def train_purchase_timing(config: Config, data: ModelingData, client, on_step: Step) -> list[ModelReport]:
    s = config.models
    grid = data.plan.learned_grid  # evaluated where it is learned; longer horizons are carried
    sets = {}
    for h in grid:
        w = data.windows[h]
        fit = data.at(w.fit)
        tune_rows = data.at([w.tune])
        sets[h] = (fit, (fit[f"future_purchase_days_{h}d"] > 0).to_numpy(float), tune_rows, (tune_rows[f"future_purchase_days_{h}d"] > 0).to_numpy(float))
    churn_h = data.plan.learned_on_grid(s.churn_horizon_days)
    model = PurchaseTimingModel(horizons=grid, churn_horizon=churn_h, seed=config.seed, threads=s.threads, max_rounds=s.max_rounds)
    model.params = _tuned(config, *sets[churn_h], "binary")
    model.fit(sets)
    served: Any = model
    full = {"horizons": tuple(s.purchase_horizons), "churn_horizon": s.churn_horizon_days}
    if grid != full["horizons"]:
        served = CarriedTiming.wrap(model, data.carry, **full)
    on_step("purchase timing fitted")

    # Churn: the stated population, on the churn horizon's test window.
    w = data.windows[churn_h]
    test = data.at([w.test], None)
    test = test[test["bought_last_365d"]].reset_index(drop=True)
    churned = (test[f"future_purchase_days_{churn_h}d"] == 0).to_numpy(float)
    fit_churned = (sets[churn_h][0][f"future_purchase_days_{churn_h}d"] == 0).to_numpy(float)
    baseline_churn = {
        "btyd": 1 - _aligned(test, _btyd(data, config, w.test), f"p_purchase_{churn_h}d"),
        "pareto_nbd": 1 - _aligned(test, _pareto(data, config, w.test), f"p_purchase_{churn_h}d"),
        "rfm": baselines.RfmCells().fit(sets[churn_h][0], fit_churned).predict(test),
    }
    oracle = _oracle(data, config, w.test)
    if oracle is not None:
        baseline_churn["oracle"] = 1 - _aligned(test, oracle, f"p_purchase_{churn_h}d")

    def evaluate(candidate_at: Callable[[datetime], Any]) -> Evaluation:
        """Churn, P(purchase within h) on each horizon's test window, next-purchase coverage."""
        at_churn = candidate_at(w.test).purchase_curve(test)[f"p_purchase_{churn_h}d"].to_numpy()
        candidates = {"model": 1 - at_churn, **baseline_churn}
        tables = [_metrics_table("churn", candidates, churned, evaluation.classification_metrics)]
        for h in grid:  # among customers who have bought
            wh = data.windows[h]
            t = data.at([wh.test])
            t = t[_buyers(t)].reset_index(drop=True)
            bought = (t[f"future_purchase_days_{h}d"] > 0).to_numpy(float)
            preds = {
                "model": candidate_at(wh.test).purchase_curve(t)[f"p_purchase_{h}d"].to_numpy(),
                "btyd": _aligned(t, _btyd(data, config, wh.test), f"p_purchase_{h}d"),
                "pareto_nbd": _aligned(t, _pareto(data, config, wh.test), f"p_purchase_{h}d"),
                "rfm": baselines.RfmCells().fit(sets[h][0], sets[h][1]).predict(t),
            }
            o = _oracle(data, config, wh.test)
            if o is not None:
                preds["oracle"] = _aligned(t, o, f"p_purchase_{h}d")
            tables.append(_metrics_table(f"p_purchase_{h}d", preds, bought, evaluation.classification_metrics))
        longest = data.windows[max(grid)]
        t = data.at([longest.test])
        t = t[_buyers(t)].reset_index(drop=True)
        timing = candidate_at(longest.test).predict(t)
        tables.append(_timing_table(t, timing, (data.data_end - longest.test).total_seconds() / 86_400))
        curves = {k: (churned, v) for k, v in candidates.items()}
        return Evaluation(pd.concat(tables, ignore_index=True), {"calibration": curves, "gains": curves}, {"next_purchase_days": timing})

    def champion_value(champion: Any) -> float:
        return evaluation.classification_metrics(churned, _learned_at(champion, churn_h).predict(test)["p_churn"].to_numpy())["auc"]

    gate = _Gate.of("purchase_timing", w, test)
    report = _gate_and_serve(
        config, client, data, gate, model, served, evaluate, champion_value, {"horizons": grid, "churn_horizon": churn_h}, full,
    )
    metrics = report.metrics
    next_h = 30 if 30 in grid else grid[-1]
    return [
        _report_from(report, "churn", metrics, "auc", True),
        _report_from(report, f"p_purchase_{next_h}d", metrics, "auc", True),
    ]


@dataclass
class Evaluation:
    """A candidate's metrics on the test windows, beside the baselines', and what to plot."""

    metrics: pd.DataFrame
    plots: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)


@dataclass(frozen=True)
class _Gate:
    """What a model is gated on: its headline metric on the test window of its population."""

    name: str
    headline: str
    higher_is_better: bool
    window: Windows
    test: pd.DataFrame
    population: str
    explain_sign: float = 1.0

    @classmethod
    def of(cls, name: str, window: Windows, test: pd.DataFrame) -> _Gate:
        """The gate of the catalogue's model ``name``."""
        entry = catalogue.model(name)
        return cls(name, entry.headline_metric, entry.higher_is_better, window, test, entry.population, entry.explanation_sign)


@dataclass
class _Classical:
    """A classical baseline that beats the learnt model on its test window, as a servable model."""

    baseline: str  # the pipeline's name for it (``classical.NAMES``)
    evaluation: Evaluation  # the servable model's own metrics, fitted at each test cutoff
    value: float  # its headline metric


def _gate_and_serve(
    config: Config, client, data: ModelingData, gate: _Gate, model: Any, served: Any,
    evaluate: Callable[[Callable[[datetime], Any]], Evaluation], champion_value: Callable[[Any], float],
    at_learned: dict[str, Any], at_full: dict[str, Any],
) -> ModelReport:
    """Evaluate the learnt ``model``, log and gate ``served`` (the model as served: carried or
    not), and serve the classical model instead when the gate says so (``_classical_candidate``).
    ``evaluate`` takes the candidate to score at each test cutoff; ``at_learned`` and ``at_full``
    are the classical model's horizons for evaluation and for serving."""
    result = evaluate(lambda _cutoff: model)
    winner, refit_note = _classical_candidate(data, gate, result, evaluate, model, at_learned)
    report = _track(
        config, client, gate.name, served, result.metrics, gate.test, gate.headline, gate.higher_is_better, champion_value,
        window=gate.window, population=gate.population, plots=result.plots, explain_sign=gate.explain_sign,
        extra=result.extra, servable_baseline=None if winner is None else winner.value,
    )
    if report.serve_baseline and winner is not None:
        report.gate_note += _serve_classical(config, client, data, gate, winner, served, at_full, report)
        report.served_baseline = winner.baseline
    elif report.gate_note is not None and refit_note:
        report.gate_note += f"; {refit_note}"
    return report


def _classical_candidate(
    data: ModelingData, gate: _Gate, learnt: Evaluation, evaluate: Callable[[Callable[[datetime], Any]], Evaluation],
    model: Any, at_learned: dict[str, Any],
) -> tuple[_Classical | None, str | None]:
    """The classical model to serve if the learnt one loses to BG/NBD or Pareto/NBD: fitted by
    this project at each test cutoff and scored by the same ``evaluate``, kept only if it beats
    the learnt model there too (the gate's baselines are PyMC-Marketing's MAP fits). None when
    the learnt model wins, when its best baseline is RFM cells, or when the refit does not beat
    it (then also a note saying so, tagged on the run)."""
    best = best_baseline(learnt.metrics, gate.headline, gate.higher_is_better)
    value = _headline(learnt.metrics, gate.headline)
    if best is None or best[0] not in classical.NAMES or not tracking.worse(value, best[1], gate.higher_is_better, 0.0):
        return None, None
    kind = classical.NAMES[best[0]]
    fits: dict[datetime, Any] = {}

    def candidate_at(cutoff: datetime) -> Any:
        if cutoff not in fits:  # fitted on the data up to each test cutoff, never after it
            fitted = classical.fit_classical(data.transactions, pd.Timestamp(cutoff), kind)
            fits[cutoff] = classical.classical_model(gate.name, model, fitted, **at_learned)
        return fits[cutoff]

    result = evaluate(candidate_at)
    served_value = _headline(result.metrics, gate.headline)
    if tracking.worse(served_value, value, gate.higher_is_better, 0.0):
        note = (f"{LABELS[kind]} as this project fits it does not beat the learnt model on this window "
                f"({gate.headline} {served_value:.4f}), so it is not served")
        mlflow.set_tag("promotion.classical_refit", note)
        return None, note
    return _Classical(best[0], result, served_value), None


def _headline(metrics: pd.DataFrame, headline: str, method: str = "model") -> float:
    """``method``'s value of the ``headline`` metric (on the model's first indicator)."""
    return float(metrics.query(f"method == '{method}' and metric == '{headline}'")["value"].iloc[0])


LEARNT_METHOD = "learnt_model"  # the losing learnt model's rows in the metrics of a served baseline


def _serve_classical(
    config: Config, client, data: ModelingData, gate: _Gate, chosen: _Classical, served: Any, at_full: dict[str, Any],
    beaten: ModelReport,
) -> str:
    """Log, register and promote the classical model, refitted on the whole history, in a run of
    its own labelled as the baseline (run name, tags, model card, registered version): its
    metrics are the classical model's own on the test window, the learnt model's beside them."""
    fitted = classical.fit_classical(data.transactions, pd.Timestamp(data.data_end), classical.NAMES[chosen.baseline])
    model = classical.classical_model(gate.name, served, fitted, **at_full)
    label = LABELS[classical.NAMES[chosen.baseline]]
    learnt_rows = beaten.metrics[beaten.metrics["method"] == "model"].assign(method=LEARNT_METHOD)
    metrics = pd.concat([chosen.evaluation.metrics, learnt_rows], ignore_index=True)
    loss = f"{gate.headline} {beaten.model_value:.4f} against {chosen.value:.4f}"
    note = (
        f"**Baseline, not a learnt model.** {label} is served as champion for customers who have bought, because "
        f"the learnt model (run {beaten.run_id}, version {beaten.version}) does worse on the same test window: {loss}. "
        f"Customers who never bought, whom {label} does not describe, get the learnt model's predictions and reasons. "
        f"Its rows are `model` below; the learnt model's are `{LEARNT_METHOD}`."
    )
    reason = f"{label} baseline served as champion: learnt challenger v{beaten.version} does worse ({loss})"
    decision = _register_served_baseline(
        config, client, gate.name, label, model, metrics, gate.test, gate.headline, chosen.value, gate.higher_is_better,
        beaten, note, reason, window=gate.window, population=gate.population, plots=chosen.evaluation.plots,
        explain_sign=gate.explain_sign, extra=chosen.evaluation.extra,
    )
    return f" ({label} served, v{decision.challenger_version}, {gate.headline} {chosen.value:.4f})"


def _register_served_baseline(
    config: Config, client, name: str, label: str, model: Any, metrics: pd.DataFrame, test: pd.DataFrame, headline: str,
    value: float, higher_is_better: bool, beaten: ModelReport, note: str, reason: str, **logged: Any,
) -> tracking.GateDecision:
    """A baseline's own run (nested, named and tagged as the baseline), its model card topped by
    ``note``, registered and promoted as ``name``'s champion."""
    with mlflow.start_run(run_name=f"{name} ({label} baseline)", nested=True):
        mlflow.set_tags({"model_kind": "baseline", "baseline": label, "replaces_run": beaten.run_id or ""})
        uri = _log_run(config, name, model, metrics, test, headline, card_note=note, **logged)
        return tracking.register_baseline(client, name, uri, headline, value, label, higher_is_better, reason)


def _tuned(
    config: Config, fit: pd.DataFrame, y_fit: np.ndarray, tune_rows: pd.DataFrame, y_tune: np.ndarray, objective: str
) -> dict[str, Any]:
    """Optuna's best parameters for the main booster of a model (trials are nested runs)."""
    s = config.models
    encoder = FeatureEncoder().fit(fit)
    best, _ = tune(
        encoder.transform(fit), y_fit, encoder.transform(tune_rows), y_tune, objective,
        trials=s.trials, timeout_seconds=s.timeout_seconds, seed=config.seed, threads=s.threads, max_rounds=s.max_rounds,
    )
    return best


def _metrics_table(
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


def _timing_table(rows: pd.DataFrame, timing: pd.DataFrame, follow_days: float) -> pd.DataFrame:
    """Coverage of the P10-P90 interval of next_purchase_days.

    Counted where the outcome is known whatever it is: rows whose P90 is within the
    ``follow_days`` observed after the cutoff (a purchase after P90 would have been seen).
    """
    observed = rows["next_purchase_observed"].to_numpy()
    actual = rows["days_to_next_purchase"].to_numpy()
    low, high = timing["next_purchase_days_p10"].to_numpy(), timing["next_purchase_days_p90"].to_numpy()
    evaluable = high <= follow_days
    inside = observed & (actual >= low) & (actual <= high)
    median_error = np.median(np.abs(actual[observed] - timing["next_purchase_days"].to_numpy()[observed]))
    values = {
        "interval_coverage": float(inside[evaluable].mean()) if evaluable.any() else float("nan"),
        "rows_evaluable": float(evaluable.sum()),
        "median_abs_error_days_observed": float(median_error),
    }
    return pd.DataFrame([{"indicator": "next_purchase_days", "method": "model", "metric": k, "value": v} for k, v in values.items()])


# --- expected purchases ----------------------------------------------------------------------


def train_expected_purchases(config: Config, data: ModelingData, client, on_step: Step) -> list[ModelReport]:
    s = config.models
    h = data.plan.learned(s.expected_purchases_horizon_days)
    w = data.windows[h]
    fit, tune_rows = data.at(w.fit), data.at([w.tune])
    label = f"future_purchase_days_{h}d"
    model = CountModel(horizon=h, seed=config.seed, threads=s.threads, max_rounds=s.max_rounds)
    model.params = _tuned(config, fit, fit[label].to_numpy(float), tune_rows, tune_rows[label].to_numpy(float), "poisson")
    model.fit(fit, fit[label].to_numpy(float), tune_rows, tune_rows[label].to_numpy(float))
    served = _carried_value(model, data, s.expected_purchases_horizon_days)
    on_step("expected purchases fitted")
    test = data.at([w.test])
    test = test[_buyers(test)].reset_index(drop=True)
    y = test[label].to_numpy(float)
    others = {
        "btyd": _aligned(test, _btyd(data, config, w.test), "expected_purchases"),
        "pareto_nbd": _aligned(test, _pareto(data, config, w.test), "expected_purchases"),
        "rfm": baselines.RfmCells().fit(fit, fit[label].to_numpy(float)).predict(test),
    }
    o = _oracle(data, config, w.test)
    if o is not None:
        others["oracle"] = _aligned(test, o, "expected_purchases")

    def evaluate(candidate_at: Callable[[datetime], Any]) -> Evaluation:
        preds = {"model": candidate_at(w.test).predict(test)["expected_purchases"].to_numpy(), **others}
        metrics = _metrics_table("expected_purchases", preds, y, evaluation.regression_metrics)
        return Evaluation(metrics, {"deciles": {k: (y, v) for k, v in preds.items()}})

    def champion_value(champion: Any) -> float:
        return evaluation.regression_metrics(y, _learned_at(champion, h).predict(test)["expected_purchases"].to_numpy())["mae"]

    gate = _Gate.of("expected_purchases", w, test)
    report = _gate_and_serve(
        config, client, data, gate, model, served, evaluate, champion_value, {"horizon": h},
        {"horizon": s.expected_purchases_horizon_days},
    )
    return [_report_from(report, "expected_purchases", report.metrics, "mae", False)]


def _carried_value(model: CountModel | ClvModel, data: ModelingData, horizon: int) -> Any:
    """``model`` as served: itself, or carried to ``horizon`` when it was learned at a shorter one."""
    return model if model.horizon == horizon else CarriedValue.wrap(model, data.carry, horizon=horizon)


def _learned_at(champion: Any, horizon: int) -> Any:
    """The champion's learned model, if it learned at ``horizon``: the gate compares like with like."""
    if classical.is_classical(champion):
        raise ValueError("a baseline champion is refitted by every run, not compared with it")
    learned = learned_model(champion)
    learned_horizon = learned.churn_horizon if isinstance(learned, PurchaseTimingModel) else learned.horizon
    if learned_horizon != horizon:
        raise ValueError(f"the champion learned a {learned_horizon}-day horizon, this run {horizon} days")
    return learned


def _report_from(report: ModelReport, indicator: str, metrics: pd.DataFrame, metric: str, higher: bool) -> ModelReport:
    values = metrics.query(f"indicator == '{indicator}' and metric == '{metric}'").set_index("method")["value"]
    return ModelReport(
        report.name, indicator, metric, higher, values["model"],
        {k: values[k] for k in values.index if k not in ("model", "oracle")}, values.get("oracle"),
        report.promoted, report.version, metrics, report.run_id, report.gate_note, report.horizons,
        served_baseline=report.served_baseline,
    )


# --- CLV ---------------------------------------------------------------------------------------


def train_clv(config: Config, data: ModelingData, client, on_step: Step) -> list[ModelReport]:
    s = config.models
    h = data.plan.learned(s.clv_horizon_days)
    w = data.windows[h]
    fit, tune_rows = data.at(w.fit), data.at([w.tune])
    label = f"future_revenue_{h}d"
    model = ClvModel(horizon=h, seed=config.seed, threads=s.threads, max_rounds=s.max_rounds)
    kept = [c for c in fit.columns if c not in model.excluded_features]  # tuned on what the model reads
    model.params = _tuned(
        config, fit[kept], np.maximum(fit[label].to_numpy(float), 0), tune_rows[kept],
        np.maximum(tune_rows[label].to_numpy(float), 0), "tweedie",
    )
    model.fit(fit, fit[label].to_numpy(float), tune_rows, tune_rows[label].to_numpy(float))
    served = _carried_value(model, data, s.clv_horizon_days)
    on_step("CLV fitted")
    test = data.at([w.test])
    test = test[_buyers(test)].reset_index(drop=True)
    y = test[label].to_numpy(float)
    others = {
        "btyd": _aligned(test, _btyd(data, config, w.test), "expected_revenue"),
        "pareto_nbd": _aligned(test, _pareto(data, config, w.test), "expected_revenue"),
        "rfm": baselines.RfmCells(use_monetary=True).fit(fit, fit[label].to_numpy(float)).predict(test),
    }
    o = _oracle(data, config, w.test)
    if o is not None:
        others["oracle"] = _aligned(test, o, "expected_revenue")

    def evaluate(candidate_at: Callable[[datetime], Any]) -> Evaluation:
        predicted = candidate_at(w.test).predict(test)
        preds = {"model": predicted["expected_revenue"].to_numpy(), **others}
        metrics = _metrics_table("expected_revenue", preds, y, evaluation.regression_metrics)
        coverage = evaluation.interval_coverage(y, predicted["expected_revenue_p10"].to_numpy(), predicted["expected_revenue_p90"].to_numpy())
        metrics = pd.concat(
            [metrics, pd.DataFrame([{"indicator": "expected_revenue", "method": "model", "metric": f"p10_p90_{k}", "value": v} for k, v in coverage.items()])],
            ignore_index=True,
        )
        return Evaluation(metrics, {"deciles": {k: (y, v) for k, v in preds.items()}, "gains": {k: (y, v) for k, v in preds.items()}})

    def champion_value(champion: Any) -> float:
        return evaluation.regression_metrics(y, _learned_at(champion, h).predict(test)["expected_revenue"].to_numpy())["normalized_gini"]

    gate = _Gate.of("clv", w, test)
    report = _gate_and_serve(
        config, client, data, gate, model, served, evaluate, champion_value, {"horizon": h}, {"horizon": s.clv_horizon_days},
    )
    return [_report_from(report, "expected_revenue", report.metrics, "normalized_gini", True)]


# --- lookalike -------------------------------------------------------------------------------


def default_seeds(latest: pd.DataFrame) -> dict[str, tuple[set[str], tuple[str, ...]]]:
    """Seed lists and the features that define them (excluded from similarity)."""
    buyers = latest[_buyers(latest)]
    top = buyers[buyers["revenue_365d"] >= buyers["revenue_365d"].quantile(0.9)]
    sustainable = latest[latest["share_sustainable"].fillna(0) > 0]
    return {
        "lookalike_top_value": (set(top["customer_id"]), MONETARY_PREFIXES),
        "lookalike_sustainable": (set(sustainable["customer_id"]), CATEGORY_PREFIXES),
    }


def train_lookalikes(config: Config, data: ModelingData, client, on_step: Step) -> list[ModelReport]:
    """Each default seed's PU model against the activity baseline, on the same held-out members.

    When the PU model ranks them worse, the baseline (``ActivityLookalikeModel``) is registered
    and served as champion in its own run, labelled as the baseline, and the report says so.
    """
    s = config.models
    percents = s.lookalike_audience_percents
    latest = data.at([data.data_end])
    headline_percent = 5 if 5 in percents else percents[-1]
    metric = f"heldout_seed_recall_at_{headline_percent}pct"
    reports = []
    for name, (seed_ids, excluded) in default_seeds(latest).items():
        if len(seed_ids) < MIN_SEED:
            on_step(f"{name} not trained: its seed has {len(seed_ids)} customers (the log may lack the column "
                    f"that defines it, e.g. category); served profiles leave {name}_score empty")
            continue
        model = LookalikeModel(name=name, excluded_features=excluded, seed=config.seed, threads=s.threads).fit(latest, seed_ids)
        heuristic = ActivityLookalikeModel(name=name).fit(latest, model.seed_ids_, model.heldout_ids_)
        audiences = {"model": model.audience_report(latest, percents), ACTIVITY_BASELINE: heuristic.audience_report(latest, percents)}
        metrics = _audience_metrics(name, audiences)
        candidates = latest[~latest["customer_id"].isin(model.seed_ids_)].reset_index(drop=True)
        population = f"{len(seed_ids):,} seed customers; ranked: everyone else with features at {data.data_end:%Y-%m-%d}"

        def champion_value(champion: Any, split=(model.seed_ids_, model.heldout_ids_)) -> float:
            table = champion.audience_report(latest, (headline_percent,), split=split)
            return float(table["heldout_seed_recall"].iloc[0])

        with mlflow.start_run(run_name=name, nested=True):
            report = _track(
                config, client, name, model, metrics, candidates, metric, True, champion_value,
                window=None, population=population, extra={"audience": audiences["model"]},
                servable_baseline=_headline(metrics, metric, ACTIVITY_BASELINE),
            )
        if report.serve_baseline:  # the PU model loses to the activity baseline: serve the baseline
            served = _serve_activity_baseline(config, client, name, heuristic, audiences, metric, candidates, population, report)
            report.gate_note += f" (v{served.challenger_version})"
            report.served_baseline = ACTIVITY_BASELINE
        reports.append(_report_from(report, name, metrics, metric, True))
        on_step(f"{name} fitted" + (f" ({report.gate_note})" if report.gate_note else ""))
    return reports


ACTIVITY_BASELINE = "activity_heuristic"
PU_METHOD = "pu_model"  # the learnt model's rows in the metrics of a served baseline


def _audience_metrics(name: str, audiences: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Long metrics table of each method's audiences: held-out seed recall, lift, expected precision."""
    rows = []
    for method, audience in audiences.items():
        for a in audience.itertuples():
            pct = int(a.audience_percent)
            rows += [
                {"indicator": name, "method": method, "metric": f"heldout_seed_recall_at_{pct}pct", "value": a.heldout_seed_recall},
                {"indicator": name, "method": method, "metric": f"lift_at_{pct}pct", "value": a.lift},
                {"indicator": name, "method": method, "metric": f"expected_precision_at_{pct}pct", "value": a.expected_precision},
            ]
    return pd.DataFrame(rows)


def _serve_activity_baseline(
    config: Config,
    client,
    name: str,
    heuristic: ActivityLookalikeModel,
    audiences: dict[str, pd.DataFrame],
    metric: str,
    candidates: pd.DataFrame,
    population: str,
    beaten: ModelReport,
) -> tracking.GateDecision:
    """Log, register and promote the activity baseline in a run of its own, labelled as the
    baseline in its run name, tags, model card and registered version: the champion's
    provenance (``/metadata``) then shows the baseline's numbers, not the PU model's."""
    metrics = _audience_metrics(name, {"model": audiences[ACTIVITY_BASELINE], PU_METHOD: audiences["model"]})
    value = float(metrics.query(f"method == 'model' and metric == '{metric}'")["value"].iloc[0])
    loss = f"{metric} {beaten.model_value:.4f} against {value:.4f}"
    note = (
        f"**Baseline, not a learnt model.** The {ACTIVITY_BASELINE} (rank by purchase days in 365 days, "
        f"ties by sessions in 90 days, whatever the seed) is served as champion because the PU model "
        f"(run {beaten.run_id}, version {beaten.version}) ranks the held-out seed members worse: {loss}. "
        f"Its rows are `model` below; the PU model's are `{PU_METHOD}`."
    )
    reason = f"{ACTIVITY_BASELINE} baseline served as champion: PU challenger v{beaten.version} ranks held-out seed members worse ({loss})"
    return _register_served_baseline(
        config, client, name, ACTIVITY_BASELINE, heuristic, metrics, candidates, metric, value, True, beaten, note, reason,
        window=None, population=population, extra={"audience": audiences[ACTIVITY_BASELINE]},
    )


# --- tracking shared by every model ------------------------------------------------------------


def _track(
    config: Config,
    client,
    name: str,
    model: Any,
    metrics: pd.DataFrame,
    test: pd.DataFrame,
    headline: str,
    higher_is_better: bool,
    champion_value: Callable[[Any], float],
    *,
    window: Windows | None,
    population: str,
    plots: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] | None = None,
    explain_sign: float = 1.0,
    extra: dict[str, pd.DataFrame] | None = None,
    servable_baseline: float | None = None,
) -> ModelReport:
    """Log the model in the active run; register it and gate it against the champion and against
    its best baseline on the same window. ``servable_baseline``: the headline value of a baseline
    the caller can serve; when the model loses to its best baseline and the champion does not do
    as well as that one, the report's ``serve_baseline`` asks the caller to serve it."""
    uri = _log_run(
        config, name, model, metrics, test, headline, window=window, population=population, plots=plots,
        explain_sign=explain_sign, extra=extra,
    )
    champion = tracking.load_model(config, name)
    champion_score = None
    if champion is not None:
        try:
            champion_score = champion_value(champion)
        except Exception as error:  # an incompatible old champion must not block a new one
            mlflow.set_tag("promotion.champion_error", repr(error)[:500])
    model_value = _headline(metrics, headline)
    replaces = servable_baseline is not None and tracking.baseline_replaces(champion_score, servable_baseline, higher_is_better)
    decision = tracking.register_and_gate(
        client, name, uri, headline, model_value, champion_score, higher_is_better,
        tolerance=0.002 if higher_is_better else 0.0,
        baseline=best_baseline(metrics, headline, higher_is_better), baseline_served=replaces,
    )
    return ModelReport(
        name, name, headline, higher_is_better, model_value, {}, None, decision.promoted, decision.challenger_version,
        metrics, mlflow.active_run().info.run_id, decision.note, model.horizons_note(),
        serve_baseline=replaces and decision.loses_to_baseline,
    )


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


def _log_run(
    config: Config,
    name: str,
    model: Any,
    metrics: pd.DataFrame,
    test: pd.DataFrame,
    headline: str,
    *,
    window: Windows | None,
    population: str,
    plots: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] | None = None,
    explain_sign: float = 1.0,
    extra: dict[str, pd.DataFrame] | None = None,
    card_note: str | None = None,
) -> str:
    """Log metrics, plots, SHAP, model card (``card_note`` on top) and model in the active run;
    return the model's URI."""
    model_rows = metrics[metrics["method"] == "model"]
    indicator_metrics = {
        f"{r.indicator}.{r.metric}": float(r.value) for r in model_rows.itertuples() if np.isfinite(r.value)
    }
    mlflow.log_metrics(indicator_metrics)
    for r in metrics[metrics["method"] != "model"].itertuples():
        if np.isfinite(r.value):
            mlflow.log_metric(f"{r.method}.{r.indicator}.{r.metric}", float(r.value))
    tracking.log_table(metrics, "backtest_metrics.csv")
    mlflow.log_params({"horizons": model.horizons_note()})
    if window is not None:
        mlflow.log_params({"window": window.describe()})
    for key, frame in (extra or {}).items():
        tracking.log_table(frame.head(1000), f"{key}.csv")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for kind, curves in (plots or {}).items():
            mlflow.log_artifact(str(PLOTS[kind](curves, out / f"{kind}.png", f"{name}: {kind}")), "plots")
        sample = test.sample(min(len(test), 2000), random_state=config.seed) if len(test) else test
        x, contributions = model.explain(sample)
        for path in shap_plots(x, contributions * explain_sign, out / "shap", name):
            mlflow.log_artifact(str(path), "plots/shap")
        importance = global_importance(x, contributions)
        tracking.log_table(importance, "shap_importance.csv")
        card = model_card(name, window, population, metrics, headline, importance, model.horizons_note())
        if card_note:
            title, _, rest = card.partition("\n")
            card = f"{title}\n\n{card_note}\n{rest}"
        mlflow.log_text(card, "model_card.md")
    example = _pyfunc_example(model, test.head(500))  # logged only as non_personal_example
    return tracking.log_model(model, name, example)


def _pyfunc_example(model: Any, rows: pd.DataFrame) -> pd.DataFrame:
    """The raw feature columns the model reads (what serving passes in), for signature and example."""
    columns = model.encoder_.columns_
    example = rows[columns].copy()
    for column in model.encoder_.numeric_:
        example[column] = pd.to_numeric(example[column].astype(object).where(example[column].notna(), np.nan), errors="coerce").astype(float)
    for column in model.encoder_.categories_:
        example[column] = example[column].astype(object).where(example[column].notna(), None).astype(str)
    return example.reset_index(drop=True)


def model_card(
    name: str, window: Windows | None, population: str, metrics: pd.DataFrame, headline: str, importance: pd.DataFrame,
    horizons: str,
) -> str:
    pivot = metrics.pivot_table(index=["indicator", "metric"], columns="method", values="value", aggfunc="first")
    carried = (
        "- **Carried horizons are not backtested**: the history holds no window that long; the metrics below are "
        "the learned horizon's." if "carried" in horizons else None
    )
    lines = [
        f"# Model card: {name}",
        "",
        f"- **Horizons**: {horizons}",
        *([carried] if carried else []),
        f"- **Data window**: {window.describe() if window else 'features at the end of the data'}",
        f"- **Evaluation population**: {population}",
        f"- **Headline metric**: {headline}",
        "- **Split**: rolling origin in time; fit and tune label windows end on or before the test cutoff.",
        "",
        "## Metrics against baselines (test window)",
        "",
        pivot.round(4).to_markdown() if hasattr(pivot, "to_markdown") else pivot.round(4).to_string(),
        "",
        "## Top features (mean |SHAP|)",
        "",
        importance.head(10).to_string(index=False),
        "",
        "## Known limits",
        "",
        "- Trained on the data in the window above; drift after it is not seen.",
        "- Baselines: BG/NBD + Gamma-Gamma (PyMC-Marketing, MAP), Pareto/NBD + Gamma-Gamma (maximum likelihood) and RFM cells; the oracle exists only on generated data.",
        "- Probabilities are calibrated on the tune window, one step before the test window.",
    ]
    return "\n".join(lines)


# --- the whole job ---------------------------------------------------------------------------------

TRAINERS = {
    "purchase_timing": train_purchase_timing,
    "expected_purchases": train_expected_purchases,
    "clv": train_clv,
    "lookalike": train_lookalikes,
}


def run_training(config: Config, on_step: Step = lambda _: None, models: tuple[str, ...] = tuple(TRAINERS)) -> TrainingResult:
    """Train, backtest, log and gate every model. A run that fails promotes nothing: the
    champions it moved go back to where they were (its versions stay registered, unaliased)."""
    client = tracking.setup_tracking(config)
    began = datetime.now(UTC)
    timings: dict[str, float] = {}
    data, _store = prepare(config, on_step, timings)
    before = tracking.champion_versions(client, [m.name for m in client.search_registered_models()])
    try:
        reports = _train_models(config, data, client, on_step, models, timings)
    except BaseException:
        tracking.restore_champions(client, before)
        raise
    result = TrainingResult(reports, timings, (data.data_start, data.data_end))
    result.report_path = build_report(config, result, began)
    on_step(f"report: {result.report_path}")
    return result


def _train_models(
    config: Config, data: ModelingData, client, on_step: Step, models: tuple[str, ...], timings: dict[str, float]
) -> list[ModelReport]:
    reports: list[ModelReport] = []
    for key in models:
        started = time.perf_counter()
        experiment_id = tracking.experiment(client, config, key)
        mlflow.set_experiment(experiment_id=experiment_id)  # nested trial runs land here too
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{key}"):
            mlflow.log_params(
                {
                    "data_start": f"{data.data_start:%Y-%m-%d}",
                    "data_end": f"{data.data_end:%Y-%m-%d}",
                    "rows": len(data.rows),
                    "customers_modelled": data.rows["customer_id"].nunique(),
                    "seed": config.seed,
                    "trials": config.models.trials,
                }
            )
            tracking.log_experiment(config)
            reports += TRAINERS[key](config, data, client, on_step)
        timings[f"train_{key}"] = time.perf_counter() - started
    return reports
