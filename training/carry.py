"""Horizons longer than the history: learned at the longest window the data holds, then carried.

One year of data cannot hold a 365-day label window behind a tune and a test window.
``training.windows.plan_horizons`` has the models learn the longest horizon the history holds;
a buy-till-you-die model fitted on the whole history (BG/NBD or Pareto/NBD, whichever fits it
better) then carries each customer's prediction to the full horizon, from that customer's own
frequency, recency and age (read from the served features, ``RFM_FEATURES``):

- counts and revenue are multiplied by E[X(long)] / E[X(learned)] (Gamma-Gamma's spend per
  purchase is the same in both, so it cancels; the P10 and P90 are scaled alike);
- P(no purchase in long) = P(no purchase in learned) x P0(long) / P0(learned), the model's
  chance of no purchase in (learned, long] given none in (0, learned].

Customers who never bought have no frequency or age; their ratio assumes a constant rate
(long / learned for counts, P0 ** (long / learned) for no purchase). The carried part cannot be
backtested (the history holds no window that long); the model card and ``/metadata`` say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from training.btyd import LABELS, MODELS, BtydFit, Rfm, fit_btyd
from training.dataset import FeatureEncoder
from training.models import PurchaseTimingModel, SharedModel, timing_indicators
from training.structural import customer_summary, rfm_of

RFM_FEATURES = ("purchase_days_total", "days_since_first_purchase", "days_since_last_purchase")


@dataclass(frozen=True)
class Carry:
    """The buy-till-you-die fit that carries learned horizons to longer ones."""

    fit: BtydFit

    @classmethod
    def fitted(cls, transactions: pd.DataFrame, cutoff: pd.Timestamp) -> Carry:
        """BG/NBD and Pareto/NBD fitted on every purchase up to ``cutoff``; the likelier one."""
        rfm = rfm_of(customer_summary(transactions, pd.Timestamp(cutoff)))
        fits = [fit_btyd(model, rfm) for model in MODELS]
        return cls(max(fits, key=lambda fit: float(np.sum(fit.log_likelihood(rfm)))))

    def count_ratio(self, rfm: np.ndarray, learned: int, target: int) -> np.ndarray:
        """E[purchases in target] / E[purchases in learned], per row of ``rfm`` (``rfm_of``)."""
        ratio = np.full(len(rfm), target / learned)
        buyer, customers = customers_of(rfm)
        if buyer.any():
            short, long = self.fit.expected(customers, learned), self.fit.expected(customers, target)
            ratio[buyer] = np.where(short > 1e-12, long / np.maximum(short, 1e-12), 1.0)
        return np.maximum(ratio, 1.0)

    def survival_ratio(self, rfm: np.ndarray, learned: int, target: int, p_none_learned: np.ndarray) -> np.ndarray:
        """P(no purchase in target) / P(no purchase in learned), per row (see the module doc)."""
        ratio = np.power(np.clip(p_none_learned, 1e-12, 1.0), target / learned - 1.0)
        buyer, customers = customers_of(rfm)
        if buyer.any():
            short = self.fit.p_no_purchase(customers, learned)
            long = self.fit.p_no_purchase(customers, target)
            ratio[buyer] = np.where(short > 1e-12, long / np.maximum(short, 1e-12), 0.0)
        return np.clip(ratio, 0.0, 1.0)

    def describe(self) -> str:
        return LABELS[self.fit.model]


def customers_of(rfm: np.ndarray) -> tuple[np.ndarray, Rfm]:
    """Which rows have bought, and their (x, t_x, T) in days from the three ``RFM_FEATURES``."""
    days, age, since_last = rfm[:, 0], rfm[:, 1], rfm[:, 2]
    buyer = np.isfinite(days) & (days >= 1) & np.isfinite(age) & np.isfinite(since_last)
    T = np.maximum(age[buyer], 0.0)
    return buyer, Rfm(x=days[buyer] - 1.0, t_x=np.clip(T - since_last[buyer], 0.0, T), T=T)


@dataclass
class BtydOnFeatures(SharedModel):
    """A learnt model (``learned``) and a buy-till-you-die fit that reads the served features:
    carried horizons here, the classical model served in place of a learnt one
    (``training.classical``).

    Its encoder is the learned model's plus any of ``reads`` it leaves out (the CLV model reads
    no lifetime aggregates), so serving builds one matrix for both."""

    reads: ClassVar[tuple[str, ...]] = RFM_FEATURES

    learned: Any
    carry: Carry
    encoder_: FeatureEncoder
    inner_columns_: np.ndarray | None  # positions of the learned model's columns in ours (None: the same)
    rfm_columns_: np.ndarray  # positions of ``reads`` in our matrix

    @classmethod
    def wrap(cls, learned: Any, carry: Carry, **attributes: Any) -> Any:
        inner = learned.encoder_
        extra = [c for c in cls.reads if c not in inner.numeric_]
        encoder = FeatureEncoder(numeric_=[*inner.numeric_, *extra], categories_=dict(inner.categories_))
        position = {column: k for k, column in enumerate(encoder.columns_)}
        return cls(
            learned=learned, carry=carry, encoder_=encoder,
            inner_columns_=np.asarray([position[c] for c in inner.columns_]) if extra else None,
            rfm_columns_=np.asarray([position[c] for c in cls.reads]),
            **attributes,
        )

    def _inner(self, matrix: np.ndarray) -> np.ndarray:
        return matrix if self.inner_columns_ is None else matrix[:, self.inner_columns_]

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """The learned model's SHAP contributions (the carry adds none), on our columns."""
        inner = self.learned.contributions(self._inner(matrix))
        if self.inner_columns_ is None:
            return inner
        out = np.zeros((len(matrix), len(self.encoder_.columns_) + 1))
        out[:, self.inner_columns_] = inner[:, :-1]
        out[:, -1] = inner[:, -1]
        return out


