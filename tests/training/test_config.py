"""The experiment config: YAML file, command-line overrides, logged with every run, replayable."""

from __future__ import annotations

import pytest

from training import tracking
from training.config import (
    DEFAULT_EXPERIMENT,
    Config,
    ConfigError,
    experiment_of,
    load_experiment,
    parse_overrides,
    with_experiment,
)


def test_the_default_file_holds_the_defaults() -> None:
    assert with_experiment(Config(), load_experiment(DEFAULT_EXPERIMENT)) == Config()


def test_overrides_are_typed_and_nested() -> None:
    config = with_experiment(Config(), parse_overrides(["models.trials=3", "seed=7", "models.purchase_horizons=[7, 30, 90]"]))
    assert config.models.trials == 3 and config.seed == 7 and config.models.purchase_horizons == (7, 30, 90)
    assert config.models.timeout_seconds == Config().models.timeout_seconds  # untouched keys keep their value
    assert with_experiment(Config(), parse_overrides(["models.plots=false"])).models.plots is False
    assert with_experiment(Config(), {"models": {"shap_plots": False}}).models.plots is False  # its name until 2026-12-03


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("models.trial=3", "unknown key(s) in 'models': ['trial']"),
        ("models.trials=many", "'models.trials' expects int"),
        ("models.trials=2.5", "'models.trials' expects int"),
        ("models.trials=true", "'models.trials' expects int"),
        ("models.plots=1", "'models.plots' expects bool"),
        ("budget.trials=2", "unknown config section(s) ['budget']"),
        ("models.purchase_horizons=[7, 30]", "must be increasing and hold [7, 30, 90]"),
        ("trials", "is not KEY=VALUE"),
    ],
)
def test_a_bad_override_is_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        with_experiment(Config(), parse_overrides([override]))


def test_every_run_logs_its_config_and_can_be_replayed(trained) -> None:
    config, result = trained
    for report in result.reports:
        assert tracking.logged_experiment(config, report.run_id) == experiment_of(config)  # lookalikes: via the parent
    replayed = with_experiment(Config(data_dir=config.data_dir, mlflow_dir=config.mlflow_dir), tracking.logged_experiment(config, result.reports[0].run_id))
    assert replayed == config
    with pytest.raises(ConfigError, match="no run"):
        tracking.logged_experiment(config, "0" * 32)


def test_a_data_directory_owns_its_mlflow_store_unless_one_is_given(tmp_path) -> None:
    from training.config import DEFAULT_MLFLOW_DIR, config_from_env

    assert config_from_env(environ={}).mlflow_store == DEFAULT_MLFLOW_DIR.resolve()
    other = config_from_env(tmp_path / "shop", environ={})
    assert other.mlflow_store == (tmp_path / "shop" / "mlflow").resolve()
    assert other.mlflow_tracking_uri == f"sqlite:///{(tmp_path / 'shop' / 'mlflow' / 'mlflow.db').resolve()}"
    from_env = config_from_env(environ={"INDICATORS_DATA_DIR": str(tmp_path / "env")})
    assert from_env.paths.data_dir == (tmp_path / "env").resolve()
    assert from_env.mlflow_store == (tmp_path / "env" / "mlflow").resolve()
    explicit = config_from_env(tmp_path / "shop", environ={"INDICATORS_MLFLOW_DIR": str(tmp_path / "models")})
    assert explicit.mlflow_store == (tmp_path / "models").resolve()
    # options win over the environment
    assert config_from_env(tmp_path / "a", tmp_path / "m", environ={"INDICATORS_DATA_DIR": "x", "INDICATORS_MLFLOW_DIR": "y"}).mlflow_store == (tmp_path / "m").resolve()


def test_every_command_honours_the_data_directory_of_the_environment(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from serving.cli import app

    monkeypatch.setenv("INDICATORS_DATA_DIR", str(tmp_path / "shop"))
    monkeypatch.delenv("INDICATORS_MLFLOW_DIR", raising=False)
    result = CliRunner().invoke(app, ["report"])
    assert result.exit_code == 2 and str(tmp_path / "shop" / "mlflow" / "reports") in result.output.replace("\n", "")
    result = CliRunner().invoke(app, ["features"])
    assert result.exit_code == 2 and str(tmp_path / "shop") in result.output.replace("\n", "")


def test_the_consent_policy_is_checked() -> None:
    from training.config import ConfigError, ScoringSettings, config_from_env

    assert config_from_env(environ={}).scoring.unknown_consent == "score"
    assert config_from_env(environ={"INDICATORS_UNKNOWN_CONSENT": "skip"}).scoring.unknown_consent == "skip"
    with pytest.raises(ConfigError, match="unknown_consent"):
        ScoringSettings(unknown_consent="maybe")
