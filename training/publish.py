"""Tracking a trainer's result: log its backtest, plots, reasons, model card and the model in
MLflow, register it, gate it against the champion and its best baseline on the same window,
and serve that baseline in its place when the gate says so.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from training import evaluation, tracking
from training.catalogue import LEARNT_METHOD
from training.classical import is_classical
from training.config import Config
from training.evaluation import best_baseline, headline_value, level_shortfall
from training.explain import global_importance, shap_plots
from training.trainers import Evaluation, Fallback, Gate, Trained

# The plot of each kind of curves an ``Evaluation`` carries, logged under plots/.
PLOTS = {"calibration": evaluation.plot_calibration, "gains": evaluation.plot_gains, "deciles": evaluation.plot_deciles}


@dataclass
class ModelReport:
    """One indicator of a published model: its headline beside the baselines and the gate's verdict."""

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
    served_baseline: str | None = None  # the baseline served as champion in the model's place, if any

    @property
    def best_baseline(self) -> tuple[str, float]:
        pick = max if self.higher_is_better else min
        name = pick(self.baselines, key=lambda k: self.baselines[k])
        return name, self.baselines[name]


def publish(config: Config, client, trained: Trained) -> list[ModelReport]:
    """Log, register and gate ``trained`` in the active run (or a nested one of its own)."""
    if not trained.own_run:
        return _publish(config, client, trained)
    with mlflow.start_run(run_name=trained.gate.name, nested=True):
        return _publish(config, client, trained)


def _publish(config: Config, client, trained: Trained) -> list[ModelReport]:
    gate, metrics, fallback = trained.gate, trained.evaluation.metrics, trained.fallback
    if trained.fallback_note:
        mlflow.set_tag("promotion.classical_refit", trained.fallback_note)
    uri = log_run(config, gate, trained.model, trained.evaluation)  # the model first, its metrics naming it
    for study in trained.studies:
        tracking.log_study(study)
    champion_score = _champion_score(config, gate.name, trained)
    value = headline_value(metrics, gate.headline)
    # The baseline replaces the champion too unless the champion does as well as it.
    replaces = fallback is not None and tracking.baseline_replaces(champion_score, fallback.value, gate.higher_is_better)
    best = best_baseline(metrics, gate.headline, gate.higher_is_better)
    decision = tracking.register_and_gate(
        client, gate.name, uri, gate.headline, value, champion_score, gate.higher_is_better,
        tolerance=0.002 if gate.higher_is_better else 0.0, baseline=best, baseline_served=replaces,
        level_shortfall=None if best is None else level_shortfall(metrics, gate.headline, best[0]),
    )
    run_id, note, served_baseline = mlflow.active_run().info.run_id, decision.note, None
    if replaces and decision.loses_to_baseline:
        served = _serve_fallback(config, client, trained, fallback, run_id, decision)
        note += f" ({fallback.label} served, v{served.challenger_version}, {gate.headline} {fallback.value:.4f})"
        if fallback.correction_note:
            note += f"; {fallback.correction_note}"
        served_baseline = fallback.baseline
    elif note is not None and trained.fallback_note:
        note += f"; {trained.fallback_note}"
    reports = []
    for indicator in trained.headlines:
        values = metrics.query(f"indicator == '{indicator}' and metric == '{gate.headline}'").set_index("method")["value"]
        reports.append(ModelReport(
            gate.name, indicator, gate.headline, gate.higher_is_better, values["model"],
            {k: values[k] for k in values.index if k not in ("model", "oracle")}, values.get("oracle"),
            decision.promoted, decision.challenger_version, metrics, run_id, note, trained.model.horizons_note(),
            served_baseline,
        ))
    return reports


def _champion_score(config: Config, name: str, trained: Trained) -> float | None:
    """The current champion's headline on the challenger's test rows; None without one."""
    champion = tracking.load_model(config, name)
    if champion is None:
        return None
    try:
        return trained.champion_value(champion)
    except Exception as error:  # an incompatible old champion must not block a new one
        mlflow.set_tag("promotion.champion_error", repr(error)[:500])
        return None


def _serve_fallback(
    config: Config, client, trained: Trained, fallback: Fallback, beaten_run: str, beaten: tracking.GateDecision,
) -> tracking.GateDecision:
    """Log, register and promote the baseline in a nested run of its own, labelled as the
    baseline (run name, tags, model card, registered version): its metrics are its own on the
    test window, the learnt model's beside them as ``learnt_model``."""
    gate = trained.gate
    learnt_rows = trained.evaluation.metrics.query("method == 'model'").assign(method=LEARNT_METHOD)
    own = fallback.evaluation
    shown = Evaluation(pd.concat([own.metrics, learnt_rows], ignore_index=True), own.plots, own.extra)
    loss = f"{gate.headline} {beaten.challenger_value:.4f} against {fallback.value:.4f}"
    card_note = (
        f"**Baseline, not a learnt model.** {fallback.description}, because the learnt model (run {beaten_run}, "
        f"version {beaten.challenger_version}) does worse on the same test window: {loss}. "
        + (f"{fallback.label}: {fallback.correction_note}. " if fallback.correction_note else "")
        + f"Its rows are `model` below; the learnt model's are `{LEARNT_METHOD}`."
    )
    reason = f"{fallback.label} baseline served as champion: learnt challenger v{beaten.challenger_version} does worse ({loss})"
    with mlflow.start_run(run_name=f"{gate.name} ({fallback.label} baseline)", nested=True):
        mlflow.set_tags({"model_kind": "baseline", "baseline": fallback.label, "replaces_run": beaten_run})
        model = fallback.build()
        # A classical model's reasons are the learnt model's, and so are its SHAP plots.
        uri = log_run(config, gate, model, shown, card_note=card_note, shap_plots_of=beaten_run if is_classical(model) else None)
        return tracking.register_baseline(
            client, gate.name, uri, gate.headline, fallback.value, fallback.label, gate.higher_is_better, reason,
        )


