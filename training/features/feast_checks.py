"""Feast without typeguard's run-time type checks, as ``python -O`` would run it.

Feast decorates its classes with typeguard's ``@typechecked``, which reads and recompiles each
class's module source at import: about 2.6 of the 3.7 s that ``import feast`` takes here. That
cost comes back in every command. typeguard turns the decorator into a no-op under ``python
-O``, as checks meant for development, not production. ``skip_feast_type_checks`` does the
same before Feast is imported; the ``indicators`` command calls it first. Tests keep the checks.
``INDICATORS_FEAST_ACCELERATED=false`` keeps them too, with Feast's own store and calls.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import yaml

from training.config import ConfigError, feast_accelerated, with_settings_file


def skip_feast_type_checks() -> bool:
    """Make typeguard's ``@typechecked`` a no-op for whatever the process imports from now on
    (of this project's dependencies, only Feast uses it), unless Feast is imported already or
    the accelerated paths are off. Returns whether it did."""
    try:
        accelerated = feast_accelerated(with_settings_file(os.environ))
    except (ConfigError, OSError, yaml.YAMLError):  # the command reports it when it reads its config
        return False
    if "feast" in sys.modules or not accelerated:
        return False
    import typeguard

    typeguard.typechecked = _unchecked
    return True


def _unchecked(target: Any = None, **_options: Any) -> Any:
    """``typechecked`` as ``python -O`` has it: the target itself (or, given only options, a
    decorator that returns it)."""
    return target if target is not None else _unchecked
