"""The structural correction of a classical model: what the history before a cutoff
supports adding to BG/NBD or Pareto/NBD.

The classical model served in place of a learnt model that loses to it (``training.classical``)
carries it. Everything that is learned is learned on an inner window (c', c] that ends at the
cutoff c, with c' = c - H_in and H_in = min(horizon, half the history); nothing after the
cutoff is read.

1. **Gate**: each model is fitted at c'. Three candidates predict the purchase days of the
   inner window: the plain model, the model times a level factor (actual / expected over the
   window), and that times a LightGBM correction boosted from the model's log expectation
   (``init_score``), rescaled so it only moves customers relative to each other. Corrections
   are fitted on 70% of the customers (by a keyed hash of the id); on the other 30%, the least
   corrected candidate within one standard error of the lowest Poisson deviance wins.
2. **Level** at the longest inner horizon the history allows: short windows ending at the
   cutoff and long ones disagree on the level (seasonality, on CDNOW), and only a long one
   speaks to a long horizon. The level is fragile where the holdout holds a season the
   calibration period does not, which is why the served model keeps it only if it holds on
   the training run's test window.
3. **Applied** as one factor on each buyer's purchase rate (``Correction``): expected purchases
   x factor, P(no purchase in t) ** factor (exact for a Poisson process with a scaled rate; for
   these mixtures an approximation that slightly understates churn where the factor is far
   from 1). The correction reads served features only (``CORRECTION_READS``), so the endpoint
   computes it as training did.

Too little inner data (fewer than 200 customers, 50 purchases or 30 repeat buyers) means no
correction (``Choice.reason`` says why).
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd

from training.btyd import LABELS, MODELS, BtydFit, Rfm, fit_btyd
from training.evaluation import unit_deviance
from training.models import customer_uniform

INNER_SHARE = 0.7  # customers the corrections are fitted on; the rest score the candidates
LEVEL_BOUNDS = (0.5, 2.0)  # a larger correction means the windows differ too much to trust it
# What the correction reads: served features (``customer_summary`` computes them from the log the
# same way), from which ``shape_features`` derives its inputs. The first three are the RFM triplet.
CORRECTION_READS = (
    "purchase_days_total", "days_since_first_purchase", "days_since_last_purchase", "purchase_days_90d",
    "revenue_total", "gap_mean_days", "gap_std_days",
)
BOOSTER_PARAMS = {
    "objective": "poisson", "learning_rate": 0.02, "num_leaves": 4, "lambda_l2": 20.0, "feature_fraction": 0.8,
    "bagging_fraction": 0.8, "bagging_freq": 1, "max_bin": 63, "verbose": -1, "deterministic": True,
    "force_col_wise": True,
}


@dataclass(frozen=True)
class Choice:
    """What the gate chose, and why."""

    model: str
    level: float
    boosted: bool
    inner_horizon_days: int
    reason: str


def customer_summary(transactions: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """One row per customer seen by ``cutoff``: frequency, recency and T (days, on
    distinct purchase days), mean repeat spend and the shape features of the correction."""
    past = transactions[transactions["timestamp"] <= cutoff]
    bought = past[past["amount"] > 0]  # a purchase, as in the labels and the feature SQL
    daily = (
        bought.assign(day=bought["timestamp"].dt.floor("D"))
        .groupby(["customer_id", "day"], as_index=False)["amount"].sum()
        .sort_values(["customer_id", "day"])
    )
    # A customer seen only through free orders or refunds (of orders before the log starts)
    # counts as a first purchase at their first row, for nothing.
    refund_only = past[~past["customer_id"].isin(bought["customer_id"])]
    if len(refund_only):
        firsts = refund_only.groupby("customer_id", as_index=False)["timestamp"].min()
        daily = pd.concat(
            [daily, firsts.assign(day=firsts["timestamp"].dt.floor("D"), amount=0.0)[["customer_id", "day", "amount"]]],
            ignore_index=True,
        ).sort_values(["customer_id", "day"])
    daily["gap"] = daily.groupby("customer_id")["day"].diff().dt.days
    by_customer = daily.groupby("customer_id")
    first, last, days = by_customer["day"].min(), by_customer["day"].max(), by_customer["day"].size()
    first_spend = by_customer["amount"].first()
    summary = pd.DataFrame(
        {
            "frequency": (days - 1).astype(float),
            "recency": (last - first).dt.days.astype(float),
            "T": (cutoff.floor("D") - first).dt.days.astype(float),
        }
    )
    repeat_spend = (by_customer["amount"].sum() - first_spend) / summary["frequency"].clip(lower=1)
    summary["monetary_value"] = np.where(summary["frequency"] > 0, repeat_spend, 0.0)
    summary["mean_spend_all"] = by_customer["amount"].mean()
    # The correction's inputs, named and defined as the served features are (feature_repo), so
    # a correction learned here reads the same numbers at serving time.
    summary["purchase_days_total"] = days.astype(float)
    summary["days_since_first_purchase"] = summary["T"]
    summary["days_since_last_purchase"] = summary["T"] - summary["recency"]
    summary["purchase_days_90d"] = daily[daily["day"] > cutoff - pd.Timedelta(days=90)].groupby("customer_id").size()
    summary["purchase_days_90d"] = summary["purchase_days_90d"].fillna(0.0)
    summary["revenue_total"] = past.groupby("customer_id")["amount"].sum()
    summary["gap_mean_days"], summary["gap_std_days"] = by_customer["gap"].mean(), by_customer["gap"].std()
    return summary.rename_axis("customer_id").reset_index()


def rfm_of(summary: pd.DataFrame) -> Rfm:
    """(x, t_x, T) of a ``customer_summary``."""
    return Rfm(*(summary[c].to_numpy(float) for c in ("frequency", "recency", "T")))


def purchase_days_in(transactions: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp, customers: pd.Series) -> np.ndarray:
    """Distinct purchase days of each customer in (start, end]."""
    window = transactions[(transactions["timestamp"] > start) & (transactions["timestamp"] <= end) & (transactions["amount"] > 0)]
    counts = window.assign(day=window["timestamp"].dt.floor("D")).groupby("customer_id")["day"].nunique()
    return customers.map(counts).fillna(0).to_numpy(float)


def complexity(candidate: str) -> int:
    """0 for a plain model, one more for each correction (level, boost)."""
    return candidate.count("+")


def simplest_within_one_se(per_customer: dict[str, np.ndarray]) -> str:
    """The least corrected candidate whose mean deviance is within one standard error (of the
    paired difference) of the best one's (Breiman's one-SE rule): a correction must earn its
    place on the scoring customers, or the noise of a small window decides. Ties in complexity
    go to the lower deviance."""
    best = min(per_customer, key=lambda k: per_customer[k].mean())
    within = [
        name for name, values in per_customer.items()
        if (values - per_customer[best]).mean() <= (values - per_customer[best]).std(ddof=1) / np.sqrt(len(values))
    ]
    return min(within, key=lambda k: (complexity(k), per_customer[k].mean()))


def shape_features(served: pd.DataFrame, fit: BtydFit, horizon: int) -> np.ndarray:
    """The correction's inputs from the ``CORRECTION_READS`` columns of buyers; ``log_expected``
    is always in the inner horizon's units, as in training."""
    days = served["purchase_days_total"].to_numpy(float)
    age = np.maximum(served["days_since_first_purchase"].to_numpy(float), 0.0)
    since_last = np.clip(served["days_since_last_purchase"].to_numpy(float), 0.0, age)
    rfm = Rfm(x=days - 1.0, t_x=age - since_last, T=age)
    columns = [
        rfm.x, rfm.t_x, rfm.T, since_last, rfm.x / np.maximum(rfm.T, 1.0), rfm.t_x / np.maximum(rfm.T, 1.0),
        served["gap_mean_days"].to_numpy(float), served["gap_std_days"].to_numpy(float),
        served["revenue_total"].to_numpy(float) / np.maximum(days, 1.0), served["purchase_days_90d"].to_numpy(float),
        fit.p_alive(rfm), np.log(np.maximum(fit.expected(rfm, horizon), 1e-9)),
    ]
    return np.column_stack(columns)


