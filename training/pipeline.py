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

from training import baselines, evaluation, tracking
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
from training.windows import Windows, plan_windows, required_cutoffs

Step = Callable[[str], None]
MONETARY_PREFIXES = ("revenue_", "avg_order_value", "max_order_value")
MIN_SEED = 10  # LookalikeModel's minimum: fewer seed members cannot be split into fit and held out
CATEGORY_PREFIXES = ("share_", "category_")


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

    @property
    def best_baseline(self) -> tuple[str, float]:
        pick = max if self.higher_is_better else min
        name = pick(self.baselines, key=lambda k: self.baselines[k])
        return name, self.baselines[name]


@dataclass
class ModelingData:
    rows: pd.DataFrame  # features and labels of every (customer, cutoff), one row each
    windows: dict[int, Windows]
    data_start: datetime
    data_end: datetime
    transactions: pd.DataFrame
    truth: pd.DataFrame | None
    btyd_cache: dict[tuple, pd.DataFrame] = field(default_factory=dict)

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
        first = con.execute("SELECT min(\"timestamp\") FROM transactions").fetchall()[0][0]
        start = pd.Timestamp(first).tz_convert("UTC").floor("D").to_pydatetime()
        settings = config.models
        cutoffs = required_cutoffs(start, end, settings)
        plan = set(config.snapshots.dates(end)) | set(cutoffs)
        build_snapshots(paths, sorted(plan))
        store = feature_store.feature_store(config)
        feature_store.apply(store, paths)
        timings["snapshots"] = time.perf_counter() - started
        on_step(f"snapshots at {len(plan)} dates")
        started = time.perf_counter()
        feature_store.write_latest_online(store, paths)
        timings["online_write"] = time.perf_counter() - started
        on_step("latest features written to the online store")

        started = time.perf_counter()
        horizons = sorted({*settings.purchase_horizons, settings.churn_horizon_days, settings.expected_purchases_horizon_days})
        windows = {h: plan_windows(start, end, h, settings) for h in {*horizons, settings.clv_horizon_days}}
        model_cutoffs = sorted({c for w in windows.values() for c in w.all} | {end})
        profile = modelled_customers(
            pd.read_parquet(paths.features / "customer_profile.parquet", columns=["customer_id", "signup_at"]),
            settings.max_customers, config.seed,
        )
        rows = entity_rows(profile, model_cutoffs)
        features = features_at(store, rows)
        timings["feature_retrieval"] = time.perf_counter() - started
        on_step(f"features for {len(rows):,} (customer, cutoff) rows of {len(profile):,} customers")

        started = time.perf_counter()
        labels = build_labels(con, rows, horizons, [settings.clv_horizon_days], end)
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
    return ModelingData(merged, windows, start, end, transactions, truth), store


def modelled_customers(profile: pd.DataFrame, max_customers: int, seed: int) -> pd.DataFrame:
    """Everyone, or a seeded random sample of ``max_customers`` (the same one on every rerun).

    The baselines and the oracle are evaluated on the same customers as the models.
    """
    if not max_customers or len(profile) <= max_customers:
        return profile
    return profile.sample(n=max_customers, random_state=seed).sort_values("customer_id").reset_index(drop=True)


def _btyd(data: ModelingData, config: Config, cutoff: datetime) -> pd.DataFrame:
    key = (cutoff,)
    if key not in data.btyd_cache:
        s = config.models
        data.btyd_cache[key] = baselines.btyd_predictions(
            data.transactions, cutoff, s.purchase_horizons, s.expected_purchases_horizon_days, s.clv_horizon_days
        )
    return data.btyd_cache[key]


def _pareto(data: ModelingData, config: Config, cutoff: datetime) -> pd.DataFrame:
    key = ("pareto_nbd", cutoff)
    if key not in data.btyd_cache:
        s = config.models
        data.btyd_cache[key] = baselines.pareto_nbd_predictions(
            data.transactions, cutoff, s.purchase_horizons, s.expected_purchases_horizon_days, s.clv_horizon_days
        )
    return data.btyd_cache[key]


def _aligned(frame: pd.DataFrame, predictions: pd.DataFrame, column: str) -> np.ndarray:
    return frame[["customer_id"]].merge(predictions[["customer_id", column]], on="customer_id", how="left")[column].to_numpy()


def _oracle(data: ModelingData, config: Config, cutoff: datetime) -> pd.DataFrame | None:
    if data.truth is None:
        return None
    s = config.models
    return baselines.oracle_predictions(
        data.truth, cutoff, s.purchase_horizons, s.expected_purchases_horizon_days, s.clv_horizon_days
    )


