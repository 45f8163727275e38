"""The trainers: each fits its model on the rolling-origin windows, backtests it beside the
baselines on the same test window, and returns a ``Trained`` for tracking to log and gate
(``training.publish``). Nothing here talks to MLflow: a trainer is a function of the config
and the modelling data, testable on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np
import optuna
import pandas as pd

from training import baselines, catalogue, classical, evaluation
from training.btyd import LABELS
from training.carry import CarriedTiming, CarriedValue, Carry, learned_model
from training.config import Config, ModelSettings
from training.dataset import FeatureEncoder
from training.evaluation import best_baseline, headline_value, level_shortfall, metrics_table, worse
from training.models import (
    ActivityLookalikeModel,
    ClvModel,
    CountModel,
    LookalikeModel,
    PurchaseTimingModel,
)
from training.structural import Correction
from training.tuning import tune
from training.windows import HorizonPlan, Windows

Step = Callable[[str], None]
MONETARY_PREFIXES = ("revenue_", "avg_order_value", "max_order_value")
MIN_SEED = 10  # LookalikeModel's minimum: fewer seed members cannot be split into fit and held out
CATEGORY_PREFIXES = ("share_", "category_")
ACTIVITY_BASELINE = "activity_heuristic"


@dataclass
class ModelingData:
    rows: pd.DataFrame  # features and labels of every (customer, cutoff), one row each
    plan: HorizonPlan  # which horizons are learned, their windows, which are carried
    data_start: datetime
    data_end: datetime
    transactions: pd.DataFrame
    truth: pd.DataFrame | None
    carry: Carry | None = None  # fitted at the end of the data when a horizon is carried
    seed: int = 42
    threads: int = 2
    btyd_cache: dict[tuple, Any] = field(default_factory=dict)  # baseline predictions and classical fits
    btyd_ahead: baselines.BtydAhead | None = None  # PyMC-Marketing's fits at the test cutoffs, under way

    def close(self) -> None:
        """Stop the process fitting the baselines ahead (a fit nobody asked for is not waited for)."""
        if self.btyd_ahead is not None:
            self.btyd_ahead.close()

    @property
    def windows(self) -> dict[int, Windows]:
        return self.plan.windows

    def at(self, cutoffs, mask: pd.Series | None = None) -> pd.DataFrame:
        chosen = self.rows["cutoff"].isin(list(cutoffs))
        if mask is not None:
            chosen &= mask
        return self.rows[chosen].reset_index(drop=True)


@dataclass
class Evaluation:
    """A candidate's metrics on the test windows, beside the baselines', and what to plot."""

    metrics: pd.DataFrame
    plots: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)


@dataclass(frozen=True)
class Gate:
    """What a model is gated on: its headline metric on the test window of its population."""

    name: str
    headline: str
    higher_is_better: bool
    window: Windows | None  # None: ranked on the features at the end of the data (lookalikes)
    test: pd.DataFrame
    population: str
    explain_sign: float = 1.0

    @classmethod
    def of(cls, name: str, window: Windows, test: pd.DataFrame) -> Gate:
        """The gate of the catalogue's model ``name``."""
        entry = catalogue.model(name)
        return cls(name, entry.headline_metric, entry.higher_is_better, window, test, entry.population, entry.explanation_sign)


@dataclass
class Fallback:
    """A baseline that can be served in the model's place when the gate finds the model loses
    to its best baseline on the test window."""

    baseline: str  # its method in the metrics: btyd, pareto_nbd, activity_heuristic
    label: str  # as the model card and summaries name it
    value: float  # its headline metric on the test window
    evaluation: Evaluation  # its own backtest, its rows as ``model``
    build: Callable[[], Any]  # the servable model, fitted on the whole history
    description: str  # what is served, for the top of its model card
    correction_note: str | None = None  # why the inner-window correction was dropped, if it was


@dataclass
class Trained:
    """A trainer's result: the model as served, its backtest and how to gate it."""

    gate: Gate
    model: Any  # as served: carried to the configured horizons where it learned shorter ones
    evaluation: Evaluation  # the learnt model's backtest beside the baselines
    champion_value: Callable[[Any], float]  # the current champion's headline on the same test rows
    headlines: tuple[str, ...]  # the indicators the summaries report, on the gate's metric (the first is gated)
    fallback: Fallback | None = None
    fallback_note: str | None = None  # why no baseline can be served in its place, if it loses
    studies: tuple[optuna.Study, ...] = ()  # the tuning studies, one per tuned booster
    own_run: bool = False  # logged in a nested run of its own (one per lookalike seed)


