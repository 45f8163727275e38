"""Rolling-origin windows: time order, and no label reads past the test cutoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from training.config import ModelSettings
from training.windows import HistoryTooShort, plan_windows, required_cutoffs

START = datetime(2023, 11, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.parametrize("horizon", [7, 30, 90, 180, 365])
def test_fit_and_tune_labels_end_before_the_test_cutoff(horizon: int) -> None:
    windows = plan_windows(START, END, horizon, ModelSettings())
    assert list(windows.fit) == sorted(windows.fit) and windows.fit[-1] < windows.tune < windows.test
    assert windows.test + timedelta(days=horizon) <= END
    for cutoff in (*windows.fit, windows.tune):
        assert cutoff + timedelta(days=horizon) <= windows.test
    assert windows.fit[0] >= START + timedelta(days=ModelSettings().min_history_days)


def test_short_history_is_refused_with_a_reason() -> None:
    with pytest.raises(HistoryTooShort, match="cannot hold"):
        plan_windows(START, START + timedelta(days=400), 365, ModelSettings())


def test_required_cutoffs_cover_every_window_and_the_end() -> None:
    settings = ModelSettings()
    needed = set(required_cutoffs(START, END, settings))
    assert END in needed
    for horizon in (*settings.purchase_horizons, settings.clv_horizon_days):
        assert set(plan_windows(START, END, horizon, settings).all) <= needed
