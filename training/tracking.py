"""MLflow: experiments, model logging, the registry and the promotion gate.

Every model is logged as a pyfunc whose ``predict`` returns the indicators (probabilities,
not labels) for a frame of Feast features, registered under its name with alias
``challenger``. ``champion`` moves only when the challenger is not worse than the current
champion and than its best baseline on the same test window; the decision and its numbers
are logged either way.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
import mlflow
import optuna
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.config import Config, ConfigError, experiment_yaml
from training.evaluation import worse
from training.models import without_customer_ids

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

# A logged model unpickles this project's classes: its requirements are this project's wheel
# (which brings the rest), and the libraries the model runs on, at the versions it was fitted with.
DISTRIBUTION = "customer-indicators"
MODEL_LIBRARIES = ("lightgbm", "scikit-learn", "pandas", "numpy")


def pip_requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in (DISTRIBUTION, *MODEL_LIBRARIES)]
CHAMPION, CHALLENGER = "champion", "challenger"
CONFIG_ARTIFACT = "config.yaml"  # the resolved experiment config of the run


def setup_tracking(config: Config) -> MlflowClient:
    """Point MLflow at the configured store (SQLite by default) with telemetry off."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    config.mlflow_store.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(config.mlflow_tracking_uri)
    mlflow.set_registry_uri(config.mlflow_tracking_uri)
    with warnings.catch_warnings():
        # The client's first SQL store imports MLflow's mappers, which use an option SQLAlchemy
        # deprecates: MLflow's to change, nothing a user of this project can act on.
        warnings.filterwarnings("ignore", "The ``noload`` loader strategy is deprecated", DeprecationWarning)
        return MlflowClient(config.mlflow_tracking_uri)


def experiment(client: MlflowClient, config: Config, name: str) -> str:
    """The experiment for one model, created with an explicit artifact location."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=config.artifact_location(name))


class IndicatorModel(mlflow.pyfunc.PythonModel):
    """Pyfunc around a fitted model object: features in, indicators out."""

    def load_context(self, context) -> None:
        self.model = joblib.load(context.artifacts["model"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.model.predict(model_input).reset_index(drop=True)


def non_personal_example(rows: pd.DataFrame) -> pd.DataFrame:
    """Three rows of each column's own lower quartile, median and upper quartile (the most
    common value for non-numbers): valid model input that is no customer's row, so the
    registry keeps no personal data an erasure would have to find."""
    numbers = rows.select_dtypes("number")
    quartiles = numbers.quantile([0.25, 0.5, 0.75], interpolation="nearest").reset_index(drop=True)
    example = pd.DataFrame(index=range(3))
    for column in rows.columns:
        if column in quartiles:
            example[column] = quartiles[column].astype(rows[column].dtype)
        else:
            common = rows[column].mode(dropna=True)
            example[column] = pd.Series([common.iloc[0] if len(common) else None] * 3, dtype=rows[column].dtype)
    return example


@contextlib.contextmanager
def _without_records(logger: str, *starts: str):
    """Drop the records of ``logger`` whose message starts with one of ``starts``, meanwhile."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(starts)

    target = logging.getLogger(logger)
    target.addFilter(keep)
    try:
        yield
    finally:
        target.removeFilter(keep)