def modelled_customers(profile: pd.DataFrame, max_customers: int, seed: int) -> pd.DataFrame:
    """Everyone, or a seeded random sample of ``max_customers`` (the same one on every rerun).

    The baselines and the oracle are evaluated on the same customers as the models.
    """
    # Sorted first: DuckDB may list customers in any order, and the sample must not depend on it.
    profile = profile.sort_values("customer_id", kind="stable").reset_index(drop=True)
    if not max_customers or len(profile) <= max_customers:
        return profile
    return profile.sample(n=max_customers, random_state=seed).sort_values("customer_id").reset_index(drop=True)


def _learned_horizons(plan: HorizonPlan, settings: ModelSettings) -> tuple[tuple[int, ...], int, int]:
    """The purchase grid, expected-purchases and CLV horizons the models learn (and are compared at)."""
    return plan.learned_grid, plan.learned(settings.expected_purchases_horizon_days), plan.learned(settings.clv_horizon_days)


def start_btyd(
    transactions: pd.DataFrame, plan: HorizonPlan, settings: ModelSettings, models: Sequence[str],
) -> baselines.BtydAhead | None:
    """PyMC-Marketing's baselines at every test cutoff the trainers of ``models`` compare at
    (``TRAINERS`` keys), started now, in the order they ask; None if none of them does."""
    cutoffs, spend_at = btyd_cutoffs(plan, settings, models)
    return baselines.BtydAhead(transactions, cutoffs, *_learned_horizons(plan, settings), spend_at) if cutoffs else None


def btyd_cutoffs(plan: HorizonPlan, settings: ModelSettings, models: Sequence[str]) -> tuple[list[datetime], set[datetime]]:
    """The test cutoffs at which the trainers of ``models`` compare BG/NBD, in the order they
    ask (repeats kept), and those at which they read its spend (only the CLV trainer does)."""
    grid, count_horizon, revenue_horizon = _learned_horizons(plan, settings)
    asked_at = {
        "purchase_timing": (plan.learned_on_grid(settings.churn_horizon_days), *grid),
        "expected_purchases": (count_horizon,),
        "clv": (revenue_horizon,),
    }
    cutoffs = [plan.windows[h].test for key in models for h in asked_at.get(key, ())]
    return cutoffs, ({plan.windows[revenue_horizon].test} if "clv" in models else set())


def _btyd(data: ModelingData, config: Config, cutoff: datetime, column: str) -> pd.DataFrame:
    """BG/NBD (x Gamma-Gamma) at ``cutoff``, with ``column``: fitted ahead, or here."""
    key = (cutoff,)
    if column not in data.btyd_cache.get(key, ()):
        ahead = data.btyd_ahead.predictions(cutoff) if data.btyd_ahead is not None else None
        data.btyd_cache[key] = ahead if ahead is not None and column in ahead else baselines.btyd_predictions(
            data.transactions, cutoff, *_learned_horizons(data.plan, config.models))
    return data.btyd_cache[key]


def _pareto(data: ModelingData, config: Config, cutoff: datetime) -> pd.DataFrame:
    key = ("pareto_nbd", cutoff)
    if key not in data.btyd_cache:
        data.btyd_cache[key] = baselines.pareto_nbd_predictions(data.transactions, cutoff, *_learned_horizons(data.plan, config.models))
    return data.btyd_cache[key]


def _aligned(frame: pd.DataFrame, predictions: pd.DataFrame, column: str) -> np.ndarray:
    return frame[["customer_id"]].merge(predictions[["customer_id", column]], on="customer_id", how="left")[column].to_numpy()


def _oracle(data: ModelingData, config: Config, cutoff: datetime) -> pd.DataFrame | None:
    if data.truth is None:
        return None
    return baselines.oracle_predictions(data.truth, cutoff, *_learned_horizons(data.plan, config.models))


def _baselines(
    data: ModelingData, config: Config, test: pd.DataFrame, cutoff: datetime, column: str, rfm: np.ndarray
) -> dict[str, np.ndarray]:
    """Every baseline's ``column`` for the ``test`` rows at ``cutoff``, the RFM cells' given."""
    pareto = _aligned(test, _pareto(data, config, cutoff), column)  # first: BG/NBD may still be fitting ahead
    predictions = {"btyd": _aligned(test, _btyd(data, config, cutoff, column), column), "pareto_nbd": pareto, "rfm": rfm}
    oracle = _oracle(data, config, cutoff)
    if oracle is not None:
        predictions["oracle"] = _aligned(test, oracle, column)
    return predictions


