"""Scoring shared by the batch job and the endpoint: champions in, enriched profiles out.

``Champions.load`` reads the ``champion`` of every model from the MLflow registry;
``Champions.score`` turns a frame of Feast features into one record per customer with every
indicator, the segments, the top reasons per indicator, the model versions and the time the
features were read. The batch job and the endpoint call the same function, so the same
features give the same scores.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from serving.schemas import LookalikeResponse
from training import tracking
from training.catalogue import (
    AT_RISK_CHURN,
    CHURN_BANDS,
    COMPARED_METHODS,
    EXPLAINED,
    LAPSED_DAYS,
    LOOKALIKES,
    MODEL_NAMES,
    MODELS,
    NEW_CUSTOMER_DAYS,
    SEGMENTS,
)
from training.config import Config
from training.explain import reasons_from
from training.models import LookalikeModel

# Indicators each model contributes to a profile, in this order.
INDICATOR_COLUMNS = {model.name: tuple(i.name for i in model.indicators) for model in MODELS}


class ChampionMissing(RuntimeError):
    """A model has no champion in the registry: train first (``make train``)."""


@dataclass
class Champions:
    models: dict[str, Any]
    versions: dict[str, str]
    value_tiers: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # Per model: the training run, its data and backtest windows, and its test-window metrics.
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    pool: ThreadPoolExecutor | None = field(default=None, repr=False)  # SHAP threads, made on first use
    shap_groups: list[list[str]] | None = field(default=None, repr=False)  # models per core, by cost

    @classmethod
    def load(cls, config: Config) -> Champions:
        client: MlflowClient = tracking.setup_tracking(config)
        models, versions, provenance = {}, {}, {}
        for name in MODEL_NAMES:
            model = tracking.load_model(config, name)
            if model is None and name in LOOKALIKES:
                continue  # a seed the data cannot define (no category column: no sustainable buyers)
            if model is None:
                raise ChampionMissing(
                    f"no '{tracking.CHAMPION}' for model '{name}' in {config.mlflow_tracking_uri}: run "
                    f"`indicators train --data-dir {config.data_dir}` (or `make train` for the default data) first"
                )
            models[name] = model
            version = client.get_model_version_by_alias(name, tracking.CHAMPION)
            versions[name] = str(version.version)
            provenance[name] = champion_provenance(client, version.run_id)
        return cls(models=models, versions=versions, provenance=provenance)

    @property
    def explained(self) -> dict[str, tuple[str, float]]:
        """``EXPLAINED`` for the models served (a lookalike without a champion has no reasons)."""
        return {indicator: (name, sign) for indicator, (name, sign) in EXPLAINED.items() if name in self.models}

    def calibrate_tiers(self, features: pd.DataFrame) -> None:
        """Value tiers from the spread of expected revenue over the scored population."""
        self.value_tiers = value_tiers_of(self.models["clv"].predict(features)["expected_revenue"].to_numpy())

    def table(self, features: pd.DataFrame) -> pd.DataFrame:
        """``customer_id``, every indicator and the segments, one row per row of ``features``.

        Vectorized: the batch job scores a million customers with it.
        """
        return pd.DataFrame(self._columns(features, _Matrices(self.models, features)))

    def score(self, features: pd.DataFrame, read_at: datetime, reasons: int = 3, parallel: bool = True) -> list[dict]:
        """One enriched profile per row of ``features``: indicators, segments, top reasons,
        provenance. ``parallel``: reasons on every core, else on the calling thread alone."""
        matrices = _Matrices(self.models, features)
        columns = self._columns(features, matrices)
        why: dict[str, list[list[dict]]] = {}
        if reasons:
            contributions = self._contributions(matrices) if parallel else self._contributions_of(self._explained_models(), matrices)
            read = features.to_numpy(dtype=object)  # reasons quote the features as read
            position = {column: k for k, column in enumerate(features.columns)}
            for indicator, (name, sign) in self.explained.items():
                names = self.models[name].encoder_.columns_
                why[indicator] = reasons_from(names, read[:, [position[c] for c in names]], contributions[name], reasons, sign)
        indicators = {name: values.tolist() for name, values in columns.items() if name not in ("customer_id", *SEGMENTS)}
        segments = {name: columns[name].tolist() for name in SEGMENTS}
        read_at_text = read_at.isoformat()
        return [
            {
                "customer_id": customer_id,
                "indicators": {name: values[i] for name, values in indicators.items()},
                "segments": {name: values[i] for name, values in segments.items()},
                "reasons": {indicator: per_row[i] for indicator, per_row in why.items()},
                "model_versions": dict(self.versions),
                "features_read_at": read_at_text,
            }
            for i, customer_id in enumerate(columns["customer_id"].tolist())
        ]

    def _contributions(self, matrices: _Matrices) -> dict[str, np.ndarray]:
        """SHAP contributions of every explained model, on every core.

        Exact TreeSHAP is most of a call's cost and LightGBM releases the GIL. The models are
        split into one group per core by their cost (measured on the first call); the calling
        thread computes one group while the pool computes the others. One task per model on a
        pool costs about as much in hand-offs as it saves for one customer.
        """
        names = self._explained_models()
        if self.shap_groups is None:
            seconds: dict[str, float] = {}
            values: dict[str, np.ndarray] = {}
            for name in names:
                values[name] = self.models[name].contributions(matrices[name])  # the first run warms up
                started = time.perf_counter()
                for _ in range(3):
                    self.models[name].contributions(matrices[name])
                seconds[name] = time.perf_counter() - started
            self.shap_groups = balanced_groups(seconds, os.cpu_count() or 2)
            return values
        own, *others = self.shap_groups
        if self.pool is None and others:
            self.pool = ThreadPoolExecutor(max_workers=len(others), thread_name_prefix="shap")
        futures = [self.pool.submit(self._contributions_of, group, matrices) for group in others]
        values = self._contributions_of(own, matrices)
        for future in futures:
            values.update(future.result())
        return values

    def _explained_models(self) -> list[str]:
        return list(dict.fromkeys(name for name, _ in self.explained.values()))

    def _contributions_of(self, names: list[str], matrices: _Matrices) -> dict[str, np.ndarray]:
        return {name: self.models[name].contributions(matrices[name]) for name in names}

    def _columns(self, features: pd.DataFrame, matrices: _Matrices) -> dict[str, np.ndarray]:
        """The table's columns as arrays: one customer costs no data-frame construction."""
        columns = {"customer_id": features["customer_id"].to_numpy().astype(str)}
        for name, indicators in INDICATOR_COLUMNS.items():
            # A model not served (a lookalike whose seed the data cannot define) gives nulls.
            values = self.models[name].indicators(matrices[name]) if name in self.models else {}
            columns.update({c: values.get(c, np.full(len(features), np.nan)) for c in indicators})
        columns["value_tier"] = value_tiers(columns["expected_revenue"], self.value_tiers)
        columns["churn_risk_band"] = churn_bands(columns["p_churn"])
        columns["lifecycle_stage"] = lifecycle_stages(features, columns["p_churn"])
        return columns


