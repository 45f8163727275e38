"""Rolling-origin cutoffs: fit on the earlier ones, tune on the next, report on the last.

Cutoffs lie on a grid ``step_days`` apart going back from the end of the data, so they are
snapshot dates and window features are exact at each of them. For a horizon ``H``:

- test  = the latest grid date whose label window (test, test + H] is fully observed;
- tune  = the latest grid date whose label window ends on or before the test cutoff;
- fit   = grid dates before the tune cutoff, label windows ending on or before the tune cutoff
  where the history allows it, otherwise as late as possible (always ending by the test cutoff).

No label used for fitting or tuning reads data after the test cutoff.

``plan_horizons`` decides which horizons the history can learn: a horizon whose fit, tune and
test windows do not fit in the data is learned at the longest one that does and carried to its
length by a buy-till-you-die model (``training.carry``), so one year of history still gives a
365-day CLV, labelled as carried.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from training.config import ModelSettings

# The least history before a fit cutoff, when the data is too short for
# ``ModelSettings.min_history_days`` (``indicators train``, and ``backtest``, which trains alike).
MIN_HISTORY_DAYS = 56
MIN_BUYERS = 20  # below this a fitted model says nothing a reader could trust


class HistoryTooShort(ValueError):
    """The data cannot hold a fit, tune and test window (or has too few buyers to fit on)."""


@dataclass(frozen=True)
class Windows:
    horizon_days: int
    fit: tuple[datetime, ...]
    tune: datetime
    test: datetime

    @property
    def all(self) -> tuple[datetime, ...]:
        return (*self.fit, self.tune, self.test)

    def describe(self) -> str:
        fmt = "%Y-%m-%d"
        return (
            f"horizon {self.horizon_days}d; fit cutoffs {', '.join(c.strftime(fmt) for c in self.fit)}; "
            f"tune {self.tune:{fmt}}; test {self.test:{fmt}}"
        )


def plan_windows(
    data_start: datetime, data_end: datetime, horizon_days: int, settings: ModelSettings
) -> Windows:
    """Fit/tune/test cutoffs for ``horizon_days`` on the grid ending at ``data_end``."""
    step = timedelta(days=settings.step_days)
    steps_per_horizon = math.ceil(horizon_days / settings.step_days)
    earliest = data_start + timedelta(days=settings.min_history_days)
    test = data_end - steps_per_horizon * step
    tune = test - steps_per_horizon * step
    if tune < earliest:
        needed = settings.min_history_days + 2 * steps_per_horizon * settings.step_days
        raise HistoryTooShort(
            f"{(data_end - data_start).days} days of history cannot hold tune and test windows of "
            f"{horizon_days} days after {settings.min_history_days} days of history: `indicators train` needs "
            f"{needed} days for this horizon (shorter horizons: --set models.clv_horizon_days=90 "
            "--set models.purchase_horizons=[7,14,30,60,90])"
        )
    strict_first = tune - steps_per_horizon * step
    fit: list[datetime] = []
    for k in range(settings.fit_cutoffs):
        strict = strict_first - k * step
        candidate = strict if strict >= earliest else tune - (k + 1) * step
        if candidate >= earliest and candidate not in fit:
            fit.append(candidate)
    if not fit:
        raise HistoryTooShort(f"no fit cutoff with {settings.min_history_days} days of history before it")
    return Windows(horizon_days=horizon_days, fit=tuple(sorted(fit)), tune=tune, test=test)


@dataclass(frozen=True)
class HorizonPlan:
    """What the history can learn. A horizon is learned at itself when its windows fit in the
    data, otherwise at ``longest`` (purchase timing: at the longest horizon of its grid within
    ``longest``, as its probabilities are learned on the grid) and carried from there."""

    longest: int  # the longest horizon whose fit, tune and test windows fit in the data
    wanted: int  # the longest horizon a model predicts at
    min_history_days: int  # history before the first fit cutoff (relaxed on short data)
    purchase_grid: tuple[int, ...]
    windows: dict[int, Windows] = field(default_factory=dict)  # per learned horizon

    def learned(self, horizon: int) -> int:
        """The horizon a count or revenue model learns for ``horizon``."""
        return min(horizon, self.longest)

    def learned_on_grid(self, horizon: int) -> int:
        """The horizon of the purchase grid P(purchase within ``horizon``) is carried from."""
        return horizon if horizon <= self.longest else self.learned_grid[-1]

    @property
    def carries(self) -> bool:
        """Some horizon is longer than the history can learn."""
        return self.longest < self.wanted

    @property
    def learned_grid(self) -> tuple[int, ...]:
        return tuple(h for h in self.purchase_grid if h <= self.longest)

    @property
    def cutoffs(self) -> list[datetime]:
        return sorted({c for w in self.windows.values() for c in w.all})


def plan_horizons(data_start: datetime, data_end: datetime, settings: ModelSettings) -> HorizonPlan:
    """The windows of every horizon the models learn (see ``HorizonPlan``).

    Fit cutoffs want ``settings.min_history_days`` before them, or ``MIN_HISTORY_DAYS`` where
    that lets the history learn a longer horizon (short data). Below the least history that
    holds one step-long fit, tune and test window, ``HistoryTooShort`` says how much is needed.
    """
    wanted = max(model_horizons(settings))
    options = []
    for min_history in dict.fromkeys((settings.min_history_days, min(MIN_HISTORY_DAYS, settings.min_history_days))):
        relaxed = replace(settings, min_history_days=min_history)
        longest = _longest_horizon(data_start, data_end, wanted, relaxed)
        if longest is not None and any(h <= longest for h in settings.purchase_horizons):
            options.append((longest, relaxed))
    if not options:
        least = min(MIN_HISTORY_DAYS, settings.min_history_days)
        raise HistoryTooShort(
            f"{(data_end - data_start).days} days of history: `indicators train` needs at least "
            f"{least + 3 * settings.step_days} days (a fit, a tune and a test window of {settings.step_days} days after "
            f"{least} days of history); `indicators backtest` trains the same way, on the history before its cutoff"
        )
    longest, chosen = max(options, key=lambda option: option[0])  # the stricter one on a tie (listed first)
    plan = HorizonPlan(longest=longest, wanted=wanted, min_history_days=chosen.min_history_days, purchase_grid=tuple(settings.purchase_horizons))
    learned = {*plan.learned_grid, plan.learned(settings.expected_purchases_horizon_days), plan.learned(settings.clv_horizon_days)}
    for horizon in learned:
        plan.windows[horizon] = plan_windows(data_start, data_end, horizon, chosen)
    return plan


def _longest_horizon(data_start: datetime, data_end: datetime, wanted: int, settings: ModelSettings) -> int | None:
    """``wanted`` if its windows fit, else the longest whole number of grid steps below it that does."""
    step = settings.step_days
    for horizon in (wanted, *range(step * ((wanted - 1) // step), 0, -step)):
        try:
            plan_windows(data_start, data_end, horizon, settings)
        except HistoryTooShort:
            continue
        return horizon
    return None


def model_horizons(settings: ModelSettings) -> tuple[int, ...]:
    """Every horizon a model predicts at: the purchase grid, churn, expected purchases, CLV."""
    return tuple(sorted({*settings.purchase_horizons, settings.churn_horizon_days,
                         settings.expected_purchases_horizon_days, settings.clv_horizon_days}))