def _buyers(frame: pd.DataFrame) -> pd.Series:
    return frame["purchase_days_total"].fillna(0) > 0


def _tuned(
    config: Config, fit: pd.DataFrame, y_fit: np.ndarray, tune_rows: pd.DataFrame, y_tune: np.ndarray, objective: str
) -> tuple[dict[str, Any], optuna.Study]:
    """Optuna's best parameters for the main booster of a model, and its study."""
    s = config.models
    encoder = FeatureEncoder().fit(fit)
    return tune(
        encoder.transform(fit), y_fit, encoder.transform(tune_rows), y_tune, objective,
        trials=s.trials, timeout_seconds=s.timeout_seconds, seed=config.seed, threads=s.threads, max_rounds=s.max_rounds,
    )


# --- purchase timing: churn and next purchase ---------------------------------------------


def train_purchase_timing(config: Config, data: ModelingData, on_step: Step) -> list[Trained]:
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
    model.params, study = _tuned(config, *sets[churn_h], "binary")
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
    pareto_churn = 1 - _aligned(test, _pareto(data, config, w.test), f"p_purchase_{churn_h}d")  # while BG/NBD fits ahead
    baseline_churn = {
        "btyd": 1 - _aligned(test, _btyd(data, config, w.test, f"p_purchase_{churn_h}d"), f"p_purchase_{churn_h}d"),
        "pareto_nbd": pareto_churn,
        "rfm": baselines.RfmCells().fit(sets[churn_h][0], fit_churned).predict(test),
    }
    oracle = _oracle(data, config, w.test)
    if oracle is not None:
        baseline_churn["oracle"] = 1 - _aligned(test, oracle, f"p_purchase_{churn_h}d")

    def evaluate(candidate_at: Callable[[datetime], Any]) -> Evaluation:
        """Churn, P(purchase within h) on each horizon's test window, next-purchase coverage."""
        at_churn = candidate_at(w.test).purchase_curve(test)[f"p_purchase_{churn_h}d"].to_numpy()
        candidates = {"model": 1 - at_churn, **baseline_churn}
        tables = [metrics_table("churn", candidates, churned, evaluation.classification_metrics)]
        for h in grid:  # among customers who have bought
            wh = data.windows[h]
            t = data.at([wh.test])
            t = t[_buyers(t)].reset_index(drop=True)
            bought = (t[f"future_purchase_days_{h}d"] > 0).to_numpy(float)
            preds = {
                "model": candidate_at(wh.test).purchase_curve(t)[f"p_purchase_{h}d"].to_numpy(),
                **_baselines(data, config, t, wh.test, f"p_purchase_{h}d", baselines.RfmCells().fit(sets[h][0], sets[h][1]).predict(t)),
            }
            tables.append(metrics_table(f"p_purchase_{h}d", preds, bought, evaluation.classification_metrics))
        longest = data.windows[max(grid)]
        t = data.at([longest.test])
        t = t[_buyers(t)].reset_index(drop=True)
        timing = candidate_at(longest.test).predict(t)
        tables.append(_timing_table(t, timing, (data.data_end - longest.test).total_seconds() / 86_400))
        curves = {k: (churned, v) for k, v in candidates.items()}
        return Evaluation(pd.concat(tables, ignore_index=True), {"calibration": curves, "gains": curves}, {"next_purchase_days": timing})

    def champion_value(champion: Any) -> float:
        return evaluation.classification_metrics(churned, _learned_at(champion, churn_h).predict(test)["p_churn"].to_numpy())["auc"]

    next_h = 30 if 30 in grid else grid[-1]
    trained = _with_classical_fallback(
        data, Gate.of("purchase_timing", w, test), model, served, evaluate, champion_value,
        {"horizons": grid, "churn_horizon": churn_h}, full,
    )
    trained.headlines, trained.studies = ("churn", f"p_purchase_{next_h}d"), (study,)
    return [trained]


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


# --- the classical model in the learnt model's place --------------------------------------


