"""The classical model, served: what a champion is when the learnt model loses to it.

On a transaction-only log a boosted model can lose to BG/NBD or Pareto/NBD on the test window.
The gate then serves the classical model instead, labelled as the baseline (as the activity
heuristic replaces a losing lookalike). The gate's baselines are PyMC-Marketing's MAP fits;
the served model is the same model fitted by maximum likelihood (``training.btyd``), which
needs no PyMC at serving time, with the structural correction learned on an inner
window before the cutoff (``training.structural``: a level, a LightGBM correction of each
buyer's rate, or none). It is served only if, fitted at the test cutoffs, it beats the learnt
model too, and corrected only if the corrected fit holds against the plain baseline there.
It reads the served features, so the batch job and the endpoint score it like any champion:

- buyers get the classical predictions: P(purchase within h) and expected purchase days from
  the count model (the rate times the correction's factor); revenue = expected purchases x
  Gamma-Gamma spend per purchase day, from the customer's net revenue per purchase day (each
  customer's own mean when spend does not vary);
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

from training.btyd import GammaGamma, Rfm, fit_btyd, fit_gamma_gamma
from training.carry import BtydOnFeatures, Carry, TimingOnFeatures, customers_of
from training.structural import CORRECTION_READS, Correction, customer_summary, rfm_of
from training.structural import fitted as structural_fit

NAMES = {"btyd": "bg_nbd", "pareto_nbd": "pareto_nbd"}  # the pipeline's baseline -> its model here
REASONS_NOTE = "reasons are the learnt model's, also for buyers"


@dataclass(frozen=True)
class ClassicalFit:
    carry: Carry  # the count model
    spend: GammaGamma | None  # None when spend does not vary
    correction: Correction = Correction()  # what the inner window before the cutoff supports

    @property
    def label(self) -> str:
        """The model as summaries name it: "Pareto/NBD", or "Pareto/NBD + level x1.133 + ..."."""
        corrected = "" if self.correction.identity else f" + {self.correction.describe()}"
        return self.carry.describe() + corrected


def fit_classical(
    transactions: pd.DataFrame, cutoff: pd.Timestamp, model: str, horizon: int, seed: int = 42, threads: int = 2,
    corrected: bool = True,
) -> ClassicalFit:
    """``model`` ("bg_nbd" or "pareto_nbd") and Gamma-Gamma on the purchases up to ``cutoff``,
    with the structural correction learned for ``horizon`` on an inner window
    before the cutoff (``training.structural``; none if not ``corrected``).

    Gamma-Gamma is fitted on net revenue per purchase day, the quantity the served features
    give (``revenue_total / purchase_days_total``)."""
    cutoff = pd.Timestamp(cutoff)
    log = transactions[transactions["timestamp"] <= cutoff]
    summary = customer_summary(log, cutoff)
    if corrected:
        fit, correction, _, _ = structural_fit(log, cutoff, horizon, seed, threads, (model,))
    else:
        fit, correction = fit_btyd(model, rfm_of(summary)), Correction()
    net, days = summary["revenue_total"].to_numpy(float), summary["purchase_days_total"].to_numpy(float)
    return ClassicalFit(Carry(fit), fit_gamma_gamma(days - 1, np.maximum(net / days, 0.0)), correction)


def _buyers(model: BtydOnFeatures, matrix: np.ndarray) -> tuple[np.ndarray, Rfm, np.ndarray, np.ndarray]:
    """Which rows have bought, their (x, t_x, T), the correction's factor on their rate, and
    the served features the classical model reads (``CORRECTION_READS``) of every row."""
    read = matrix[:, model.rfm_columns_]
    buyer, customers = customers_of(read)
    factor = model.correction.factor(pd.DataFrame(read[buyer], columns=list(CORRECTION_READS)), model.carry.fit)
    return buyer, customers, factor, read


@dataclass
class ClassicalTiming(TimingOnFeatures):
    """P(purchase within h) of the classical model for buyers; ``learned``'s for the others."""

    reads: ClassVar[tuple[str, ...]] = CORRECTION_READS
    baseline: str = ""
    correction: Correction = Correction()

    def curve(self, matrix: np.ndarray) -> np.ndarray:
        curve = self.learned.curve(self._inner(matrix)).copy()
        buyer, customers, factor, _ = _buyers(self, matrix)
        if buyer.any():
            curve[buyer] = np.column_stack([1.0 - self.carry.fit.p_no_purchase(customers, h) ** factor for h in self.horizons])
        return np.maximum.accumulate(np.clip(curve, 1e-6, 1 - 1e-6), axis=1)

    def horizons_note(self) -> str:
        return (f"{self.baseline} baseline for buyers at every horizon of {list(self.horizons)} d; customers who never "
                f"bought: {self.learned.horizons_note()}; {REASONS_NOTE}")


@dataclass
class ClassicalCount(BtydOnFeatures):
    """Expected purchase days of the classical model for buyers; ``learned``'s for the others."""

    reads: ClassVar[tuple[str, ...]] = CORRECTION_READS
    horizon: int = 90
    baseline: str = ""
    correction: Correction = Correction()

    def indicators(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        values = self.learned.indicators(self._inner(matrix))["expected_purchases"].copy()
        buyer, customers, factor, _ = _buyers(self, matrix)
        values[buyer] = self.carry.fit.expected(customers, self.horizon) * factor
        return {"expected_purchases": values}

    def horizons_note(self) -> str:
        return (f"{self.baseline} baseline for buyers at {self.horizon} d; customers who never bought: "
                f"{self.learned.horizons_note()}; {REASONS_NOTE}")


@dataclass
class ClassicalClv(BtydOnFeatures):
    """Expected revenue of the classical model x Gamma-Gamma for buyers; ``learned``'s for the others."""

    reads: ClassVar[tuple[str, ...]] = CORRECTION_READS
    spend: GammaGamma | None = None
    horizon: int = 365
    baseline: str = ""
    correction: Correction = Correction()

    def indicators(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        learned = self.learned.indicators(self._inner(matrix))
        out = {name: values.copy() for name, values in learned.items()}
        buyer, customers, factor, read = _buyers(self, matrix)
        if buyer.any():
            days, net = read[buyer, 0], read[buyer, CORRECTION_READS.index("revenue_total")]
            mean_spend = np.maximum(np.nan_to_num(net / days), 0.0)
            spend = mean_spend if self.spend is None else self.spend.expected_spend(days - 1, mean_spend)
            mean = self.carry.fit.expected(customers, self.horizon) * factor * spend
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
    common = {"baseline": fitted.label, "correction": fitted.correction, **attributes}
    if kind == "purchase_timing":
        return ClassicalTiming.wrap(learned, fitted.carry, **common)
    if kind == "expected_purchases":
        return ClassicalCount.wrap(learned, fitted.carry, **common)
    return ClassicalClv.wrap(learned, fitted.carry, spend=fitted.spend, **common)
