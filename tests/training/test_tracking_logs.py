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
            uri = tracking.log_model(Constant(), "quiet", pd.DataFrame({"x": [1.0, 2.0, 3.0]}))
            logging.getLogger("mlflow.pyfunc").warning("%s: a warning given after the call", UNACTIONABLE[0])
    finally:
        mlflow_logger.removeHandler(caplog.handler)
    assert uri
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert messages == [f"{UNACTIONABLE[0]}: a warning given after the call"], messages