def log_run(
    config: Config, gate: Gate, model: Any, result: Evaluation, card_note: str | None = None, shap_plots_of: str | None = None,
) -> str:
    """Log metrics, plots, SHAP, model card (``card_note`` on top) and model in the active run;
    return the model's URI. ``shap_plots_of``: the run whose SHAP plots are this model's too (a
    baseline's reasons are the learnt model's), copied rather than drawn again."""
    test, metrics = gate.test, result.metrics
    logged = tracking.log_model(model, gate.name, _pyfunc_example(model, test.head(500)))  # the example is not logged as is
    mlflow.log_metrics({  # one call: a metric at a time is a write each
        (f"{r.indicator}.{r.metric}" if r.method == "model" else f"{r.method}.{r.indicator}.{r.metric}"): float(r.value)
        for r in metrics.itertuples() if np.isfinite(r.value)
    }, model_id=logged.model_id)
    tracking.log_table(metrics, "backtest_metrics.csv")
    mlflow.log_params({"horizons": model.horizons_note()})
    if gate.window is not None:
        mlflow.log_params({"window": gate.window.describe()})
    for key, frame in result.extra.items():
        tracking.log_table(frame.head(1000), f"{key}.csv")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        sample = test.sample(min(len(test), 2000), random_state=config.seed) if len(test) else test
        x, contributions = model.explain(sample)
        if config.models.plots:
            for kind, curves in result.plots.items():
                mlflow.log_artifact(str(PLOTS[kind](curves, out / f"{kind}.png", f"{gate.name}: {kind}")), "plots")
            mlflow.log_artifacts(str(_shap_plots(gate, x, contributions, out, shap_plots_of)), "plots/shap")
        importance = global_importance(x, contributions)
        tracking.log_table(importance, "shap_importance.csv")
        card = model_card(gate, metrics, importance, model.horizons_note())
        if card_note:
            title, _, rest = card.partition("\n")
            card = f"{title}\n\n{card_note}\n{rest}"
        mlflow.log_text(card, "model_card.md")
    return logged.model_uri


def _shap_plots(gate: Gate, x: pd.DataFrame, contributions: np.ndarray, out: Path, copied_from: str | None) -> Path:
    """The directory of the SHAP plots: those of run ``copied_from``, or drawn here."""
    if copied_from is not None:
        try:
            return Path(mlflow.artifacts.download_artifacts(run_id=copied_from, artifact_path="plots/shap", dst_path=str(out)))
        except MlflowException:  # that run has none: draw them
            pass
    shap_plots(x, contributions * gate.explain_sign, out / "shap", gate.name)
    return out / "shap"


def _pyfunc_example(model: Any, rows: pd.DataFrame) -> pd.DataFrame:
    """The raw feature columns the model reads (what serving passes in), for signature and example."""
    columns = model.encoder_.columns_
    example = rows[columns].copy()
    for column in model.encoder_.numeric_:
        example[column] = pd.to_numeric(example[column].astype(object).where(example[column].notna(), np.nan), errors="coerce").astype(float)
    for column in model.encoder_.categories_:
        example[column] = example[column].astype(object).where(example[column].notna(), None).astype(str)
    return example.reset_index(drop=True)


def model_card(gate: Gate, metrics: pd.DataFrame, importance: pd.DataFrame, horizons: str) -> str:
    pivot = metrics.pivot_table(index=["indicator", "metric"], columns="method", values="value", aggfunc="first")
    carried = (
        "- **Carried horizons are not backtested**: the history holds no window that long; the metrics below are "
        "the learned horizon's." if "carried" in horizons else None
    )
    lines = [
        f"# Model card: {gate.name}",
        "",
        f"- **Horizons**: {horizons}",
        *([carried] if carried else []),
        f"- **Data window**: {gate.window.describe() if gate.window else 'features at the end of the data'}",
        f"- **Evaluation population**: {gate.population}",
        f"- **Headline metric**: {gate.headline}",
        "- **Split**: rolling origin in time; fit and tune label windows end on or before the test cutoff.",
        "",
        "## Metrics against baselines (test window)",
        "",
        pivot.round(4).to_markdown(),
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
