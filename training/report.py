"""One HTML page per training run: first whether each indicator beat its baselines and what is
served, then per model the plot the decision rests on, with the detail folded.

The page is self-contained (plots are embedded), so it opens from disk, from MLflow's artifact
view or as a mail attachment alike. It is built from what the model runs logged in MLflow
(metrics, plots, gate decisions), written to ``<mlflow_dir>/reports/`` (``latest.html`` is the
newest) and logged as an artifact of a run in the ``training_reports`` experiment.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd

from training import tracking
from training.config import Config, experiment_yaml

REPORTS_EXPERIMENT = "training_reports"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #1f2933; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.5rem; border-bottom: 2px solid #e4e7eb; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #cbd2d9; padding: 0.3rem 0.6rem; text-align: right; }
th { background: #f5f7fa; }
td:nth-child(-n+2), th:nth-child(-n+2) { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
.plots figure { margin: 0; } .plots img { max-width: 560px; border: 1px solid #e4e7eb; }
.promoted { color: #0b7a2a; font-weight: 600; } .kept { color: #9a6700; font-weight: 600; }
pre { background: #f5f7fa; padding: 1rem; overflow-x: auto; }
"""


def reports_dir(config: Config) -> Path:
    return config.mlflow_store / "reports"


def build_report(config: Config, result, started_at: datetime | None = None) -> Path:
    """Write the page for ``result`` (a ``TrainingResult``), log it to MLflow; return its path."""
    client = tracking.setup_tracking(config)
    stamp = (started_at or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    runs = list(dict.fromkeys(r.run_id for r in result.reports if r.run_id))
    with tempfile.TemporaryDirectory() as tmp:
        sections = [_model_section(client, run_id, [r for r in result.reports if r.run_id == run_id], Path(tmp)) for run_id in runs]
    page = _page(config, result, stamp, sections)
    out_dir = reports_dir(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"train-{stamp}.html"
    path.write_text(page, encoding="utf-8")
    shutil.copyfile(path, out_dir / "latest.html")
    experiment_id = tracking.experiment(client, config, REPORTS_EXPERIMENT)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"report-{stamp}", nested=mlflow.active_run() is not None):
        mlflow.log_artifact(str(path))
        mlflow.set_tags({f"model_run.{r.name}": r.run_id for r in result.reports if r.run_id})
    return path


def latest_report(config: Config) -> Path | None:
    latest = reports_dir(config) / "latest.html"
    return latest if latest.exists() else None


def verdicts(reports: list) -> pd.DataFrame:
    """One row per reported indicator: its headline metric, which way is better, the model's
    value beside its best baseline's, by how much it wins or loses, and what is served."""
    rows = []
    for r in reports:
        row = {"indicator": r.indicator, "model": r.name, "metric": r.metric,
               "better": "higher" if r.higher_is_better else "lower", "model_value": r.model_value}
        if r.baselines:
            name, value = r.best_baseline
            margin = (r.model_value - value) if r.higher_is_better else (value - r.model_value)
            row |= {"best_baseline": name, "baseline_value": value,
                    "verdict": f"{'beats' if margin >= 0 else 'loses'} by {abs(margin):.4f}"}
        else:
            row |= {"best_baseline": "-", "baseline_value": float("nan"), "verdict": "no baseline"}
        row["served"] = _served(r)
        rows.append(row)
    return pd.DataFrame(rows)


def _served(report) -> str:
    if report.served_baseline:
        return f"baseline {report.served_baseline}"
    return f"new champion v{report.version}" if report.promoted else "previous champion kept"


def _page(config: Config, result, stamp: str, sections: list[str]) -> str:
    start, end = result.data_window
    detail = pd.DataFrame(
        [
            {
                "model": r.name,
                "indicator": r.indicator,
                "metric": r.metric,
                "better": "higher" if r.higher_is_better else "lower",
                "model value": r.model_value,
                **{f"{name}": value for name, value in r.baselines.items()},
                "oracle": r.oracle,
                "champion changed": f"yes (v{r.version})" if r.promoted else "no",
                "gate": r.gate_note or "",
                "horizons": r.horizons,
            }
            for r in result.reports
        ]
    )
    timings = pd.DataFrame([{"stage": k, "seconds": round(v, 1)} for k, v in result.timings.items()])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>indicators train {stamp}</title>
<style>{STYLE}</style></head><body>
<h1>Training run {html.escape(stamp)}</h1>
<h2>Did each indicator beat its baselines?</h2>
<p>Data {start:%Y-%m-%d} to {end:%Y-%m-%d}. Each indicator's headline metric on the last backtest
window (time-based split: fit on earlier cutoffs, tune on the next, report on the last), against the
best of its baselines on the same window (BG/NBD and Pareto/NBD + Gamma-Gamma, RFM cells; the
activity heuristic for lookalikes). "better" says which way the metric improves.</p>
{_table(verdicts(result.reports).rename(columns=lambda c: c.replace("_", " ")))}
{"".join(sections)}
<details><summary>Every baseline, the oracle and the gate's notes</summary>
<p>On generated data the oracle predicts from each customer's latent truth: the ceiling. A horizon
longer than the history holds is carried from the learned one ("horizons"); its metrics are the
learned horizon's.</p>
{_table(detail)}
</details>
<details><summary>Stage times</summary>
{_table(timings)}
</details>
<details><summary>Config</summary>
<pre>{html.escape(experiment_yaml(config))}</pre>
</details>
</body></html>
"""


def _model_section(client, run_id: str, reports: list, tmp: Path) -> str:
    name = reports[0].name
    metrics = reports[0].metrics
    pivot = metrics.pivot_table(index=["indicator", "metric"], columns="method", values="value", aggfunc="first")
    pivot = pivot[[c for c in ("model", "btyd", "rfm", "activity_heuristic", "oracle") if c in pivot] + [
        c for c in pivot if c not in ("model", "btyd", "rfm", "activity_heuristic", "oracle")
    ]]
    pivot.columns.name = None
    local = tmp / run_id
    has_plots = bool(client.list_artifacts(run_id, "plots"))  # none with models.plots off
    for artifact in ("plots", "promotion_decision.json") if has_plots else ("promotion_decision.json",):
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(local))
    decision_file = local / "promotion_decision.json"
    decision = json.loads(decision_file.read_text()) if decision_file.exists() else {}
    verdict = (
        f'<p class="{"promoted" if decision.get("promoted") else "kept"}">'
        f'{"Promoted to champion" if decision.get("promoted") else "Champion kept"}: '
        f'{html.escape(str(decision.get("reason", "no decision logged")))}</p>'
    )
    pngs = sorted((local / "plots").rglob("*.png"))
    # The plot the decision rests on first (the headline indicator's), the others folded.
    headline = [p for p in pngs if reports[0].indicator in p.stem][:1] or pngs[:1]
    rest = [p for p in pngs if p not in headline]
    return f"""
<h2 id="{html.escape(name)}">{html.escape(name)}</h2>
{verdict}
<div class="plots">{_figures(headline)}</div>
<details><summary>Every metric against every baseline</summary>
<p>MLflow run <code>{html.escape(run_id)}</code>.</p>
{_table(pivot.round(4).reset_index())}
</details>
<details><summary>{len(rest)} more plots</summary><div class="plots">{_figures(rest)}</div></details>
"""


def _figures(pngs: list[Path]) -> str:
    return "".join(
        f'<figure><img alt="{html.escape(_caption(png))}" src="data:image/png;base64,'
        f'{base64.b64encode(png.read_bytes()).decode()}"><figcaption>{html.escape(_caption(png))}</figcaption></figure>'
        for png in pngs
    )


def _caption(png: Path) -> str:
    """A plot's file name as words: 'p_churn_calibration' -> 'p churn: calibration'."""
    words = png.stem.replace("_", " ")
    return f"{png.parent.name.replace('_', ' ')}: {words}" if png.parent.name != "plots" else words


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-", border=0)
