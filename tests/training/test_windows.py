"""Rolling-origin windows: time order, and no label reads past the test cutoff."""

from __future__ import annotations

from dataclasses import replace
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
    plan = plan_horizons(START, END, settings)
    assert not plan.carries and plan.learned_grid == settings.purchase_horizons
    assert plan.min_history_days == settings.min_history_days
    for horizon in model_horizons(settings):
        assert plan.learned(horizon) == plan.learned_on_grid(horizon) == horizon
        assert set(plan_windows(START, END, horizon, settings).all) <= set(plan.cutoffs)


def test_a_year_learns_the_purchase_grid_to_90_days_and_revenue_to_120() -> None:
    settings = ModelSettings()
    end = START + timedelta(days=374)
    plan = plan_horizons(START, end, settings)
    assert plan.carries and plan.longest == 120
    assert plan.learned_grid == (7, 14, 30, 60, 90)
    assert plan.learned_on_grid(180) == plan.learned_on_grid(365) == 90
    assert plan.learned(settings.clv_horizon_days) == 120 and plan.learned(settings.expected_purchases_horizon_days) == 90
    for horizon, windows in plan.windows.items():
        assert windows.test + timedelta(days=horizon) <= end
        assert windows.fit[0] >= START + timedelta(days=plan.min_history_days)


@pytest.mark.parametrize(
    ("days", "longest", "grid_top", "min_history"),
    [
        (182, 30, 30, 56),  # six months: only the relaxed history holds a window
        (240, 60, 60, 56),  # relaxed learns 60 d where 120 days before the first fit learn 30
        (300, 90, 90, 56),
        (374, 120, 90, 56),
        (420, 150, 90, 56),
        (500, 180, 180, 56),
    ],
)
def test_the_plan_learns_the_longest_horizon_the_history_holds(days: int, longest: int, grid_top: int, min_history: int) -> None:
    settings = ModelSettings()
    plan = plan_horizons(START, START + timedelta(days=days), settings)
    assert (plan.longest, plan.learned_grid[-1], plan.min_history_days) == (longest, grid_top, min_history)
    assert plan.learned(settings.clv_horizon_days) == longest and plan.learned_on_grid(365) == grid_top
    with pytest.raises(HistoryTooShort):  # nothing longer fits, whatever the history before the first fit
        plan_windows(START, START + timedelta(days=days), longest + settings.step_days, replace(settings, min_history_days=56))


def test_below_the_minimum_the_error_says_how_much_is_needed() -> None:
    with pytest.raises(HistoryTooShort, match="needs at least 146 days"):
        plan_horizons(START, START + timedelta(days=140), ModelSettings())