class _Matrices(dict):
    """Each model's input matrix, built once per encoder (models sharing one share it)."""

    def __init__(self, models: dict[str, Any], features: pd.DataFrame) -> None:
        super().__init__()
        self._models, self._features, self._by_encoder = models, features, {}

    def __missing__(self, name: str) -> np.ndarray:
        encoder = self._models[name].encoder_
        if encoder.signature not in self._by_encoder:
            self._by_encoder[encoder.signature] = encoder.matrix(self._features)
        self[name] = self._by_encoder[encoder.signature]
        return self[name]


def balanced_groups(cost: dict[str, float], groups: int) -> list[list[str]]:
    """Names split into at most ``groups`` non-empty groups of similar total cost (the costliest
    first, each to the group with the least so far); the costliest group comes first."""
    bins: list[tuple[float, list[str]]] = [(0.0, []) for _ in range(max(1, groups))]
    for name in sorted(cost, key=lambda n: -cost[n]):
        k = min(range(len(bins)), key=lambda i: bins[i][0])
        bins[k] = (bins[k][0] + cost[name], [*bins[k][1], name])
    return [names for _, names in sorted(bins, key=lambda b: -b[0]) if names]


def lookalike_audience_response(
    population: pd.DataFrame, seeds: set[str], audience_percent: float, seed_ids_without_consent: int = 0
) -> dict[str, Any]:
    """A lookalike model fitted on the request's seed, its audience and what held-out seed
    members say the audience is worth; a seed whose held-out members the audience does not find
    better than chance gets ``signal: false`` and no expected precision."""
    model = LookalikeModel(name="request", threads=1).fit(population, seeds)
    [report] = model.audience_report(population, (audience_percent,)).to_dict("records")
    candidates = population[~population["customer_id"].isin(seeds)]
    matrix = model.encoder_.matrix(candidates)
    similarity, scores = model.similarity(candidates, matrix), model.score(candidates, matrix)
    size = max(1, int(round(len(candidates) * audience_percent / 100)))
    ids = candidates["customer_id"].to_numpy()
    order = np.argsort(-similarity, kind="stable")[:size]
    signal = bool(report["signal"])
    body = {
        "audience": [{"customer_id": str(ids[i]), "score": float(scores[i])} for i in order],
        "audience_size": size,
        "seed_size": len(seeds),
        "seed_ids_without_consent": seed_ids_without_consent,
        "heldout_seed_size": int(report["heldout_seed_size"]),
        "heldout_seed_found": int(report["heldout_found"]),
        "heldout_seed_recall": float(report["heldout_seed_recall"]),
        "random_recall": float(report["random_recall"]),
        "lift": float(report["lift"]),
        "p_value": float(report["p_value"]),
        "signal": signal,
        "expected_precision": float(report["expected_precision"]) if signal else None,
        "expected_precision_interval": (
            (float(report["expected_precision_low"]), float(report["expected_precision_high"])) if signal else None
        ),
        "random_precision": float(report["random_precision"]),
        "message": lookalike_message(report),
    }
    return LookalikeResponse(**body).model_dump()