def _buyers(frame: pd.DataFrame) -> pd.Series:
    return frame["purchase_days_total"].fillna(0) > 0


# --- purchase timing: churn and next purchase ---------------------------------------------


def train_purchase_timing(config: Config, data: ModelingData, client, on_step: Step) -> list[ModelReport]:
    s = config.models
    sets = {}
    for h in s.purchase_horizons:
        w = data.windows[h]
        fit = data.at(w.fit)
        tune_rows = data.at([w.tune])
        sets[h] = (fit, (fit[f"future_purchase_days_{h}d"] > 0).to_numpy(float), tune_rows, (tune_rows[f"future_purchase_days_{h}d"] > 0).to_numpy(float))
    churn_h = s.churn_horizon_days
    model = PurchaseTimingModel(horizons=s.purchase_horizons, churn_horizon=churn_h, seed=config.seed, threads=s.threads, max_rounds=s.max_rounds)
    model.params = _tuned(config, *sets[churn_h], "binary")
    model.fit(sets)
    on_step("purchase timing fitted")

    # Churn: the stated population, on the churn horizon's test window.
    w = data.windows[churn_h]
    test = data.at([w.test], None)
    test = test[test["bought_last_365d"]].reset_index(drop=True)
    churned = (test[f"future_purchase_days_{churn_h}d"] == 0).to_numpy(float)
    p_churn = model.predict(test)["p_churn"].to_numpy()
    btyd = _btyd(data, config, w.test)
    rfm = baselines.RfmCells().fit(sets[churn_h][0], (sets[churn_h][0][f"future_purchase_days_{churn_h}d"] == 0).to_numpy(float))
    candidates = {
        "model": p_churn,
        "btyd": 1 - _aligned(test, btyd, f"p_purchase_{churn_h}d"),
        "pareto_nbd": 1 - _aligned(test, _pareto(data, config, w.test), f"p_purchase_{churn_h}d"),
        "rfm": rfm.predict(test),
    }
    oracle = _oracle(data, config, w.test)
    if oracle is not None:
        candidates["oracle"] = 1 - _aligned(test, oracle, f"p_purchase_{churn_h}d")
    churn_metrics = _metrics_table("churn", candidates, churned, evaluation.classification_metrics)
    curves = {k: (churned, v) for k, v in candidates.items()}

    # Next purchase: every horizon on its own test window, among customers who have bought.
    timing_rows = []
    for h in s.purchase_horizons:
        wh = data.windows[h]
        t = data.at([wh.test])
        t = t[_buyers(t)].reset_index(drop=True)
        bought = (t[f"future_purchase_days_{h}d"] > 0).to_numpy(float)
        preds = {
            "model": model.purchase_curve(t)[f"p_purchase_{h}d"].to_numpy(),
            "btyd": _aligned(t, _btyd(data, config, wh.test), f"p_purchase_{h}d"),
            "pareto_nbd": _aligned(t, _pareto(data, config, wh.test), f"p_purchase_{h}d"),
            "rfm": baselines.RfmCells().fit(sets[h][0], sets[h][1]).predict(t),
        }
        o = _oracle(data, config, wh.test)
        if o is not None:
            preds["oracle"] = _aligned(t, o, f"p_purchase_{h}d")
        timing_rows.append(_metrics_table(f"p_purchase_{h}d", preds, bought, evaluation.classification_metrics))
    longest = data.windows[max(s.purchase_horizons)]
    t = data.at([longest.test])
    t = t[_buyers(t)].reset_index(drop=True)
    timing = model.predict(t)
    timing_rows.append(_timing_table(t, timing, (data.data_end - longest.test).total_seconds() / 86_400))
    metrics = pd.concat([churn_metrics, *timing_rows], ignore_index=True)

    headline = metrics.query("indicator == 'churn' and metric == 'auc'").set_index("method")["value"]
    next_auc = metrics.query(f"indicator == 'p_purchase_{s.purchase_horizons[2]}d' and metric == 'auc'").set_index("method")["value"]

    def champion_value(champion: PurchaseTimingModel) -> float:
        return evaluation.classification_metrics(churned, champion.predict(test)["p_churn"].to_numpy())["auc"]

    report = _track(
        config, client, "purchase_timing", model, metrics, test, "auc", True, champion_value,
        window=w, population="customers who bought in the 365 days before the cutoff",
        plots={"calibration": curves, "gains": curves}, explain_sign=-1.0,
        extra={"next_purchase_days": timing},
    )
    churn_report = ModelReport(
        "purchase_timing", "churn", "auc", True, headline["model"],
        {k: headline[k] for k in ("btyd", "pareto_nbd", "rfm")}, headline.get("oracle"), report.promoted, report.version, metrics,
        report.run_id, gate_note=report.gate_note,
    )
    next_report = ModelReport(
        "purchase_timing", f"p_purchase_{s.purchase_horizons[2]}d", "auc", True, next_auc["model"],
        {k: next_auc[k] for k in ("btyd", "pareto_nbd", "rfm")}, next_auc.get("oracle"), report.promoted, report.version, metrics,
        report.run_id, gate_note=report.gate_note,
    )
    return [churn_report, next_report]


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
    h = s.expected_purchases_horizon_days
    w = data.windows[h]
    fit, tune_rows = data.at(w.fit), data.at([w.tune])
    label = f"future_purchase_days_{h}d"
    model = CountModel(horizon=h, seed=config.seed, threads=s.threads, max_rounds=s.max_rounds)
    model.params = _tuned(config, fit, fit[label].to_numpy(float), tune_rows, tune_rows[label].to_numpy(float), "poisson")
    model.fit(fit, fit[label].to_numpy(float), tune_rows, tune_rows[label].to_numpy(float))
    on_step("expected purchases fitted")
    test = data.at([w.test])
    test = test[_buyers(test)].reset_index(drop=True)
    y = test[label].to_numpy(float)
    preds = {
        "model": model.predict(test)["expected_purchases"].to_numpy(),
        "btyd": _aligned(test, _btyd(data, config, w.test), "expected_purchases"),
        "pareto_nbd": _aligned(test, _pareto(data, config, w.test), "expected_purchases"),
        "rfm": baselines.RfmCells().fit(fit, fit[label].to_numpy(float)).predict(test),
    }
    o = _oracle(data, config, w.test)
    if o is not None:
        preds["oracle"] = _aligned(test, o, "expected_purchases")
    metrics = _metrics_table("expected_purchases", preds, y, evaluation.regression_metrics)

    def champion_value(champion: CountModel) -> float:
        return evaluation.regression_metrics(y, champion.predict(test)["expected_purchases"].to_numpy())["mae"]

    report = _track(
        config, client, "expected_purchases", model, metrics, test, "mae", False, champion_value,
        window=w, population="customers with at least one purchase by the cutoff",
        plots={"deciles": {k: (y, v) for k, v in preds.items()}},
    )
    return [_report_from(report, "expected_purchases", metrics, "mae", False)]


