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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("models.trial=3", "unknown key(s) in 'models': ['trial']"),
        ("models.trials=many", "'models.trials' expects int"),
        ("models.trials=2.5", "'models.trials' expects int"),
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
