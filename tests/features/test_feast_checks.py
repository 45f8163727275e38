"""The ``indicators`` command imports Feast without typeguard's instrumentation, as ``python -O``
would; with the accelerated paths off, or in tests, Feast keeps its checks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# A Feast class decorated with @typechecked, given a name of the wrong type.
PROBE = """
from training.features.feast_checks import skip_feast_type_checks
print(skip_feast_type_checks())
import feast, feast.types
try:
    feast.Field(name=123, dtype=feast.types.Int64)
    print("unchecked")
except Exception as error:
    print(type(error).__name__)
"""


@pytest.mark.parametrize(("accelerated", "expected"), [("true", ["True", "unchecked"]), ("false", ["False", "TypeCheckError"])])
def test_feast_is_imported_unchecked_only_on_the_accelerated_paths(accelerated: str, expected: list[str]) -> None:
    env = {**os.environ, "INDICATORS_FEAST_ACCELERATED": accelerated}
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120, check=True)
    assert run.stdout.split() == expected


def test_every_indicators_command_skips_them_before_it_runs() -> None:
    """The callback runs before any command (here one that only prints its help), and nothing
    the command line imports at its start has imported Feast yet."""
    probe = (
        "import typeguard\nfrom typer.testing import CliRunner\nfrom serving.cli import app\n"
        "from training.features.feast_checks import _unchecked\n"
        "assert CliRunner().invoke(app, ['generate', '--help']).exit_code == 0\n"
        "print(typeguard.typechecked is _unchecked)\n"
    )
    env = {**os.environ, "INDICATORS_FEAST_ACCELERATED": "true"}
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120, check=True)
    assert run.stdout.split() == ["True"]


def test_once_feast_is_imported_nothing_changes() -> None:
    import feast  # noqa: F401 - this process (pytest) imported it with its checks

    from training.features.feast_checks import skip_feast_type_checks

    assert skip_feast_type_checks() is False