@dataclass(frozen=True)
class Correction:
    """What the inner window taught the classical model, as one factor on each buyer's purchase
    rate: expected purchases x factor, P(no purchase) ** factor (module docstring, 3.)."""

    level: float = 1.0
    booster: lgb.Booster | None = None
    inner_horizon: int = 0
    scale: float = 1.0  # keeps the booster from moving the total over the customers at the cutoff

    def factor(self, served: pd.DataFrame, fit: BtydFit) -> np.ndarray:
        """Per buyer (rows of ``CORRECTION_READS``), the factor on the rate of ``fit``."""
        factor = np.full(len(served), self.level)
        if self.booster is not None and len(served):
            x = shape_features(served, fit, self.inner_horizon)
            factor *= self.scale * np.exp(self.booster.predict(x, raw_score=True, num_iteration=self.booster.best_iteration))
        return factor

    @property
    def identity(self) -> bool:
        """True when it changes nothing."""
        return self.level == 1.0 and self.booster is None

    def describe(self) -> str:
        parts = ([f"level x{self.level:.3f}"] if self.level != 1.0 else []) + (["LightGBM correction"] if self.booster else [])
        return " + ".join(parts) or "no correction"


def _booster(x: np.ndarray, y: np.ndarray, init: np.ndarray, ids: np.ndarray, seed: int, threads: int) -> lgb.Booster:
    """Heavily regularised trees from the model's log expectation; a quarter of the customers stops them."""
    validation = customer_uniform(ids, "structural-stopping", seed) < 0.25
    params = {**BOOSTER_PARAMS, "min_data_in_leaf": max(50, len(y) // 80), "seed": seed, "num_threads": threads}
    train = lgb.Dataset(x[~validation], y[~validation], init_score=init[~validation], free_raw_data=False)
    valid = lgb.Dataset(x[validation], y[validation], init_score=init[validation], free_raw_data=False)
    return lgb.train(params, train, 1500, valid_sets=[valid], callbacks=[lgb.early_stopping(60, verbose=False)])


def _relative(booster: lgb.Booster, x: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The booster's multiplicative correction, rescaled to leave the expected total unchanged."""
    factor = np.exp(booster.predict(x, raw_score=True, num_iteration=booster.best_iteration))
    return factor * _scale(factor, expected)


def _scale(factor: np.ndarray, expected: np.ndarray) -> float:
    return float(expected.sum() / max((factor * expected).sum(), 1e-12))


def _level(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.clip(actual.sum() / max(expected.sum(), 1e-12), *LEVEL_BOUNDS))


@dataclass
class _Inner:
    """The inner window the gate and the correction are learned on."""

    cutoff: pd.Timestamp
    horizon: int
    summary: pd.DataFrame
    actual: np.ndarray
    fits: dict[str, BtydFit]  # each model fitted at the inner cutoff, fitted once


def choose(
    transactions: pd.DataFrame, cutoff: pd.Timestamp, horizon: int, seed: int, threads: int, models: tuple[str, ...] = MODELS,
) -> tuple[Choice, _Inner | None]:
    """The gate: the model (of ``models``), level and correction the inner window supports
    (module docstring)."""
    bought = transactions.loc[(transactions["timestamp"] <= cutoff) & (transactions["amount"] > 0), "timestamp"]
    history = (cutoff.floor("D") - bought.min().floor("D")).days
    inner_horizon = int(min(horizon, history // 2))

    plain = "pareto_nbd" if "pareto_nbd" in models else models[0]

    def fallback(reason: str) -> tuple[Choice, None]:
        return Choice(plain, 1.0, False, inner_horizon, f"{reason}; plain {LABELS[plain]}"), None

    if inner_horizon < 14:
        return fallback(f"{history} days of history: too short for an inner window")
    inner_cutoff = cutoff - pd.Timedelta(days=inner_horizon)
    summary = customer_summary(transactions, inner_cutoff)
    actual = purchase_days_in(transactions, inner_cutoff, cutoff, summary["customer_id"])
    if len(summary) < 200 or actual.sum() < 50 or (summary["frequency"] > 0).sum() < 30:
        return fallback("too little data in the inner window")
    ids = summary["customer_id"].to_numpy()
    fitting = customer_uniform(ids, "structural-gate", seed) < INNER_SHARE  # by id: no row-order draw
    scoring = ~fitting
    rfm = rfm_of(summary)
    per_customer: dict[str, np.ndarray] = {}  # each candidate's deviance on the scoring customers
    described: dict[str, tuple[str, bool]] = {}
    fits: dict[str, BtydFit] = {}
    for model in models:
        try:
            fit = fits[model] = fit_btyd(model, rfm)
        except (ValueError, FloatingPointError):
            continue
        expected = fit.expected(rfm, inner_horizon)
        if not np.all(np.isfinite(expected)):
            continue
        level = _level(actual[fitting], expected[fitting])
        candidates = {model: (expected, False), f"{model}+level": (expected * level, False)}
        x = shape_features(summary, fit, inner_horizon)
        booster = _booster(x[fitting], actual[fitting], np.log(np.maximum(expected[fitting], 1e-9)), ids[fitting], seed, threads)
        # Early stopping keeps at least one tree: whether the correction earns its place is the
        # one-SE rule's call below, on customers it was not fitted on.
        candidates[f"{model}+level+boost"] = (expected * level * _relative(booster, x, expected), True)
        for name, (predicted, boosted) in candidates.items():
            per_customer[name] = unit_deviance(actual[scoring], predicted[scoring])
            described[name] = (model, boosted)
    if not per_customer:
        return fallback("no model could be fitted on the inner window")
    name = simplest_within_one_se(per_customer)
    model, boosted = described[name]
    level = 1.0
    if "+level" in name:  # re-estimated on every customer of the inner window
        level = _level(actual, fits[model].expected(rfm, inner_horizon))
    reason = (
        f"the simplest within one standard error of the lowest Poisson deviance on the inner window "
        f"({inner_cutoff:%Y-%m-%d} + {inner_horizon} days)"
    )
    inner = _Inner(inner_cutoff, inner_horizon, summary, actual, fits)
    return Choice(model, level, boosted, inner_horizon, reason), inner


def fitted(
    transactions: pd.DataFrame, cutoff: pd.Timestamp, horizon: int, seed: int = 42, threads: int = 2, models: tuple[str, ...] = MODELS,
) -> tuple[BtydFit, Correction, Choice, _Inner | None]:
    """The chosen model fitted on every customer up to ``cutoff``, and its correction, learned
    on the inner window (``choose``)."""
    choice, inner = choose(transactions, cutoff, horizon, seed, threads, models)
    summary = customer_summary(transactions, cutoff)
    rfm = rfm_of(summary)
    fit = fit_btyd(choice.model, rfm)
    if not (choice.boosted and inner is not None):
        return fit, Correction(choice.level, None, choice.inner_horizon_days), choice, inner
    inner_fit = inner.fits[choice.model]
    inner_expected = inner_fit.expected(rfm_of(inner.summary), inner.horizon)
    booster = _booster(
        shape_features(inner.summary, inner_fit, inner.horizon), inner.actual, np.log(np.maximum(inner_expected, 1e-9)),
        inner.summary["customer_id"].to_numpy(), seed, threads,
    )
    raw = np.exp(booster.predict(shape_features(summary, fit, inner.horizon), raw_score=True, num_iteration=booster.best_iteration))
    scale = _scale(raw, fit.expected(rfm, horizon))
    return fit, Correction(choice.level, booster, inner.horizon, scale), choice, inner
