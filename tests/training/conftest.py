"""One end-to-end training run on small generated data, shared by the model tests."""

from __future__ import annotations

from datetime import date

import pytest

TRAINED_CUSTOMERS = 1_500


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory):
    from training.config import Config, ModelSettings
    from training.data.generate import GenerationSpec, generate
    from training.pipeline import run_training

    root = tmp_path_factory.mktemp("trained")
    generate(GenerationSpec(customers=TRAINED_CUSTOMERS, seed=5, start=date(2023, 11, 1), days=1095), root)
    config = Config(
        data_dir=root,
        mlflow_dir=root / "mlflow",
        models=ModelSettings(trials=2, timeout_seconds=60, max_rounds=200),
    )
    result = run_training(config)
    return config, result
