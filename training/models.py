"""The indicator models. Each takes Feast features (one row per customer and cutoff).

- ``PurchaseTimingModel``: P(purchase within h) on a grid of horizons, calibrated out of time
  and monotone in h; ``p_churn`` = 1 - P(purchase within the churn horizon) by construction;
  ``next_purchase_days`` (median) with a P10-P90 interval read off the same curve.
- ``CountModel``: expected purchase days in a horizon (Poisson boosting).
- ``ClvModel``: expected net revenue (Tweedie boosting: a point mass at zero plus a skewed
  tail) with a P10-P90 interval from conformalized quantile regression.
- ``LookalikeModel``: positive-unlabelled learning from a seed list (Elkan & Noto).

Fitted attributes end in ``_``; nothing happens in ``__init__``. Prediction methods take
Feast features, or also ``encoder_.matrix(features)`` so that serving encodes once per
request for every model that shares an encoder.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from training.boosting import contributions, fit_booster, predict
from training.dataset import FeatureEncoder

TAIL_CAP_DAYS = 3650.0
# Sanity the models must respect, all else equal: a more recent purchase never lowers the
# chance of buying again; more past spend or purchases never lower expected value.
RECENCY_LOWERS_PURCHASE = {"days_since_last_purchase": -1, "recency_to_usual_gap": -1}
MORE_HISTORY_RAISES_VALUE = {
    **{f"revenue_{w}": 1 for w in ("total", "30d", "90d", "180d", "365d")},
    **{f"purchase_days_{w}": 1 for w in ("total", "30d", "90d", "180d", "365d")},
    "avg_order_value": 1,
    **RECENCY_LOWERS_PURCHASE,
}
# Lifetime aggregates grow with the age of the business: at the test cutoff they exceed anything
# the 365-day CLV training windows (a year or more earlier) can hold, and trees extrapolate them
# flat. Left out of CLV, the level of the predictions is closer to the truth at the same ranking
# quality (100k backtest).
LIFETIME_FEATURES = (
    "days_since_first_purchase", "days_since_signup", "purchase_days_total", "revenue_total", "orders_total",
    "email_open_rate_total",
)


class IndicatorModel(Protocol):
    """What every served model is (learnt, carried or classical): an encoder of Feast features,
    then indicators and SHAP contributions from the encoded matrix. ``fit`` differs by model."""

    encoder_: FeatureEncoder | None

    def indicators(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        """Each of the model's catalogue indicators (``training.catalogue``) as an array."""
        ...

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """SHAP contributions in the model's output space; the last column is the expected value."""
        ...

    def horizons_note(self) -> str:
        """Which horizon was learnt, and how longer ones are carried."""
        ...


