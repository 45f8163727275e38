"""Who may be scored: never a customer who refused profiling; one with no consent record
(a transaction-only import has none) by the configured policy (``ScoringSettings``)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def _unrecorded(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or repr(value) == "<NA>"


def may_score(consents: Iterable[object], unknown_consent: str) -> np.ndarray:
    """Per customer, whether their ``profiling_consent`` value (True, False or missing) allows scoring."""
    unrecorded_scored = unknown_consent == "score"
    return np.array([unrecorded_scored if _unrecorded(v) else bool(v) for v in consents], dtype=bool)


def unrecorded(consents: Iterable[object]) -> np.ndarray:
    """Per customer, whether there is no consent record at all."""
    return np.array([_unrecorded(v) for v in consents], dtype=bool)