def _with_classical_fallback(
    data: ModelingData, gate: Gate, model: Any, served: Any, evaluate: Callable[[Callable[[datetime], Any]], Evaluation],
    champion_value: Callable[[Any], float], at_learned: dict[str, Any], at_full: dict[str, Any],
) -> Trained:
    """The learnt ``model``'s backtest, and the classical model that can be served in the place
    of ``served`` (the model as served: carried or not) if the learnt one does not hold against
    BG/NBD or Pareto/NBD (headline or level, ``_holds``): fitted by this project at each test
    cutoff with the correction its inner window supports (``training.classical``), scored by the
    same ``evaluate``, kept only if the learnt model does not hold against it either (the gate's
    baselines are PyMC-Marketing's MAP fits). Of its variants (``CORRECTION_VARIANTS``), the most
    corrected one that holds against the plain baseline on the test window is the candidate.
    None when the learnt model holds or its best baseline is RFM cells; with a note when the
    refit does not beat it. ``at_learned`` and ``at_full`` are the classical model's horizons
    for evaluation and for serving."""
    learnt = evaluate(lambda _cutoff: model)
    trained = Trained(gate, served, learnt, champion_value, (gate.name,))
    best = best_baseline(learnt.metrics, gate.headline, gate.higher_is_better)
    if best is None or best[0] not in classical.NAMES or _holds(learnt.metrics, gate, best[0]):
        return trained
    kind = classical.NAMES[best[0]]

    def refit(variant: str) -> tuple[Evaluation, bool]:
        """The refit's backtest, and whether any of its fits carries a correction."""
        fits: dict[datetime, Any] = {}

        def candidate_at(cutoff: datetime) -> Any:
            if cutoff not in fits:  # fitted on the data up to each test cutoff, never after it
                fitted = _classical_fit(data, cutoff, kind, _horizon_of(at_learned), variant)
                fits[cutoff] = classical.classical_model(gate.name, model, fitted, **at_learned)
            return fits[cutoff]

        result = evaluate(candidate_at)
        return result, not all(fit.correction.identity for fit in fits.values())

    # The most corrected variant that holds against the plain classical model on the test window.
    dropped: list[str] = []
    for variant in CORRECTION_VARIANTS:
        result, corrected = refit(variant)
        if variant == "plain" or (corrected and _holds(result.metrics, gate, best[0])):
            break
        if corrected:
            dropped.append(f"{CORRECTION_VARIANTS[variant]} ({gate.headline} {headline_value(result.metrics, gate.headline):.4f})")
    correction_note = None
    if dropped:
        weighs = "; as a ranking metric, with the level" if gate.headline in evaluation.RANKING_METRICS else ""
        correction_note = (f"the inner-window corrections that do not hold against plain {LABELS[kind]} on the test window "
                           f"({gate.headline} {headline_value(result.metrics, gate.headline, best[0]):.4f}{weighs}) "
                           f"are dropped: {'; '.join(dropped)}")
    refit_value = headline_value(result.metrics, gate.headline)
    label = LABELS[kind] + (f" ({CORRECTION_VARIANTS[variant]})" if corrected else "")
    side_by_side = pd.concat(  # the learnt model's rows beside the refit's, named "refit"
        [learnt.metrics.query("method == 'model'"), result.metrics.query("method == 'model'").assign(method="refit")]
    )
    if _holds(side_by_side, gate, "refit"):
        trained.fallback_note = (f"{label} as this project fits it does not beat the learnt model on this window "
                                 f"({gate.headline} {refit_value:.4f}), so it is not served")
        return trained

    def build() -> Any:  # the correction learned as it was tested: for the learned horizon
        fitted = _classical_fit(data, data.data_end, kind, _horizon_of(at_learned), variant)
        return classical.classical_model(gate.name, served, fitted, **at_full)

    description = (f"{label} is served as champion for customers who have bought; customers who never bought, "
                   f"whom {LABELS[kind]} does not describe, get the learnt model's predictions and reasons")
    if corrected:  # the test window both kept the correction and measures it
        description += ("; keeping its correction was decided on the same test window whose metrics are shown, "
                        "so they flatter it slightly")
    trained.fallback = Fallback(best[0], label, refit_value, result, build, description, correction_note)
    return trained


def _horizon_of(attributes: dict[str, Any]) -> int:
    """The horizon a classical model's correction is learned for: its count or churn horizon."""
    return attributes.get("horizon") or attributes["churn_horizon"]


# The classical model's variants, most corrected first, as labels name them.
CORRECTION_VARIANTS = {
    "corrected": "corrected on an inner window",  # level and ranking
    "ranking": "ranking corrected on an inner window",  # the LightGBM correction alone, the total left as fitted
    "plain": "plain",
}


