"""Who may be scored: never a customer who refused profiling; one with no consent record by the
configured policy (``ScoringSettings``).

There is no consent record when the data has no consent column at all: no customers table (a
transaction-only import) or one without ``profiling_consent``. A customer whose value in a
consent column is empty was never asked, and is not scored whatever the policy."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pyarrow.parquet as pq

from training.config import Paths


def _unrecorded(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or repr(value) == "<NA>"


def consent_recorded(paths: Paths) -> bool:
    """Whether the raw customers table has a ``profiling_consent`` column."""
    customers = paths.raw_table("customers")
    return customers.exists() and "profiling_consent" in pq.read_schema(customers).names


def policy_for(paths: Paths, unknown_consent: str) -> str:
    """The policy for an empty consent value: the configured one only where no consent is recorded."""
    return "skip" if consent_recorded(paths) else unknown_consent


def may_score(consents: Iterable[object], unknown_consent: str) -> np.ndarray:
    """Per customer, whether their ``profiling_consent`` value (True, False or missing) allows scoring."""
    unrecorded_scored = unknown_consent == "score"
    return np.array([unrecorded_scored if _unrecorded(v) else bool(v) for v in consents], dtype=bool)


def unrecorded(consents: Iterable[object]) -> np.ndarray:
    """Per customer, whether there is no consent record at all."""
    return np.array([_unrecorded(v) for v in consents], dtype=bool)
