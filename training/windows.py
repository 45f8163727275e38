"""Rolling-origin cutoffs: fit on the earlier ones, tune on the next, report on the last.

Cutoffs lie on a grid ``step_days`` apart going back from the end of the data, so they are
snapshot dates and window features are exact at each of them. For a horizon ``H``:

- test  = the latest grid date whose label window (test, test + H] is fully observed;
- tune  = the latest grid date whose label window ends on or before the test cutoff;
- fit   = grid dates before the tune cutoff, label windows ending on or before the tune cutoff
  where the history allows it, otherwise as late as possible (always ending by the test cutoff).

No label used for fitting or tuning reads data after the test cutoff.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from training.config import ModelSettings


class HistoryTooShort(ValueError):
    """The data cannot hold a fit, tune and test window for this horizon."""


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
            "--set models.purchase_horizons=[7,14,30,60,90]); "
            "`indicators backtest` forecasts any horizon from 8 weeks of history"
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


def model_horizons(settings: ModelSettings) -> dict[str, int]:
    """The label horizon each model is backtested on."""
    return {
        "purchase_timing": settings.churn_horizon_days,
        "expected_purchases": settings.expected_purchases_horizon_days,
        "clv": settings.clv_horizon_days,
        "lookalike": settings.churn_horizon_days,
    }


def required_cutoffs(
    data_start: datetime, data_end: datetime, settings: ModelSettings
) -> list[datetime]:
    """Every cutoff any model or horizon needs, plus the end of the data (for scoring)."""
    dates = {data_end}
    for horizon in {*model_horizons(settings).values(), *settings.purchase_horizons}:
        try:
            dates.update(plan_windows(data_start, data_end, horizon, settings).all)
        except HistoryTooShort:
            continue
    return sorted(dates)
