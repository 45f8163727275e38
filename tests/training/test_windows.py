"""Rolling-origin windows: time order, and no label reads past the test cutoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from training.config import ModelSettings
from training.windows import HistoryTooShort, model_horizons, plan_horizons, plan_windows

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


def test_a_long_history_learns_every_horizon() -> None:
    settings = ModelSettings()
    plan = plan_horizons(START, END, model_horizons(settings), settings)
    assert not any(plan.carried(h) for h in model_horizons(settings))
    assert plan.learned_grid == settings.purchase_horizons
    for horizon in model_horizons(settings):
        assert set(plan_windows(START, END, horizon, settings).all) <= set(plan.cutoffs)


def test_a_year_learns_90_days_and_carries_the_rest() -> None:
    settings = ModelSettings()
    plan = plan_horizons(START, START + timedelta(days=374), model_horizons(settings), settings)
    assert plan.learned_grid == (7, 14, 30, 60, 90)
    assert plan.learned(180) == plan.learned(365) == 90  # on the purchase grid
    assert plan.learned(settings.clv_horizon_days) == plan.longest == 90
    assert plan.min_history_days == settings.min_history_days
    assert "carried from 90 d" in plan.describe(365) and plan.describe(90) == "90 d, learned"
    for horizon in plan.windows:
        assert plan.windows[horizon].test + timedelta(days=horizon) <= START + timedelta(days=374)


def test_six_months_relaxes_the_history_before_the_first_fit() -> None:
    settings = ModelSettings()
    plan = plan_horizons(START, START + timedelta(days=182), model_horizons(settings), settings)
    assert plan.min_history_days < settings.min_history_days
    assert plan.learned_grid == (7, 14, 30) and plan.learned(settings.churn_horizon_days) == 30


def test_below_the_minimum_the_error_says_how_much_is_needed() -> None:
    with pytest.raises(HistoryTooShort, match="needs at least 146 days"):
        plan_horizons(START, START + timedelta(days=140), model_horizons(ModelSettings()), ModelSettings())