@contextlib.contextmanager
def _registration_quiet():
    """``mlflow.register_model`` prints two lines per version on stderr ("Successfully
    registered model", "Created version"); the gate's own summary says what was registered.
    Anything else written meanwhile is passed on."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        for line in captured.getvalue().splitlines(keepends=True):
            if not line.startswith(("Successfully registered model", "Created version", "Registered model")):
                sys.stderr.write(line)


def _register(model_uri: str, name: str) -> str:
    with _registration_quiet():
        return str(mlflow.register_model(model_uri, name).version)


def log_model(model: Any, name: str, example: pd.DataFrame) -> ModelInfo:
    """Log ``model`` in the active run with a signature inferred from ``example`` and a
    ``non_personal_example`` of it. Logged before the run's metrics, which then name its
    ``model_id``: logged after them, MLflow reads back each metric's history to link it."""
    from mlflow.models import infer_signature

    wrapper = IndicatorModel()
    wrapper.model = model
    output = wrapper.predict(None, example)
    # Two warnings MLflow gives for every model that say nothing to act on: the wrapper is
    # pickled (so is the joblib artifact it loads: both are this project's own code), and a
    # venv made by uv has no pip, so conda.yaml names pip without a version.
    with (
        _without_records("mlflow.pyfunc", "Passing a Python object as `python_model`"),
        _without_records("mlflow.utils.environment", "Failed to resolve installed pip version"),
        tempfile.TemporaryDirectory() as tmp,
    ):
        path = Path(tmp) / "model.joblib"
        joblib.dump(without_customer_ids(model), path)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=IndicatorModel(),
            artifacts={"model": str(path)},
            signature=infer_signature(example, output),
            input_example=non_personal_example(example),
            pip_requirements=pip_requirements(),
        )
    return info


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
    baseline: str | None = None  # the best baseline on the same window, and its value there
    baseline_value: float | None = None
    loses_to_baseline: bool = False
    note: str | None = None  # what a summary must say about the decision (losing to a baseline)
    served_baseline: bool = False  # this version is the baseline itself, served in the model's place


def baseline_replaces(champion_value: float | None, baseline_value: float, higher_is_better: bool) -> bool:
    """Whether a baseline that beat the challenger should also replace the champion: yes unless
    the champion does at least as well on the same window (None: no champion, or one that
    cannot be evaluated there, such as a baseline champion, which every run refits)."""
    if champion_value is None or pd.isna(champion_value):
        return True
    return worse(champion_value, baseline_value, higher_is_better, 0.0)


def register_and_gate(
    client: MlflowClient,
    name: str,
    model_uri: str,
    metric: str,
    challenger_value: float,
    champion_value: float | None,
    higher_is_better: bool,
    tolerance: float,
    baseline: tuple[str, float] | None = None,
    baseline_served: bool = False,
    level_shortfall: str | None = None,
) -> GateDecision:
    """Register the run's model as ``challenger``; make it ``champion`` unless it is worse than
    the champion or than its best ``baseline`` (name, value) on the same window, or its level
    falls short of that baseline's (``level_shortfall``, from ``evaluation.level_shortfall``).

    A challenger that loses to its baseline is never promoted over a champion. With no champion
    yet it is promoted (something must serve) but the decision says loudly that it loses, unless
    ``baseline_served``: then the caller serves the baseline instead (``register_baseline``).
    """
    version = _register(model_uri, name)
    client.set_registered_model_alias(name, CHALLENGER, version)
    current = _alias_version(client, name, CHAMPION)
    baseline_name, baseline_value = baseline if baseline is not None else (None, None)
    worse_headline = baseline_value is not None and not pd.isna(baseline_value) and worse(
        challenger_value, baseline_value, higher_is_better, tolerance
    )
    loses = worse_headline or (baseline_name is not None and level_shortfall is not None)
    loss = ""
    if worse_headline:
        loss = f"loses to baseline {baseline_name} ({challenger_value:.4f} vs {baseline_value:.4f})"
    elif loses:
        loss = f"loses to baseline {baseline_name} on level ({level_shortfall})"
    if loses and baseline_served:
        promoted, reason = False, f"{loss}: not promoted, the baseline is served as champion instead"
    elif loses and current is not None:
        promoted, reason = False, f"{loss}: not promoted, champion v{current} kept"
    elif loses:
        promoted, reason = True, f"{loss}: promoted only because there is no champion yet"
    elif current is None:
        promoted, reason = True, "no champion yet"
    elif champion_value is None or pd.isna(champion_value):
        promoted, reason = True, "current champion could not be evaluated on this window"
    else:
        promoted = not worse(challenger_value, champion_value, higher_is_better, tolerance)
        reason = (
            f"challenger {metric}={challenger_value:.4f} vs champion {champion_value:.4f} "
            f"({'not worse' if promoted else 'worse'} within tolerance {tolerance})"
        )
    note = reason if loses else None
    if baseline_name is not None and not loses:
        reason += f"; beats baseline {baseline_name} ({challenger_value:.4f} vs {baseline_value:.4f})"
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
        baseline=baseline_name,
        baseline_value=None if baseline_value is None else float(baseline_value),
        loses_to_baseline=loses,
        note=note,
    )
    _record(client, decision)
    return decision


