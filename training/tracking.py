"""MLflow: experiments, model logging, the registry and the promotion gate.

Every model is logged as a pyfunc whose ``predict`` returns the indicators (probabilities,
not labels) for a frame of Feast features, registered under its name with alias
``challenger``. ``champion`` moves only when the challenger is not worse than the current
champion on the same test window; the decision and its numbers are logged either way.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import joblib
import mlflow
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.config import Config, ConfigError, experiment_yaml

PIP_REQUIREMENTS = ["lightgbm", "scikit-learn", "pandas", "numpy"]
CHAMPION, CHALLENGER = "champion", "challenger"
CONFIG_ARTIFACT = "config.yaml"  # the resolved experiment config of the run


def setup_tracking(config: Config) -> MlflowClient:
    """Point MLflow at the configured store (SQLite by default) with telemetry off."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    config.mlflow_store.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(config.mlflow_tracking_uri)
    mlflow.set_registry_uri(config.mlflow_tracking_uri)
    return MlflowClient(config.mlflow_tracking_uri)


def experiment(client: MlflowClient, config: Config, name: str) -> str:
    """The experiment for one model, created with an explicit artifact location."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (config.mlflow_artifacts / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


class IndicatorModel(mlflow.pyfunc.PythonModel):
    """Pyfunc around a fitted model object: features in, indicators out."""

    def load_context(self, context) -> None:
        self.model = joblib.load(context.artifacts["model"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if hasattr(self.model, "score"):  # lookalike
            return pd.DataFrame({"lookalike_score": self.model.score(model_input)}, index=model_input.index)
        return self.model.predict(model_input).reset_index(drop=True)


def log_model(model: Any, name: str, example: pd.DataFrame) -> str:
    """Log ``model`` in the active run with signature and input example; returns its model URI."""
    from mlflow.models import infer_signature

    wrapper = IndicatorModel()
    wrapper.model = model
    output = wrapper.predict(None, example)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.joblib"
        joblib.dump(model, path)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=IndicatorModel(),
            artifacts={"model": str(path)},
            signature=infer_signature(example, output),
            input_example=example.head(3),
            pip_requirements=PIP_REQUIREMENTS,
        )
    return info.model_uri


def load_model(config: Config, name: str, alias: str = CHAMPION) -> Any | None:
    """The fitted model object behind ``name@alias``, or None if there is none."""
    setup_tracking(config)
    try:
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
    except MlflowException:
        return None
    return pyfunc.unwrap_python_model().model


@dataclass(frozen=True)
class GateDecision:
    model: str
    metric: str
    higher_is_better: bool
    challenger_version: str
    challenger_value: float
    champion_version: str | None
    champion_value: float | None
    tolerance: float
    promoted: bool
    reason: str


def register_and_gate(
    client: MlflowClient,
    name: str,
    model_uri: str,
    metric: str,
    challenger_value: float,
    champion_value: float | None,
    higher_is_better: bool,
    tolerance: float,
) -> GateDecision:
    """Register the run's model as ``challenger``; make it ``champion`` unless it is worse."""
    version = mlflow.register_model(model_uri, name).version
    client.set_registered_model_alias(name, CHALLENGER, version)
    current = _alias_version(client, name, CHAMPION)
    if current is None:
        promoted, reason = True, "no champion yet"
    elif champion_value is None or pd.isna(champion_value):
        promoted, reason = True, "current champion could not be evaluated on this window"
    else:
        margin = challenger_value - champion_value if higher_is_better else champion_value - challenger_value
        promoted = margin >= -tolerance
        reason = (
            f"challenger {metric}={challenger_value:.4f} vs champion {champion_value:.4f} "
            f"({'not worse' if promoted else 'worse'} within tolerance {tolerance})"
        )
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    decision = GateDecision(
        model=name,
        metric=metric,
        higher_is_better=higher_is_better,
        challenger_version=str(version),
        challenger_value=float(challenger_value),
        champion_version=current,
        champion_value=None if champion_value is None else float(champion_value),
        tolerance=tolerance,
        promoted=promoted,
        reason=reason,
    )
    mlflow.log_dict(asdict(decision), "promotion_decision.json")
    mlflow.set_tags({"promotion.promoted": str(promoted), "promotion.reason": reason})
    return decision


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def log_table(frame: pd.DataFrame, artifact: str) -> None:
    mlflow.log_text(frame.to_csv(index=False), artifact)


def log_json(payload: dict, artifact: str) -> None:
    mlflow.log_text(json.dumps(payload, indent=2, default=str), artifact)


def log_experiment(config: Config) -> None:
    """Log the run's resolved experiment config, from which ``--from-run`` replays it."""
    mlflow.log_text(experiment_yaml(config), CONFIG_ARTIFACT)


def logged_experiment(config: Config, run_id: str) -> dict[str, Any]:
    """The experiment config logged by ``run_id`` (or by its parent, for a nested run)."""
    client = setup_tracking(config)
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise ConfigError(f"no run {run_id!r} in {config.mlflow_tracking_uri}") from error
    for candidate in (run_id, run.data.tags.get("mlflow.parentRunId")):
        if candidate is None:
            continue
        try:
            return yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{candidate}/{CONFIG_ARTIFACT}"))
        except (MlflowException, OSError):
            continue
    raise ConfigError(f"run {run_id} logged no {CONFIG_ARTIFACT} (it predates experiment configs)")
