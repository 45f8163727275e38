"""What logging a model prints: not MLflow's two warnings that no user can act on (the pickled
wrapper, pip's version in a uv venv), while every other MLflow warning still shows."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from training import tracking
from training.config import Config

UNACTIONABLE = ("Passing a Python object as `python_model`", "Failed to resolve installed pip version")


class Constant:
    """A fitted model's shape: ``predict`` takes features and returns indicators."""

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"score": np.full(len(features), 0.5)})


def test_logging_a_model_drops_only_the_unactionable_warnings(tmp_path: Path, caplog) -> None:
    config = Config(data_dir=tmp_path, mlflow_dir=tmp_path / "mlflow")
    client = tracking.setup_tracking(config)
    mlflow_logger = logging.getLogger("mlflow")  # MLflow's loggers do not propagate to the root
    mlflow_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="mlflow"), mlflow.start_run(
            experiment_id=tracking.experiment(client, config, "quiet")
        ):
            uri = tracking.log_model(Constant(), "quiet", pd.DataFrame({"x": [1.0, 2.0, 3.0]})).model_uri
            logging.getLogger("mlflow.pyfunc").warning("%s: a warning given after the call", UNACTIONABLE[0])
    finally:
        mlflow_logger.removeHandler(caplog.handler)
    assert uri
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert messages == [f"{UNACTIONABLE[0]}: a warning given after the call"], messages


def test_shap_plots_are_copied_from_a_run_that_has_them_and_drawn_otherwise(tmp_path: Path) -> None:
    """A classical baseline's reasons are the learnt model's: its run copies the learnt run's
    SHAP plots. From a run without any (or for a feature the log lacks, all null) they are drawn."""
    from types import SimpleNamespace

    from training.publish import _shap_plots

    config = Config(data_dir=tmp_path, mlflow_dir=tmp_path / "mlflow")
    client = tracking.setup_tracking(config)
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"recency": rng.uniform(0, 300, 200), "frequency": rng.poisson(3, 200).astype(float),
                      "discount_total": np.full(200, np.nan)})
    contributions = np.c_[rng.normal(size=(200, 2)), np.zeros(200), np.full(200, -1.0)]
    gate = SimpleNamespace(name="purchase_timing", explain_sign=-1.0)
    marker = tmp_path / "shap_beeswarm.png"
    marker.write_bytes(b"the learnt run's plot")
    experiment = tracking.experiment(client, config, "plots")
    with mlflow.start_run(experiment_id=experiment) as learnt:
        mlflow.log_artifact(str(marker), "plots/shap")
    with mlflow.start_run(experiment_id=experiment) as bare:
        pass
    (tmp_path / "copy").mkdir()
    copied = _shap_plots(gate, x, contributions, tmp_path / "copy", learnt.info.run_id)
    assert [p.read_bytes() for p in copied.iterdir()] == [b"the learnt run's plot"]
    (tmp_path / "drawn").mkdir()
    drawn = _shap_plots(gate, x, contributions, tmp_path / "drawn", bare.info.run_id)
    assert sorted(p.name for p in drawn.iterdir()) == ["shap_bar.png", "shap_beeswarm.png", "shap_dependence.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in drawn.iterdir())