def register_baseline(
    client: MlflowClient,
    name: str,
    model_uri: str,
    metric: str,
    value: float,
    baseline: str,
    higher_is_better: bool,
    reason: str,
) -> GateDecision:
    """Register the run's baseline model under ``name`` and make it ``champion`` (the learnt
    challenger lost to it: ``reason`` says by how much). The version is tagged ``model_kind=
    baseline`` and ``baseline=<baseline>``, so nobody takes it for a learnt model; the
    ``challenger`` alias stays on the learnt model."""
    version = _register(model_uri, name)
    current = _alias_version(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, version)
    decision = GateDecision(
        model=name,
        metric=metric,
        higher_is_better=higher_is_better,
        challenger_version=str(version),
        challenger_value=float(value),
        champion_version=current,
        champion_value=None,
        tolerance=0.0,
        promoted=True,
        reason=reason,
        baseline=baseline,
        baseline_value=float(value),
        loses_to_baseline=False,
        note=reason,
        served_baseline=True,
    )
    _record(client, decision)
    return decision


def _record(client: MlflowClient, decision: GateDecision) -> None:
    """The decision as ``promotion_decision.json``, run tags and tags of the registered version."""
    mlflow.log_dict(asdict(decision), "promotion_decision.json")
    tags = {"promotion.promoted": str(decision.promoted), "promotion.reason": decision.reason[:5000]}
    if decision.baseline is not None:
        tags |= {
            "promotion.baseline": decision.baseline,
            "promotion.baseline_value": f"{decision.baseline_value:.6g}",
            "promotion.loses_to_baseline": str(decision.loses_to_baseline),
        }
    if decision.note:
        tags["promotion.gate_note"] = decision.note[:5000]
    if decision.served_baseline:
        tags["model_kind"] = "baseline"
    mlflow.set_tags(tags)
    version_tags = {"model_kind": "baseline" if decision.served_baseline else "model"}
    if decision.served_baseline:
        version_tags["baseline"] = decision.baseline
    if decision.loses_to_baseline:
        version_tags["loses_to_baseline"] = decision.note
    for key, value in version_tags.items():
        client.set_model_version_tag(decision.model, decision.challenger_version, key, value)


def champion_versions(client: MlflowClient, names: list[str]) -> dict[str, str | None]:
    """Each model's current champion version (None: no champion)."""
    return {name: _alias_version(client, name, CHAMPION) for name in names}


def restore_champions(client: MlflowClient, before: dict[str, str | None]) -> None:
    """Put every champion alias back where ``before`` had it (a failed run promotes nothing);
    a model first registered by the failed run loses its champion alias."""
    registered = [m.name for m in client.search_registered_models()]
    for name, version in {**dict.fromkeys(registered), **before}.items():
        if _alias_version(client, name, CHAMPION) == version:
            continue
        if version is None:
            client.delete_registered_model_alias(name, CHAMPION)
        else:
            client.set_registered_model_alias(name, CHAMPION, version)


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def log_study(study: optuna.Study) -> None:
    """Each trial of a tuning study as a nested run (parameters, tune loss, state) and the
    study's totals in the active run."""
    complete = optuna.trial.TrialState.COMPLETE
    for trial in study.trials:
        with mlflow.start_run(run_name=f"trial-{trial.number:03d}", nested=True):
            mlflow.log_params(trial.user_attrs.get("params", trial.params))
            mlflow.set_tag("trial.state", trial.state.name.lower())
            if trial.state == complete:
                mlflow.log_metrics({"tune_loss": trial.value, "best_iteration": trial.user_attrs["best_iteration"]})
    finished = [t for t in study.trials if t.state == complete]
    mlflow.log_metrics(
        {
            "tuning_trials_complete": len(finished),
            "tuning_trials_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
            "tuning_best_loss": study.best_value if finished else float("nan"),
        }
    )
    mlflow.log_params({f"best_{k}": v for k, v in (study.best_trial.user_attrs["params"] if finished else {}).items()})


def log_table(frame: pd.DataFrame, artifact: str) -> None:
    mlflow.log_text(frame.to_csv(index=False), artifact)


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
