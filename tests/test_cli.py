"""The command line: help everywhere, generate and features end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from serving.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["generate", "ingest", "features", "train", "backtest"])
def test_every_command_and_option_has_help(command: str) -> None:
    import click
    import typer.main

    group = typer.main.get_command(app)
    cmd = group.get_command(click.Context(group), command)
    assert cmd.help
    for param in cmd.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"{command} --{param.name} has no help"
    assert runner.invoke(app, [command, "--help"]).exit_code == 0


def test_generate_help_shows_the_start_default_as_a_date() -> None:
    result = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "2023-11-01" in result.output and "00:00:00" not in result.output


def test_make_help_shows_the_variables_values() -> None:
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]
    shown = subprocess.run(
        ["make", "-s", "help", "DATA=some/where", "PORT=4321"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert "$(" not in shown
    assert "into some/where/" in shown and "127.0.0.1:4321" in shown and "some/where/mlflow/" in shown


def test_generate_then_features_from_the_command_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", "--customers", "300", "--seed", "1", "--days", "200", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "raw" / "transactions.parquet").exists()
    result = runner.invoke(app, ["features", "--data-dir", str(tmp_path), "--months", "2"])
    assert result.exit_code == 0, result.output
    assert "online store" in result.output
    assert (tmp_path / "features" / "customer_transactions.parquet").exists()


def test_features_without_data_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["features", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no transaction log" in result.output and "Traceback" not in result.output


def test_serve_refuses_a_short_environment_key_before_starting(tmp_path: Path, monkeypatch) -> None:
    """The key grants every scope: too short, the server is not started (it would answer 500s)."""
    monkeypatch.setenv("INDICATORS_API_KEY", "short")
    result = runner.invoke(app, ["serve", "--data-dir", str(tmp_path), "--port", "3999"])
    assert result.exit_code == 2
    assert "INDICATORS_API_KEY must hold at least 32 characters" in result.output