def _classical_fit(data: ModelingData, cutoff: datetime, kind: str, horizon: int, variant: str) -> classical.ClassicalFit:
    """``classical.fit_classical`` on the data up to ``cutoff`` as ``variant`` (``CORRECTION_VARIANTS``),
    fitted once per run for every trainer that asks."""
    key = ("classical", kind, cutoff, horizon)
    if key not in data.btyd_cache:  # the corrected fit; the other variants strip its correction
        data.btyd_cache[key] = classical.fit_classical(data.transactions, pd.Timestamp(cutoff), kind, horizon, data.seed, data.threads)
    fitted = data.btyd_cache[key]
    if variant == "ranking":
        return replace(fitted, correction=replace(fitted.correction, level=1.0))
    return fitted if variant == "corrected" else replace(fitted, correction=Correction())


def _holds(metrics: pd.DataFrame, gate: Gate, against: str) -> bool:
    """Whether the model holds against method ``against`` on the same rows: not worse on the
    headline, and its level not short of the other's (``evaluation.level_shortfall``)."""
    mine, theirs = headline_value(metrics, gate.headline), headline_value(metrics, gate.headline, against)
    return not worse(mine, theirs, gate.higher_is_better, 0.0) and level_shortfall(metrics, gate.headline, against) is None


# --- expected purchases ----------------------------------------------------------------------


def train_expected_purchases(config: Config, data: ModelingData, on_step: Step) -> list[Trained]:
    s = config.models
    h = data.plan.learned(s.expected_purchases_horizon_days)
    w = data.windows[h]
    fit, tune_rows = data.at(w.fit), data.at([w.tune])
    label = f"future_purchase_days_{h}d"
    model = CountModel(horizon=h, seed=config.seed, threads=s.threads, max_rounds=s.max_rounds)
    model.params, study = _tuned(config, fit, fit[label].to_numpy(float), tune_rows, tune_rows[label].to_numpy(float), "poisson")
    model.fit(fit, fit[label].to_numpy(float), tune_rows, tune_rows[label].to_numpy(float))
    served = _carried_value(model, data, s.expected_purchases_horizon_days)
    on_step("expected purchases fitted")
    test = data.at([w.test])
    test = test[_buyers(test)].reset_index(drop=True)
    y = test[label].to_numpy(float)
    rfm = baselines.RfmCells().fit(fit, fit[label].to_numpy(float)).predict(test)
    others = _baselines(data, config, test, w.test, "expected_purchases", rfm)

    def evaluate(candidate_at: Callable[[datetime], Any]) -> Evaluation:
        preds = {"model": candidate_at(w.test).predict(test)["expected_purchases"].to_numpy(), **others}
        metrics = metrics_table("expected_purchases", preds, y, evaluation.count_metrics)
        return Evaluation(metrics, {"deciles": {k: (y, v) for k, v in preds.items()}})

    gate = Gate.of("expected_purchases", w, test)

    def champion_value(champion: Any) -> float:
        predicted = _learned_at(champion, h).predict(test)["expected_purchases"].to_numpy()
        return evaluation.count_metrics(y, predicted)[gate.headline]

    trained = _with_classical_fallback(
        data, gate, model, served, evaluate, champion_value, {"horizon": h},
        {"horizon": s.expected_purchases_horizon_days},
    )
    trained.headlines, trained.studies = ("expected_purchases",), (study,)
    return [trained]


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


# --- CLV ---------------------------------------------------------------------------------------


