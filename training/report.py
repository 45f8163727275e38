"""One HTML page per training run: every model against its baselines, with its plots.

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
        sections = [_model_section(run_id, [r for r in result.reports if r.run_id == run_id], Path(tmp)) for run_id in runs]
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


def _page(config: Config, result, stamp: str, sections: list[str]) -> str:
    start, end = result.data_window
    summary = pd.DataFrame(
        [
            {
                "model": r.name,
                "indicator": r.indicator,
                "metric": r.metric,
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
<p>Data {start:%Y-%m-%d} to {end:%Y-%m-%d}. Every metric is on the last backtest window (time-based
split: fit on earlier cutoffs, tune on the next, report on the last), next to the classical
baselines (BG/NBD and Pareto/NBD + Gamma-Gamma, RFM cells) and, on generated data, the oracle.
A horizon longer than the history holds is carried from the learned one ("horizons"); its metrics
are the learned horizon's.</p>
<h2>Summary</h2>
{_table(summary)}
{"".join(sections)}
<h2>Stages</h2>
{_table(timings)}
<h2>Config</h2>
<pre>{html.escape(experiment_yaml(config))}</pre>
</body></html>
"""


def _model_section(run_id: str, reports: list, tmp: Path) -> str:
    name = reports[0].name
    metrics = reports[0].metrics
    pivot = metrics.pivot_table(index=["indicator", "metric"], columns="method", values="value", aggfunc="first")
    pivot = pivot[[c for c in ("model", "btyd", "rfm", "activity_heuristic", "oracle") if c in pivot] + [
        c for c in pivot if c not in ("model", "btyd", "rfm", "activity_heuristic", "oracle")
    ]]
    pivot.columns.name = None
    local = tmp / run_id
    for artifact in ("plots", "promotion_decision.json"):
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(local))
    decision_file = local / "promotion_decision.json"
    decision = json.loads(decision_file.read_text()) if decision_file.exists() else {}
    verdict = (
        f'<p class="{"promoted" if decision.get("promoted") else "kept"}">'
        f'{"Promoted to champion" if decision.get("promoted") else "Champion kept"}: '
        f'{html.escape(str(decision.get("reason", "no decision logged")))}</p>'
    )
    figures = "".join(
        f'<figure><img alt="{html.escape(png.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(png.read_bytes()).decode()}"><figcaption>{html.escape(png.stem)}</figcaption></figure>'
        for png in sorted((local / "plots").rglob("*.png"))
    )
    return f"""
<h2 id="{html.escape(name)}">{html.escape(name)}</h2>
{verdict}
<p>MLflow run <code>{html.escape(run_id)}</code>.</p>
{_table(pivot.round(4).reset_index())}
<div class="plots">{figures}</div>
"""


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-", border=0)
