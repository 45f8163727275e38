"""The classical model, served: what a champion is when the learnt model loses to it.

On a transaction-only log a boosted model can lose to BG/NBD or Pareto/NBD on the test window.
The gate then serves the classical model instead, labelled as the baseline (as the activity
heuristic replaces a losing lookalike). The gate's baselines are PyMC-Marketing's MAP fits;
the served model is the same model fitted by maximum likelihood (``training.btyd``), which
needs no PyMC at serving time, and it is served only if, fitted at the test cutoffs, it beats
the learnt model too. It reads the served features, so the batch job and the endpoint score
it like any champion:

- buyers get the classical predictions: P(purchase within h) and expected purchase days from
  the count model; revenue = expected purchases x Gamma-Gamma spend per purchase day, from the
  customer's net revenue per purchase day (each customer's own mean when spend does not vary);
- customers who never bought, whom the classical models do not describe, get the learnt
  model's predictions (``learned``);
- the reasons are the learnt model's SHAP values, for everyone: for a buyer they explain the
  learnt model's view, which may differ from the served number (``/metadata`` says so);
- the revenue interval is the learnt model's P10 and P90 relative to its mean, applied to the
  classical mean (the classical fit gives a mean only; the relative spread of a longer horizon
  is narrower, so this errs wide); its coverage is measured like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from training.btyd import LABELS, GammaGamma, fit_btyd, fit_gamma_gamma
from training.carry import RFM_FEATURES, BtydOnFeatures, Carry, TimingOnFeatures, customers_of
from training.structural import customer_summary, rfm_of

NAMES = {"btyd": "bg_nbd", "pareto_nbd": "pareto_nbd"}  # the pipeline's baseline -> its model here
REASONS_NOTE = "reasons are the learnt model's, also for buyers"


@dataclass(frozen=True)
class ClassicalFit:
    carry: Carry  # the count model
    spend: GammaGamma | None  # None when spend does not vary


def fit_classical(transactions: pd.DataFrame, cutoff: pd.Timestamp, model: str) -> ClassicalFit:
    """``model`` ("bg_nbd" or "pareto_nbd") and Gamma-Gamma on the purchases up to ``cutoff``.

    Gamma-Gamma is fitted on net revenue per purchase day, the quantity the served features
    give (``revenue_total / purchase_days_total``)."""
    cutoff = pd.Timestamp(cutoff)
    log = transactions[transactions["timestamp"] <= cutoff]
    summary = customer_summary(log, cutoff)
    rfm = rfm_of(summary)
    net = summary["customer_id"].map(log.groupby("customer_id")["amount"].sum()).to_numpy(float)
    days = summary["frequency"].to_numpy(float) + 1
    return ClassicalFit(Carry(fit_btyd(model, rfm)), fit_gamma_gamma(days - 1, np.maximum(net / days, 0.0)))


@dataclass
class ClassicalTiming(TimingOnFeatures):
    """P(purchase within h) of the classical model for buyers; ``learned``'s for the others."""

    baseline: str = ""

    def curve(self, matrix: np.ndarray) -> np.ndarray:
        curve = self.learned.curve(self._inner(matrix)).copy()
        buyer, customers = customers_of(matrix[:, self.rfm_columns_])
        if buyer.any():
            curve[buyer] = np.column_stack([1.0 - self.carry.fit.p_no_purchase(customers, h) for h in self.horizons])
        return np.maximum.accumulate(np.clip(curve, 1e-6, 1 - 1e-6), axis=1)

    def horizons_note(self) -> str:
        return (f"{self.baseline} baseline for buyers at every horizon of {list(self.horizons)} d; customers who never "
                f"bought: {self.learned.horizons_note()}; {REASONS_NOTE}")


@dataclass
class ClassicalCount(BtydOnFeatures):
    """Expected purchase days of the classical model for buyers; ``learned``'s for the others."""

    horizon: int = 90
    baseline: str = ""

    def indicators(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        values = self.learned.indicators(self._inner(matrix))["expected_purchases"].copy()
        buyer, customers = customers_of(matrix[:, self.rfm_columns_])
        values[buyer] = self.carry.fit.expected(customers, self.horizon)
        return {"expected_purchases": values}

    def horizons_note(self) -> str:
        return (f"{self.baseline} baseline for buyers at {self.horizon} d; customers who never bought: "
                f"{self.learned.horizons_note()}; {REASONS_NOTE}")


@dataclass
class ClassicalClv(BtydOnFeatures):
    """Expected revenue of the classical model x Gamma-Gamma for buyers; ``learned``'s for the others."""

    reads: ClassVar[tuple[str, ...]] = (*RFM_FEATURES, "revenue_total")
    spend: GammaGamma | None = None
    horizon: int = 365
    baseline: str = ""

    def indicators(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        learned = self.learned.indicators(self._inner(matrix))
        out = {name: values.copy() for name, values in learned.items()}
        read = matrix[:, self.rfm_columns_]
        buyer, customers = customers_of(read)
        if buyer.any():
            days, net = read[buyer, 0], read[buyer, 3]
            mean_spend = np.maximum(np.nan_to_num(net / days), 0.0)
            spend = mean_spend if self.spend is None else self.spend.expected_spend(days - 1, mean_spend)
            mean = self.carry.fit.expected(customers, self.horizon) * spend
            low, high = _relative_bounds(learned, buyer)
            out["expected_revenue"][buyer] = mean
            out["expected_revenue_p10"][buyer] = np.minimum(low * mean, mean)
            out["expected_revenue_p90"][buyer] = np.maximum(high * mean, mean)
        return out

    def horizons_note(self) -> str:
        return (f"{self.baseline} x Gamma-Gamma baseline for buyers at {self.horizon} d; customers who never bought: "
                f"{self.learned.horizons_note()}; {REASONS_NOTE}")


def _relative_bounds(learned: dict[str, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The learnt model's P10 / mean and P90 / mean on ``rows``; where its mean is about zero
    (the ratio says nothing), the median ratio of the others. P90 / mean is capped at 20."""
    mean = learned["expected_revenue"][rows]
    usable = mean > 1e-6
    ratios = []
    for column, cap in (("expected_revenue_p10", 1.0), ("expected_revenue_p90", 20.0)):
        ratio = np.where(usable, learned[column][rows] / np.where(usable, mean, 1.0), np.nan)
        fill = np.nanmedian(ratio) if usable.any() else (0.0 if cap == 1.0 else 2.0)
        ratios.append(np.clip(np.where(usable, ratio, fill), 0.0, cap))
    return ratios[0], ratios[1]


def is_classical(model: Any) -> bool:
    """True for a classical model served in place of a learnt one."""
    return isinstance(model, ClassicalTiming | ClassicalCount | ClassicalClv)


def classical_model(kind: str, learned: Any, fitted: ClassicalFit, **attributes: Any) -> Any:
    """The classical model of ``kind`` ("purchase_timing", "expected_purchases", "clv") on
    ``learned`` (its fallback and encoder)."""
    label = LABELS[fitted.carry.fit.model]
    if kind == "purchase_timing":
        return ClassicalTiming.wrap(learned, fitted.carry, baseline=label, **attributes)
    if kind == "expected_purchases":
        return ClassicalCount.wrap(learned, fitted.carry, baseline=label, **attributes)
    return ClassicalClv.wrap(learned, fitted.carry, baseline=label, spend=fitted.spend, **attributes)