def _report_from(report: ModelReport, indicator: str, metrics: pd.DataFrame, metric: str, higher: bool) -> ModelReport:
    values = metrics.query(f"indicator == '{indicator}' and metric == '{metric}'").set_index("method")["value"]
    return ModelReport(
        report.name, indicator, metric, higher, values["model"],
        {k: values[k] for k in values.index if k not in ("model", "oracle")}, values.get("oracle"),
        report.promoted, report.version, metrics, report.run_id, report.gate_note,
    )


# --- CLV ---------------------------------------------------------------------------------------


def train_clv(config: Config, data: ModelingData, client, on_step: Step) -> list[ModelReport]:
    s = config.models
    h = s.clv_horizon_days
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
    on_step("CLV fitted")
    test = data.at([w.test])
    test = test[_buyers(test)].reset_index(drop=True)
    y = test[label].to_numpy(float)
    predicted = model.predict(test)
    preds = {
        "model": predicted["expected_revenue"].to_numpy(),
        "btyd": _aligned(test, _btyd(data, config, w.test), "expected_revenue"),
        "pareto_nbd": _aligned(test, _pareto(data, config, w.test), "expected_revenue"),
        "rfm": baselines.RfmCells(use_monetary=True).fit(fit, fit[label].to_numpy(float)).predict(test),
    }
    o = _oracle(data, config, w.test)
    if o is not None:
        preds["oracle"] = _aligned(test, o, "expected_revenue")
    metrics = _metrics_table("expected_revenue", preds, y, evaluation.regression_metrics)
    coverage = evaluation.interval_coverage(y, predicted["expected_revenue_p10"].to_numpy(), predicted["expected_revenue_p90"].to_numpy())
    metrics = pd.concat(
        [metrics, pd.DataFrame([{"indicator": "expected_revenue", "method": "model", "metric": f"p10_p90_{k}", "value": v} for k, v in coverage.items()])],
        ignore_index=True,
    )

    def champion_value(champion: ClvModel) -> float:
        return evaluation.regression_metrics(y, champion.predict(test)["expected_revenue"].to_numpy())["normalized_gini"]

    report = _track(
        config, client, "clv", model, metrics, test, "normalized_gini", True, champion_value,
        window=w, population="customers with at least one purchase by the cutoff",
        plots={"deciles": {k: (y, v) for k, v in preds.items()}, "gains": {k: (y, v) for k, v in preds.items()}},
    )
    return [_report_from(report, "expected_revenue", metrics, "normalized_gini", True)]


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

        def champion_value(champion: Any) -> float:
            table = champion.audience_report(latest, (headline_percent,))
            return float(table["heldout_seed_recall"].iloc[0])

        with mlflow.start_run(run_name=name, nested=True):
            report = _track(
                config, client, name, model, metrics, candidates, metric, True, champion_value,
                window=None, population=population, extra={"audience": audiences["model"]}, baseline_served=True,
            )
        if report.gate_note is not None:  # the PU model loses to the activity baseline: serve the baseline
            served = _serve_activity_baseline(config, client, name, heuristic, audiences, metric, candidates, population, report)
            report.gate_note += f" (v{served.challenger_version})"
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
    with mlflow.start_run(run_name=f"{name} ({ACTIVITY_BASELINE} baseline)", nested=True):
        mlflow.set_tags({"model_kind": "baseline", "baseline": ACTIVITY_BASELINE, "replaces_run": beaten.run_id or ""})
        uri = _log_run(
            config, name, heuristic, metrics, candidates, metric, window=None, population=population,
            extra={"audience": audiences[ACTIVITY_BASELINE]}, card_note=note,
        )
        reason = f"{ACTIVITY_BASELINE} baseline served as champion: PU challenger v{beaten.version} ranks held-out seed members worse ({loss})"
        return tracking.register_baseline(client, name, uri, metric, value, ACTIVITY_BASELINE, True, reason)


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
    baseline_served: bool = False,
) -> ModelReport:
    """Log the model in the active run; register it and gate it against the champion and against
    its best baseline on the same window (``baseline_served``: the caller serves the baseline if
    the model loses to it)."""
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
    model_value = float(metrics.query(f"method == 'model' and metric == '{headline}'")["value"].iloc[0])
    decision = tracking.register_and_gate(
        client, name, uri, headline, model_value, champion_score, higher_is_better,
        tolerance=0.002 if higher_is_better else 0.0,
        baseline=best_baseline(metrics, headline, higher_is_better), baseline_served=baseline_served,
    )
    return ModelReport(
        name, name, headline, higher_is_better, model_value, {}, None, decision.promoted, decision.challenger_version,
        metrics, mlflow.active_run().info.run_id, decision.note,
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
    if window is not None:
        mlflow.log_params({"window": window.describe()})
    for key, frame in (extra or {}).items():
        tracking.log_table(frame.head(1000), f"{key}.csv")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for kind, curves in (plots or {}).items():
            plot = getattr(evaluation, f"plot_{kind}")
            mlflow.log_artifact(str(plot(curves, out / f"{kind}.png", f"{name}: {kind}")), "plots")
        sample = test.sample(min(len(test), 2000), random_state=config.seed) if len(test) else test
        x, contributions = model.explain(sample)
        for path in shap_plots(x, contributions * explain_sign, out / "shap", name):
            mlflow.log_artifact(str(path), "plots/shap")
        importance = global_importance(x, contributions)
        tracking.log_table(importance, "shap_importance.csv")
        card = model_card(name, window, population, metrics, headline, importance)
        if card_note:
            title, _, rest = card.partition("\n")
            card = f"{title}\n\n{card_note}\n{rest}"
        mlflow.log_text(card, "model_card.md")
    example = _pyfunc_example(model, test.head(5))
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
    name: str, window: Windows | None, population: str, metrics: pd.DataFrame, headline: str, importance: pd.DataFrame
) -> str:
    pivot = metrics.pivot_table(index=["indicator", "metric"], columns="method", values="value", aggfunc="first")
    lines = [
        f"# Model card: {name}",
        "",
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
        "- Baselines: BG/NBD + Gamma-Gamma (PyMC-Marketing, MAP) and RFM cells; the oracle exists only on generated data.",
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