class SharedModel:
    """The parts every model writes the same way, from ``encoder_``, ``indicators`` and
    ``contributions``."""

    encoder_: FeatureEncoder | None

    def predict(self, features: pd.DataFrame, matrix: np.ndarray | None = None) -> pd.DataFrame:
        """The indicators as a frame, one row per row of ``features``."""
        return pd.DataFrame(self.indicators(self.encoder_.matrix(features) if matrix is None else matrix), index=features.index)

    def explain(self, features: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        """The encoded features (for names and values) and their SHAP contributions."""
        matrix = self.encoder_.matrix(features)
        return self.encoder_.frame_of(matrix, features.index), self.contributions(matrix)


@dataclass
class PurchaseTimingModel(SharedModel):
    horizons: tuple[int, ...]
    churn_horizon: int
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    threads: int = 2
    max_rounds: int = 600
    encoder_: FeatureEncoder | None = None
    boosters_: dict[int, lgb.Booster] = field(default_factory=dict)
    calibrators_: dict[int, IsotonicRegression] = field(default_factory=dict)

    def fit(self, sets: dict[int, tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]]) -> PurchaseTimingModel:
        """``sets[h]`` = (fit features, fit labels, tune features, tune labels) for horizon h.

        Boosters stop early on the tune window; isotonic calibration is fitted on it too, so
        every probability is calibrated on a later time window than it was trained on.
        """
        first = sets[self.churn_horizon][0]
        self.encoder_ = FeatureEncoder().fit(first)
        for h in self.horizons:
            x_fit, y_fit, x_tune, y_tune = sets[h]
            booster = fit_booster(
                self.encoder_.transform(x_fit), y_fit, "binary",
                x_val=self.encoder_.transform(x_tune), y_val=y_tune,
                overrides=self.params, seed=self.seed, threads=self.threads, max_rounds=self.max_rounds,
                monotone=RECENCY_LOWERS_PURCHASE,
            )
            raw = predict(booster, self.encoder_.transform(x_tune))
            self.boosters_[h] = booster
            self.calibrators_[h] = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y_tune)
        return self

    def purchase_curve(self, features: pd.DataFrame, matrix: np.ndarray | None = None) -> pd.DataFrame:
        """Calibrated P(purchase within h) per horizon, made non-decreasing in h."""
        curve = self.curve(self.encoder_.matrix(features) if matrix is None else matrix)
        return pd.DataFrame(curve, columns=[f"p_purchase_{h}d" for h in self.horizons], index=features.index)

    def indicators(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        """``predict``'s columns as arrays, for an encoded matrix (serving skips the frames)."""
        return timing_indicators(self.curve(matrix), self.horizons, self.churn_horizon)

    def curve(self, x: np.ndarray) -> np.ndarray:
        """Calibrated P(purchase within h), one column per horizon, non-decreasing in h."""
        # The fitted isotonic step function, read directly (what IsotonicRegression.predict does
        # with out_of_bounds="clip", without its input checks: a tenth of a millisecond per call).
        curve = np.column_stack(
            [
                np.interp(predict(self.boosters_[h], x), self.calibrators_[h].X_thresholds_, self.calibrators_[h].y_thresholds_)
                for h in self.horizons
            ]
        )
        return np.maximum.accumulate(np.clip(curve, 1e-6, 1 - 1e-6), axis=1)

    def horizons_note(self) -> str:
        """Which horizons were learned (carried models say how they extend them)."""
        return f"P(purchase within h) learned for h in {list(self.horizons)} d; churn horizon {self.churn_horizon} d"

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """SHAP contributions to the log-odds of buying within the churn horizon."""
        return contributions(self.boosters_[self.churn_horizon], matrix)


def timing_indicators(curve: np.ndarray, horizons: tuple[int, ...], churn_horizon: int) -> dict[str, np.ndarray]:
    """Every purchase-timing indicator from P(purchase within h) on the grid ``horizons``."""
    grid = np.asarray(horizons, dtype=float)
    columns = {f"p_purchase_{h}d": curve[:, k] for k, h in enumerate(horizons)}
    columns["p_churn"] = 1.0 - curve[:, horizons.index(churn_horizon)]
    columns["next_purchase_days"] = time_at_probability(curve, grid, 0.5)
    columns["next_purchase_days_p10"] = time_at_probability(curve, grid, 0.1)
    columns["next_purchase_days_p90"] = time_at_probability(curve, grid, 0.9)
    return columns


def time_at_probability(curve: np.ndarray, grid: np.ndarray, level: float) -> np.ndarray:
    """Days until P(purchase by t) reaches ``level``, interpolating the cumulative curve.

    Between grid points the survival function is interpolated log-linearly (constant hazard);
    before the first point it starts at S(0) = 1; past the last point the last segment's hazard
    continues, capped at ``TAIL_CAP_DAYS``.
    """
    survival = np.clip(1.0 - curve, 1e-9, 1.0)
    target = np.log(1.0 - level)
    log_s = np.log(survival)
    times = np.concatenate([[0.0], grid])
    log_s = np.concatenate([np.zeros((len(curve), 1)), log_s], axis=1)
    result = np.full(len(curve), TAIL_CAP_DAYS)
    done = np.zeros(len(curve), dtype=bool)
    for k in range(1, len(times)):
        hit = ~done & (log_s[:, k] <= target)
        span = log_s[:, k - 1] - log_s[:, k]
        frac = np.where(span > 0, (log_s[:, k - 1] - target) / np.where(span > 0, span, 1), 1.0)
        result[hit] = times[k - 1] + frac[hit] * (times[k] - times[k - 1])
        done |= hit
    tail_hazard = (log_s[:, -2] - log_s[:, -1]) / (times[-1] - times[-2])
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = np.where(tail_hazard > 0, times[-1] + (log_s[:, -1] - target) / tail_hazard, np.inf)
    result[~done] = np.minimum(tail[~done], TAIL_CAP_DAYS)
    return result


def _total_ratio(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Actual total / predicted total on the tune window: corrects the level, keeps the order.

    Kept within [0.5, 2]: a larger correction means the windows differ too much to trust it.
    """
    return float(np.clip(np.sum(actual) / max(np.sum(predicted), 1e-9), 0.5, 2.0))


@dataclass
class CountModel(SharedModel):
    horizon: int
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    threads: int = 2
    max_rounds: int = 600
    encoder_: FeatureEncoder | None = None
    booster_: lgb.Booster | None = None
    scale_: float = 1.0

    def fit(self, x_fit: pd.DataFrame, y_fit: np.ndarray, x_tune: pd.DataFrame, y_tune: np.ndarray) -> CountModel:
        self.encoder_ = FeatureEncoder().fit(x_fit)
        self.booster_ = fit_booster(
            self.encoder_.transform(x_fit), y_fit, "poisson",
            x_val=self.encoder_.transform(x_tune), y_val=y_tune,
            overrides=self.params, seed=self.seed, threads=self.threads, max_rounds=self.max_rounds,
            monotone=MORE_HISTORY_RAISES_VALUE,
        )
        self.scale_ = _total_ratio(y_tune, predict(self.booster_, self.encoder_.transform(x_tune)))
        return self

    def indicators(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        return {"expected_purchases": predict(self.booster_, matrix) * self.scale_}

    def horizons_note(self) -> str:
        return f"learned at {self.horizon} d"

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        return contributions(self.booster_, matrix)


@dataclass
class ClvModel(SharedModel):
    horizon: int
    coverage: float = 0.8
    excluded_features: tuple[str, ...] = LIFETIME_FEATURES
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    threads: int = 2
    max_rounds: int = 600
    encoder_: FeatureEncoder | None = None
    mean_: lgb.Booster | None = None
    low_: lgb.Booster | None = None
    high_: lgb.Booster | None = None
    # Added to the P90 booster, for customers who never bought / who bought (conformal, below).
    high_shift_: tuple[float, float] = (0.0, 0.0)
    scale_: float = 1.0

    def fit(self, x_fit: pd.DataFrame, y_fit: np.ndarray, x_tune: pd.DataFrame, y_tune: np.ndarray) -> ClvModel:
        """Mean and quantiles on the fit window; the interval is conformalized on the tune window,
        separately for customers who have bought and those who have not (Mondrian conformal
        prediction: the coverage holds in each group, not only on average over both)."""
        self.encoder_ = FeatureEncoder().fit(x_fit.drop(columns=[c for c in self.excluded_features if c in x_fit]))
        xf, xt = self.encoder_.transform(x_fit), self.encoder_.transform(x_tune)
        y_fit_pos, y_tune_pos = np.maximum(y_fit, 0.0), np.maximum(y_tune, 0.0)
        common = {"seed": self.seed, "threads": self.threads, "max_rounds": self.max_rounds}
        self.mean_ = fit_booster(
            xf, y_fit_pos, "tweedie", x_val=xt, y_val=y_tune_pos, overrides=self.params,
            monotone=MORE_HISTORY_RAISES_VALUE, **common,
        )
        # LightGBM's quantile objective takes no monotone constraints: the interval is free,
        # and kept around the (monotone) mean in ``_bounds`` and ``indicators``.
        quantile_params = {k: v for k, v in self.params.items() if k in ("num_leaves", "max_depth", "min_data_in_leaf", "learning_rate")}
        alpha = (1 - self.coverage) / 2
        self.low_ = fit_booster(
            xf, y_fit, "quantile_low", x_val=xt, y_val=y_tune, overrides={**quantile_params, "alpha": alpha}, **common
        )
        self.high_ = fit_booster(
            xf, y_fit, "quantile_high", x_val=xt, y_val=y_tune, overrides={**quantile_params, "alpha": 1 - alpha}, **common
        )
        self.scale_ = _total_ratio(y_tune, predict(self.mean_, xt))
        tune = self.encoder_.matrix(x_tune)
        mean, low, upper = self._bounds(tune)
        bought = self._bought(tune)
        self.high_shift_ = tuple(
            upper_shift(y_tune[group], low[group], mean[group], upper[group], self.coverage) for group in (~bought, bought)
        )
        return self

    def indicators(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        mean, low, upper = self._bounds(matrix)
        shift = np.where(self._bought(matrix), self.high_shift_[1], self.high_shift_[0])
        high = np.maximum(upper + shift, mean)
        return {"expected_revenue": mean, "expected_revenue_p10": low, "expected_revenue_p90": high}

    def _bounds(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean, lower bound (P10 booster within [0, mean]) and the P90 booster's raw value."""
        mean = predict(self.mean_, matrix) * self.scale_
        low = np.minimum(np.maximum(predict(self.low_, matrix), 0.0), mean)
        return mean, low, predict(self.high_, matrix)

    def horizons_note(self) -> str:
        return f"learned at {self.horizon} d"

    def _bought(self, matrix: np.ndarray) -> np.ndarray:
        return ~np.isnan(matrix[:, self.encoder_.numeric_.index("days_since_last_purchase")])

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        return contributions(self.mean_, matrix)


def upper_shift(y: np.ndarray, low: np.ndarray, mean: np.ndarray, upper: np.ndarray, coverage: float) -> float:
    """The shift of the upper bound that makes ``[low, max(upper + shift, mean)]`` hold
    ``coverage`` of ``y``, with split-conformal's finite-sample guarantee (Romano et al., 2019).

    The score is one-sided: a customer below ``low`` is never covered, one at or below the mean
    always is, the rest need ``shift >= y - upper``. The usual two-sided score cannot shrink an
    interval when most outcomes are exactly zero (every zero spender scores ~0), so intervals
    of P10 and P90 boosters covered far more buyers than the 80% asked for.
    """
    if len(y) == 0:
        return 0.0
    scores = np.where(y < low, np.inf, np.where(y <= mean, -np.inf, y - upper))
    level = min(1.0, np.ceil((len(scores) + 1) * coverage) / len(scores))
    shift = float(np.quantile(scores, level, method="higher"))
    if shift == np.inf:  # too many fall below the lower bound: cover everyone above it
        finite = scores[np.isfinite(scores)]
        shift = float(finite.max()) if len(finite) else 0.0
    return shift


@dataclass
class LookalikeModel(SharedModel):
    """Who looks like the seed? Positive-unlabelled learning from a seed list.

    A classifier g(x) ~ P(seed | x) is trained on seed members, minus a held-out share, against
    everyone else; the features that define the seed are excluded, or similarity would be
    trivial. Held-out members are drawn per customer (``customer_uniform``) and never trained
    on, so how they rank among everyone else measures every audience (``audience_table``).
    ``score`` is g's rank percentile in the population fitted on: it orders like g and does not
    saturate, where Elkan and Noto's g / c (c = mean g over held-out members, kept as
    ``label_frequency_``) was clipped to 1 over much of the top of the ranking.
    """

    name: str
    excluded_features: tuple[str, ...] = ()
    holdout_share: float = 0.2
    validation_share: float = 0.2
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    threads: int = 2
    rounds: int = 400
    encoder_: FeatureEncoder | None = None
    booster_: lgb.Booster | None = None
    label_frequency_: float = 1.0
    heldout_ids_: list[str] = field(default_factory=list)
    seed_ids_: list[str] = field(default_factory=list)
    rank_knots_: tuple[np.ndarray, np.ndarray] | None = None

    def fit(self, features: pd.DataFrame, seed_ids: set[str]) -> LookalikeModel:
        ids = features["customer_id"].astype(str).to_numpy()
        in_seed = is_member(ids, seed_ids)
        if in_seed.sum() < 10:
            raise ValueError(f"lookalike '{self.name}': need at least 10 seed customers with features, got {in_seed.sum()}")
        held_out = in_seed & (customer_uniform(ids, "lookalike-holdout", self.seed) < self.holdout_share)
        labelled = in_seed & ~held_out
        usable = features.drop(columns=[c for c in features.columns if c.startswith(self.excluded_features)])
        self.encoder_ = FeatureEncoder().fit(usable)
        x = self.encoder_.transform(usable)
        # Held-out seed members are left out of training altogether, so their ranks are honest;
        # a share of the rest decides when to stop adding trees (the seed is small and the other
        # features are many: without it the model learns noise).
        validation = ~held_out & (customer_uniform(ids, "lookalike-validation", self.seed) < self.validation_share)
        train = ~held_out & ~validation
        self.booster_ = fit_booster(
            x[train], labelled[train].astype(float), "binary",
            x_val=x[validation], y_val=labelled[validation].astype(float),
            overrides={"num_leaves": 15, "min_data_in_leaf": 40, **self.params},
            seed=self.seed, threads=self.threads, max_rounds=self.rounds,
        )
        similarity = predict(self.booster_, x)
        self.label_frequency_ = float(np.clip(similarity[held_out].mean(), 1e-6, 1.0)) if held_out.any() else 1.0
        self.rank_knots_ = rank_knots(similarity)
        self.heldout_ids_ = ids[held_out].tolist()
        self.seed_ids_ = ids[labelled].tolist()
        return self

    def indicators(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        return {f"{self.name}_score": self.score(None, matrix)}

    def score(self, features: pd.DataFrame | None, matrix: np.ndarray | None = None) -> np.ndarray:
        """The share of the population fitted on that is less similar to the seed, in [0, 1]."""
        similarity = self.similarity(features, matrix)
        if self.rank_knots_ is None:  # fitted before rank scores: the old clipped g / c
            return np.clip(similarity / self.label_frequency_, 0.0, 1.0)
        return np.interp(similarity, *self.rank_knots_)

    def similarity(self, features: pd.DataFrame | None, matrix: np.ndarray | None = None) -> np.ndarray:
        """The classifier's raw P(seed | x)."""
        return predict(self.booster_, self.encoder_.matrix(features) if matrix is None else matrix)

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        return contributions(self.booster_, matrix)

    def audience_report(self, features: pd.DataFrame, percents: tuple[float, ...], split: Split | None = None) -> pd.DataFrame:
        """Held-out seed recall, its significance, lift and expected precision for the top p% non-seed
        (the held-out members of ``split``, the fit's own by default)."""
        return lookalike_audience(self, features, percents, split)

    def horizons_note(self) -> str:
        return "no horizon: ranks customers by their features when scored"


@dataclass
class ActivityLookalikeModel(SharedModel):
    """The activity baseline as a servable lookalike: the most active customers, whatever the seed.

    Ranks by purchase days in the last 365 days, ties by sessions in the last 90. Served, and
    labelled as the baseline (``baseline``), in place of a ``LookalikeModel`` that ranks the
    held-out seed members worse than it does. It keeps that model's split (``seed_ids_``,
    ``heldout_ids_``), so its audience report is the very comparison the gate made. Same
    interface as ``LookalikeModel``; its contributions are exact for its linear activity
    (weight x (value - population mean), the last column the mean activity).
    """

    name: str
    baseline: str = "activity_heuristic"
    weights: tuple[float, ...] = (1.0, 1e-3)  # sessions only break ties between equal purchase days
    encoder_: FeatureEncoder | None = None
    mean_: np.ndarray | None = None
    rank_knots_: tuple[np.ndarray, np.ndarray] | None = None
    seed_ids_: list[str] = field(default_factory=list)
    heldout_ids_: list[str] = field(default_factory=list)

    def fit(self, features: pd.DataFrame, seed_ids: list[str], heldout_ids: list[str]) -> ActivityLookalikeModel:
        self.encoder_ = FeatureEncoder(numeric_=list(ACTIVITY_FEATURES))
        values = np.nan_to_num(self.encoder_.matrix(features), nan=0.0)
        self.mean_ = values.mean(axis=0)
        self.rank_knots_ = rank_knots(self.similarity(features))
        self.seed_ids_, self.heldout_ids_ = list(seed_ids), list(heldout_ids)
        return self

    def activity(self, matrix: np.ndarray) -> np.ndarray:
        return np.maximum(np.nan_to_num(matrix, nan=0.0) @ np.asarray(self.weights), 0.0)

    def similarity(self, features: pd.DataFrame | None, matrix: np.ndarray | None = None) -> np.ndarray:
        """The activity a as a / (1 + a): the same order, in [0, 1) like a probability."""
        activity = self.activity(self.encoder_.matrix(features) if matrix is None else matrix)
        return activity / (1.0 + activity)

    def indicators(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        return {f"{self.name}_score": self.score(None, matrix)}

    def score(self, features: pd.DataFrame | None, matrix: np.ndarray | None = None) -> np.ndarray:
        """The share of the population fitted on that is less active, in [0, 1]."""
        return np.interp(self.similarity(features, matrix), *self.rank_knots_)

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        values = np.nan_to_num(matrix, nan=0.0)
        weights = np.asarray(self.weights)
        base = np.full((len(values), 1), float(self.mean_ @ weights))
        return np.hstack([(values - self.mean_) * weights, base])

    def audience_report(self, features: pd.DataFrame, percents: tuple[float, ...], split: Split | None = None) -> pd.DataFrame:
        """The same measurements as ``LookalikeModel.audience_report``, on the same held-out members."""
        return lookalike_audience(self, features, percents, split)

    def horizons_note(self) -> str:
        return "no horizon: ranks customers by their recent activity when scored"


# --- lookalike measurements -----------------------------------------------------------------

# An audience shows the seed's signal only if chance would put this many held-out seed members in
# a random audience of its size less often than this (one-sided hypergeometric test).
SIGNAL_ALPHA = 0.01
# The activity baseline's features (``ActivityLookalikeModel``).
ACTIVITY_FEATURES = ("purchase_days_365d", "sessions_90d")
RANK_KNOTS = 2049  # quantiles of the fitted population's similarity kept for rank scores


def customer_uniform(ids: np.ndarray, purpose: str, seed: int) -> np.ndarray:
    """One uniform draw in [0, 1) per customer id, from a hash of the id keyed by purpose and seed.

    A split drawn as ``default_rng(seed).random(len(rows))`` depends only on the seed and the
    row order, so it repeats any other draw made from that seed in that order. The generator
    draws its first chunk's ages from ``SeedSequence([seed, 0])``, which equals
    ``SeedSequence(seed)``: with the default seed the held-out seed members were exactly the
    youngest customers, and the model learnt that the young are never in the seed. A keyed
    hash depends on the customer and the purpose alone.
    """
    key = hashlib.blake2b(f"{purpose}:{seed}".encode(), digest_size=8).hexdigest()  # pandas takes 16 characters
    hashed = pd.util.hash_array(np.asarray(ids, dtype=object), hash_key=key)
    return (hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def rank_knots(similarity: np.ndarray, size: int = RANK_KNOTS) -> tuple[np.ndarray, np.ndarray]:
    """The map from a similarity in [0, 1] to its rank percentile in a reference population.

    Knots at quantiles of the reference, each at its mid-rank share (tied customers share one),
    plus (0, 0) and (1, 1). Interpolated, the map is strictly increasing on [0, 1]: a score
    orders customers exactly as their similarity does and reaches 1 only at a similarity of 1,
    so a new customer above everyone seen gets a score just above theirs, not a tie at the top.
    """
    ordered = np.sort(similarity[np.isfinite(similarity)])
    values = np.unique(np.quantile(ordered, np.linspace(0.0, 1.0, min(size, len(ordered)))))
    shares = (np.searchsorted(ordered, values, "left") + np.searchsorted(ordered, values, "right")) / (2.0 * len(ordered))
    xs, ys = [values], [shares]
    if values[0] > 0.0:
        xs, ys = [np.zeros(1), *xs], [np.zeros(1), *ys]
    if values[-1] < 1.0:
        xs, ys = [*xs, np.ones(1)], [*ys, np.ones(1)]
    return np.concatenate(xs), np.concatenate(ys)


def hypergeom_sf(hits: int, population: int, marked: int, drawn: int) -> float:
    """P(at least ``hits`` of the ``marked`` items among ``drawn`` taken at random from ``population``)."""
    low, high = max(0, drawn - (population - marked)), min(marked, drawn)
    if hits <= low:
        return 1.0
    if hits > high:
        return 0.0

    def log_comb(n: int, k: np.ndarray) -> np.ndarray:
        return np.array([math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) for j in k])

    taken = np.arange(hits, high + 1)
    log_p = log_comb(marked, taken) + log_comb(population - marked, drawn - taken) - log_comb(population, np.array([drawn]))[0]
    return float(min(1.0, np.exp(log_p).sum()))


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion: sensible for a handful of trials and at 0 or n."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def audience_table(similarity: np.ndarray, heldout: np.ndarray, seed_share: float, percents: tuple[float, ...]) -> pd.DataFrame:
    """What audiences of the top p% of the candidates are worth, measured on held-out seed members.

    ``similarity`` ranks the candidates (everyone but the seed members trained on), ``heldout``
    marks the seed members among them that the model never saw. Per audience:

    - ``heldout_seed_recall``: the share of held-out members in it, against ``random_recall``
      (its size / the candidates) for a random audience; ``signal`` is true when the recall is
      above that and ``p_value`` (how often a random audience finds this many) is below
      ``SIGNAL_ALPHA``;
    - ``expected_precision``: the share of the audience like the seed if such customers are as
      common among the candidates as the seed is in the population (``seed_share``, also
      ``random_precision``, what a random audience gets). Held-out members give the share of
      them above each rank (TPR), everyone else the share of the others (FPR); the audience
      ends where ``seed_share * TPR + (1 - seed_share) * FPR`` reaches its share, and its
      precision is ``seed_share * TPR`` over that. It saturates only where a perfect ranking
      would (an audience no larger than the seed's share); ``expected_precision_low/high``
      put the 95% Wilson interval of TPR through the same formula. Without signal the three
      are NaN: no precision is claimed.
    """
    n, held = len(similarity), int(heldout.sum())
    order = np.argsort(-similarity, kind="stable")
    found = np.cumsum(heldout[order])
    tpr = found / max(held, 1)
    fpr = (np.arange(1, n + 1) - found) / max(n - held, 1)
    mixed = seed_share * tpr + (1.0 - seed_share) * fpr

    def precision(true_share: float, false_share: float) -> float:
        like, unlike = seed_share * true_share, (1.0 - seed_share) * false_share
        return like / (like + unlike) if like + unlike > 0 else 0.0

    rows = []
    for percent in percents:
        size = max(1, int(round(n * percent / 100)))
        hits = int(found[size - 1])
        recall = hits / held if held else 0.0
        chance = size / n
        p_value = hypergeom_sf(hits, n, held, size) if held else 1.0
        signal = bool(held and recall > chance and p_value < SIGNAL_ALPHA)
        end = min(int(np.searchsorted(mixed, chance, side="left")), n - 1)
        low, high = wilson_interval(int(found[end]), held)
        estimate = (precision(tpr[end], fpr[end]), precision(low, fpr[end]), precision(high, fpr[end]))
        rows.append(
            {
                "audience_percent": percent,
                "audience_size": size,
                "heldout_seed_size": held,
                "heldout_found": hits,
                "heldout_seed_recall": float(recall),
                "random_recall": chance,
                "lift": float(recall / chance),
                "p_value": p_value,
                "signal": signal,
                "expected_precision": estimate[0] if signal else float("nan"),
                "expected_precision_low": estimate[1] if signal else float("nan"),
                "expected_precision_high": estimate[2] if signal else float("nan"),
                "random_precision": float(seed_share),
            }
        )
    return pd.DataFrame(rows)


# A seed's split: the members trained on and the held-out members that measure audiences.
Split = tuple[list[str], list[str]]


def lookalike_audience(model: Any, features: pd.DataFrame, percents: tuple[float, ...], split: Split | None = None) -> pd.DataFrame:
    """``audience_table`` for a fitted lookalike: its candidates, held-out members and seed share.
    ``split`` defaults to the model's own; a registered model keeps none (``without_customer_ids``)
    and is measured on a new fit's split (its held-out members are drawn by the same rule)."""
    seed_ids, heldout_ids = split or (model.seed_ids_, model.heldout_ids_)
    if not heldout_ids:
        raise ValueError(f"lookalike '{model.name}' has no held-out seed members to measure with: pass a split")
    ids = features["customer_id"].astype(str).to_numpy()
    candidates = ~is_member(ids, seed_ids)
    seed_share = float(is_member(ids, [*seed_ids, *heldout_ids]).mean())
    similarity = model.similarity(features)[candidates]
    return audience_table(similarity, is_member(ids[candidates], heldout_ids), seed_share, percents)


def without_customer_ids(model: Any) -> Any:
    """What the registry keeps of a fitted model: a lookalike's seed split (customer ids, used
    only to measure it while training) is left out, so no registered model holds an id."""
    if isinstance(model, LookalikeModel | ActivityLookalikeModel):
        return replace(model, seed_ids_=[], heldout_ids_=[])
    return model


def is_member(ids: np.ndarray, members) -> np.ndarray:
    """``np.isin`` by hashing: on arrays of strings numpy compares every pair (seconds for 20k ids)."""
    return pd.Index(ids).isin(list(members))