@dataclass
class TimingOnFeatures(BtydOnFeatures):
    """Purchase timing on the grid ``horizons``: every indicator is read off ``self.curve(matrix)``,
    P(purchase within h) per horizon, which each subclass defines (carried, or classical)."""

    horizons: tuple[int, ...] = ()
    churn_horizon: int = 90

    def purchase_curve(self, features: pd.DataFrame, matrix: np.ndarray | None = None) -> pd.DataFrame:
        curve = self.curve(self.encoder_.matrix(features) if matrix is None else matrix)
        return pd.DataFrame(curve, columns=[f"p_purchase_{h}d" for h in self.horizons], index=features.index)

    def indicators(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        return timing_indicators(self.curve(matrix), self.horizons, self.churn_horizon)


@dataclass
class CarriedTiming(TimingOnFeatures):
    """``PurchaseTimingModel`` learned on the grid the history holds, carried to ``horizons``."""

    def curve(self, matrix: np.ndarray) -> np.ndarray:
        learned: PurchaseTimingModel = self.learned
        short = learned.curve(self._inner(matrix))
        rfm = matrix[:, self.rfm_columns_]
        longest = max(learned.horizons)
        p_none_longest = 1.0 - short[:, learned.horizons.index(longest)]
        columns = []
        for h in self.horizons:
            if h in learned.horizons:
                columns.append(short[:, learned.horizons.index(h)])
            else:
                columns.append(1.0 - p_none_longest * self.carry.survival_ratio(rfm, longest, h, p_none_longest))
        return np.maximum.accumulate(np.clip(np.column_stack(columns), 1e-6, 1 - 1e-6), axis=1)

    def horizons_note(self) -> str:
        learned = self.learned.horizons
        carried = [h for h in self.horizons if h not in learned]
        return (f"P(purchase within h) learned for h in {list(learned)} d, carried to {carried} d by "
                f"{self.carry.describe()}; churn horizon {self.churn_horizon} d")


@dataclass
class CarriedValue(BtydOnFeatures):
    """``CountModel`` or ``ClvModel`` learned at ``learned.horizon``, carried to ``horizon``."""

    horizon: int = 365

    def indicators(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        values = self.learned.indicators(self._inner(matrix))
        ratio = self.carry.count_ratio(matrix[:, self.rfm_columns_], self.learned.horizon, self.horizon)
        return {name: value * ratio for name, value in values.items()}

    def horizons_note(self) -> str:
        return f"learned at {self.learned.horizon} d, carried to {self.horizon} d by {self.carry.describe()}"


def learned_model(model: Any) -> Any:
    """The model that was fitted on labels: itself, or the learnt part of a carried one."""
    while isinstance(model, BtydOnFeatures):
        model = model.learned
    return model
