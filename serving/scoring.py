"""Scoring shared by the batch job and the endpoint: champions in, enriched profiles out.

``Champions.load`` reads the ``champion`` of every model from the MLflow registry;
``Champions.score`` turns a frame of Feast features into one record per customer with every
indicator, the segments, the top reasons per indicator, the model versions and the time the
features were read. The batch job and the endpoint call the same function, so the same
features give the same scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from training import tracking
from training.config import Config
from training.explain import top_reasons

MODEL_NAMES = ("purchase_timing", "expected_purchases", "clv", "lookalike_top_value", "lookalike_sustainable")
CHURN_BANDS = ((0.3, "low"), (0.6, "medium"), (1.01, "high"))


class ChampionMissing(RuntimeError):
    """A model has no champion in the registry: train first (``make train``)."""


@dataclass
class Champions:
    models: dict[str, Any]
    versions: dict[str, str]
    value_tiers: tuple[float, float, float] = (0.0, 0.0, 0.0)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, config: Config) -> Champions:
        client: MlflowClient = tracking.setup_tracking(config)
        models, versions = {}, {}
        for name in MODEL_NAMES:
            model = tracking.load_model(config, name)
            if model is None:
                raise ChampionMissing(
                    f"no '{tracking.CHAMPION}' for model '{name}' in {config.mlflow_tracking_uri}: run `make train` first"
                )
            models[name] = model
            versions[name] = str(client.get_model_version_by_alias(name, tracking.CHAMPION).version)
        return cls(models=models, versions=versions)

    def calibrate_tiers(self, features: pd.DataFrame) -> None:
        """Value tiers from the spread of expected revenue over the scored population."""
        self.value_tiers = value_tiers_of(self.models["clv"].predict(features)["expected_revenue"].to_numpy())

    def score(self, features: pd.DataFrame, read_at: datetime, reasons: int = 3) -> list[dict]:
        """One enriched profile per row of ``features`` (Feast columns, ``customer_id`` included)."""
        timing = self.models["purchase_timing"].predict(features)
        counts = self.models["expected_purchases"].predict(features)
        revenue = self.models["clv"].predict(features)
        lookalike = {name: self.models[name].score(features) for name in MODEL_NAMES if name.startswith("lookalike")}
        why = (
            {
                "p_churn": _reasons(self.models["purchase_timing"], features, reasons, sign=-1.0),
                "expected_purchases": _reasons(self.models["expected_purchases"], features, reasons),
                "expected_revenue": _reasons(self.models["clv"], features, reasons),
                **{f"{name}_score": _reasons(self.models[name], features, reasons) for name in lookalike},
            }
            if reasons
            else {}
        )
        records = []
        for i, customer_id in enumerate(features["customer_id"].astype(str)):
            row = features.iloc[i]
            p_churn = float(timing["p_churn"].iloc[i])
            expected_revenue = float(revenue["expected_revenue"].iloc[i])
            records.append(
                {
                    "customer_id": customer_id,
                    "indicators": {
                        "p_churn": p_churn,
                        "p_purchase_7d": float(timing["p_purchase_7d"].iloc[i]),
                        "p_purchase_30d": float(timing["p_purchase_30d"].iloc[i]),
                        "p_purchase_90d": float(timing["p_purchase_90d"].iloc[i]),
                        "next_purchase_days": float(timing["next_purchase_days"].iloc[i]),
                        "next_purchase_days_p10": float(timing["next_purchase_days_p10"].iloc[i]),
                        "next_purchase_days_p90": float(timing["next_purchase_days_p90"].iloc[i]),
                        "expected_purchases": float(counts["expected_purchases"].iloc[i]),
                        "expected_revenue": expected_revenue,
                        "expected_revenue_p10": float(revenue["expected_revenue_p10"].iloc[i]),
                        "expected_revenue_p90": float(revenue["expected_revenue_p90"].iloc[i]),
                        **{f"{name}_score": float(values[i]) for name, values in lookalike.items()},
                    },
                    "segments": {
                        "value_tier": self._value_tier(expected_revenue),
                        "churn_risk_band": churn_band(p_churn),
                        "lifecycle_stage": lifecycle_stage(row, p_churn),
                    },
                    "reasons": {indicator: per_row[i] for indicator, per_row in why.items()},
                    "model_versions": dict(self.versions),
                    "features_read_at": read_at.isoformat(),
                }
            )
        return records

    def _value_tier(self, expected_revenue: float) -> str:
        return value_tier(expected_revenue, self.value_tiers)


def value_tiers_of(expected_revenue: np.ndarray) -> tuple[float, float, float]:
    """Tier thresholds: the median, P80 and P95 of expected revenue over the scored customers."""
    return tuple(float(q) for q in np.quantile(expected_revenue, [0.5, 0.8, 0.95]))


def value_tier(expected_revenue: float, tiers: tuple[float, float, float]) -> str:
    median, high, top = tiers
    if expected_revenue >= top:
        return "top"
    if expected_revenue >= high:
        return "high"
    return "medium" if expected_revenue >= median else "low"


def _reasons(model: Any, features: pd.DataFrame, k: int, sign: float = 1.0) -> list[list[dict]]:
    x, contributions = model.explain(features)
    return top_reasons(x, contributions, k=k, sign=sign)


def churn_band(p_churn: float) -> str:
    return next(label for limit, label in CHURN_BANDS if p_churn < limit)


def lifecycle_stage(row: pd.Series, p_churn: float) -> str:
    """prospect (never bought), new (first purchase < 90 days ago), active, at_risk, lapsed."""
    since_last = row.get("days_since_last_purchase")
    if since_last is None or pd.isna(since_last):
        return "prospect"
    if row.get("days_since_first_purchase", np.inf) < 90:
        return "new"
    if since_last > 365:
        return "lapsed"
    return "at_risk" if p_churn >= 0.6 else "active"