def lookalike_message(report: dict[str, Any]) -> str:
    """One sentence on what the held-out seed members say, for a person reading the response."""
    found = (
        f"{report['heldout_found']} of {report['heldout_seed_size']} held-out seed members are in the audience of "
        f"{report['audience_size']:,}, against {report['heldout_seed_size'] * report['random_recall']:.1f} for a random "
        f"audience (p = {report['p_value']:.2g})"
    )
    if not report["signal"]:
        return (
            f"No signal: {found}. The features do not tell this seed apart from other customers, so no precision "
            f"is claimed; expect about the seed's share of customers ({report['random_precision']:.2%})."
        )
    return (
        f"{found}. Expected precision {report['expected_precision']:.1%} (95% interval "
        f"{report['expected_precision_low']:.1%} to {report['expected_precision_high']:.1%}) if customers like the seed "
        f"are as common among the others as the seed is among all customers ({report['random_precision']:.2%})."
    )


def champion_provenance(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """Where a champion comes from: its run, training window and backtest metrics (model only)."""
    run = client.get_run(run_id)
    params, parent = dict(run.data.params), run
    while "data_start" not in params and parent.data.tags.get("mlflow.parentRunId"):  # lookalikes and baselines are nested
        parent = client.get_run(parent.data.tags["mlflow.parentRunId"])
        params = {**parent.data.params, **params}
    others = tuple(f"{method}." for method in COMPARED_METHODS)
    return {
        "run_id": run_id,
        "data_start": params.get("data_start"),
        "data_end": params.get("data_end"),
        "backtest_window": params.get("window"),
        "horizons": params.get("horizons"),
        "metrics": {k: v for k, v in sorted(run.data.metrics.items()) if not k.startswith(others)},
    }


def value_tiers_of(expected_revenue: np.ndarray) -> tuple[float, float, float]:
    """Tier thresholds: the median, P80 and P95 of expected revenue over the scored customers."""
    return tuple(float(q) for q in np.quantile(expected_revenue, [0.5, 0.8, 0.95]))


def value_tiers(expected_revenue: np.ndarray, tiers: tuple[float, float, float]) -> np.ndarray:
    """low / medium / high / top against the thresholds of ``value_tiers_of``."""
    median, high, top = tiers
    return np.select(
        [expected_revenue >= top, expected_revenue >= high, expected_revenue >= median],
        ["top", "high", "medium"],
        default="low",
    )


def churn_bands(p_churn: np.ndarray) -> np.ndarray:
    limits = [limit for limit, _ in CHURN_BANDS]
    return np.asarray([label for _, label in CHURN_BANDS])[np.searchsorted(limits, p_churn, side="right")]


def lifecycle_stages(features: pd.DataFrame, p_churn: np.ndarray) -> np.ndarray:
    """prospect (never bought), new (first purchase < 90 days ago), lapsed (no purchase for a
    year), at_risk (p_churn in the high band), active."""
    since_last = _days(features, "days_since_last_purchase")
    since_first = _days(features, "days_since_first_purchase")
    stages = np.select(
        [np.isnan(since_last), since_first < NEW_CUSTOMER_DAYS, since_last > LAPSED_DAYS, p_churn >= AT_RISK_CHURN],
        ["prospect", "new", "lapsed", "at_risk"],
        default="active",
    )
    return stages


def _days(features: pd.DataFrame, column: str) -> np.ndarray:
    if column not in features:
        return np.full(len(features), np.nan)
    return pd.to_numeric(features[column].astype(object), errors="coerce").to_numpy(dtype=float)