def train_clv(config: Config, data: ModelingData, on_step: Step) -> list[Trained]:
    s = config.models
    h = data.plan.learned(s.clv_horizon_days)
    w = data.windows[h]
    fit, tune_rows = data.at(w.fit), data.at([w.tune])
    label = f"future_revenue_{h}d"
    model = ClvModel(horizon=h, seed=config.seed, threads=s.threads, max_rounds=s.max_rounds)
    kept = [c for c in fit.columns if c not in model.excluded_features]  # tuned on what the model reads
    model.params, study = _tuned(
        config, fit[kept], np.maximum(fit[label].to_numpy(float), 0), tune_rows[kept],
        np.maximum(tune_rows[label].to_numpy(float), 0), "tweedie",
    )
    model.fit(fit, fit[label].to_numpy(float), tune_rows, tune_rows[label].to_numpy(float))
    served = _carried_value(model, data, s.clv_horizon_days)
    on_step("CLV fitted")
    test = data.at([w.test])
    test = test[_buyers(test)].reset_index(drop=True)
    y = test[label].to_numpy(float)
    rfm = baselines.RfmCells(use_monetary=True).fit(fit, fit[label].to_numpy(float)).predict(test)
    others = _baselines(data, config, test, w.test, "expected_revenue", rfm)

    def evaluate(candidate_at: Callable[[datetime], Any]) -> Evaluation:
        predicted = candidate_at(w.test).predict(test)
        preds = {"model": predicted["expected_revenue"].to_numpy(), **others}
        metrics = metrics_table("expected_revenue", preds, y, evaluation.regression_metrics)
        coverage = evaluation.interval_coverage(y, predicted["expected_revenue_p10"].to_numpy(), predicted["expected_revenue_p90"].to_numpy())
        metrics = pd.concat(
            [metrics, pd.DataFrame([{"indicator": "expected_revenue", "method": "model", "metric": f"p10_p90_{k}", "value": v} for k, v in coverage.items()])],
            ignore_index=True,
        )
        return Evaluation(metrics, {"deciles": {k: (y, v) for k, v in preds.items()}, "gains": {k: (y, v) for k, v in preds.items()}})

    def champion_value(champion: Any) -> float:
        return evaluation.regression_metrics(y, _learned_at(champion, h).predict(test)["expected_revenue"].to_numpy())["normalized_gini"]

    trained = _with_classical_fallback(
        data, Gate.of("clv", w, test), model, served, evaluate, champion_value, {"horizon": h}, {"horizon": s.clv_horizon_days},
    )
    trained.headlines, trained.studies = ("expected_revenue",), (study,)
    return [trained]


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


def train_lookalikes(config: Config, data: ModelingData, on_step: Step) -> list[Trained]:
    """Each default seed's PU model, with the activity baseline (``ActivityLookalikeModel``)
    ranked on the same held-out members as the one to serve in its place if it ranks worse."""
    s = config.models
    percents = s.lookalike_audience_percents
    latest = data.at([data.data_end])
    headline_percent = 5 if 5 in percents else percents[-1]
    metric = f"heldout_seed_recall_at_{headline_percent}pct"
    trained = []
    for name, (seed_ids, excluded) in default_seeds(latest).items():
        if len(seed_ids) < MIN_SEED:
            on_step(f"{name} not trained: its seed has {len(seed_ids)} customers (the log may lack the column "
                    f"that defines it, e.g. category); served profiles leave {name}_score empty")
            continue
        model = LookalikeModel(name=name, excluded_features=excluded, seed=config.seed, threads=s.threads).fit(latest, seed_ids)
        heuristic = ActivityLookalikeModel(name=name).fit(latest, model.seed_ids_, model.heldout_ids_)
        audience, heuristic_audience = model.audience_report(latest, percents), heuristic.audience_report(latest, percents)
        metrics = audience_metrics(name, {"model": audience, ACTIVITY_BASELINE: heuristic_audience})
        candidates = latest[~latest["customer_id"].isin(model.seed_ids_)].reset_index(drop=True)
        population = f"{len(seed_ids):,} seed customers; ranked: everyone else with features at {data.data_end:%Y-%m-%d}"

        def champion_value(champion: Any, split=(model.seed_ids_, model.heldout_ids_)) -> float:
            table = champion.audience_report(latest, (headline_percent,), split=split)
            return float(table["heldout_seed_recall"].iloc[0])

        fallback = Fallback(
            ACTIVITY_BASELINE, ACTIVITY_BASELINE, headline_value(metrics, metric, ACTIVITY_BASELINE),
            Evaluation(audience_metrics(name, {"model": heuristic_audience}), extra={"audience": heuristic_audience}),
            lambda heuristic=heuristic: heuristic,
            f"The {ACTIVITY_BASELINE} (rank by purchase days in 365 days, ties by sessions in 90 days, whatever "
            f"the seed) is served as champion",
        )
        trained.append(Trained(
            Gate(name, metric, True, None, candidates, population), model,
            Evaluation(metrics, extra={"audience": audience}), champion_value, (name,), fallback, own_run=True,
        ))
        on_step(f"{name} fitted")
    return trained


def audience_metrics(name: str, audiences: dict[str, pd.DataFrame]) -> pd.DataFrame:
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


# The trainer of each catalogue model (the lookalikes share one).
TRAINERS: dict[str, Callable[[Config, ModelingData, Step], list[Trained]]] = {
    "purchase_timing": train_purchase_timing,
    "expected_purchases": train_expected_purchases,
    "clv": train_clv,
    "lookalike": train_lookalikes,
}
