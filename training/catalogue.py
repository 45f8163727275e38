"""The catalogue of indicators: each model, what it adds to a profile, for whom, how it is
judged against which baselines and how its reasons read.

Scoring, the pipeline, the predictions feature view, the backtest's columns, the endpoint's
metadata and the tests derive their lists from here: adding an indicator is one entry here and
its model. Nothing here imports the rest of the project.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Indicator:
    name: str  # the profile's column
    stored: bool = True  # written to the customer_predictions view by `indicators score`
    backtested: bool = False  # an output column of `indicators backtest`


@dataclass(frozen=True)
class Model:
    name: str  # the registered model
    indicators: tuple[Indicator, ...]  # in the profile's order
    horizon: str  # the experiment key (training/experiment.yaml) that sets its horizon, or how it is fixed
    population: str  # who it is evaluated and gated on
    headline_metric: str  # what the promotion gate compares
    higher_is_better: bool
    baselines: tuple[str, ...]  # what it is compared with on the same window
    explains: str | None = None  # the indicator its SHAP values explain
    # +1 when the indicator grows with the model's output; -1 for its complement (churn is not buying)
    explanation_sign: float = 1.0
    lookalike: bool = False


_CLASSICAL = ("btyd", "pareto_nbd", "rfm")  # as the backtest metrics name them (btyd: BG/NBD)
MODELS: tuple[Model, ...] = (
    Model(
        "purchase_timing",
        (Indicator("p_churn", backtested=True), Indicator("p_purchase_7d"), Indicator("p_purchase_30d", backtested=True),
         Indicator("p_purchase_90d"), Indicator("next_purchase_days", backtested=True),
         Indicator("next_purchase_days_p10", stored=False), Indicator("next_purchase_days_p90", stored=False)),
        horizon="models.purchase_horizons (p_churn: no purchase in models.churn_horizon_days)",
        population="customers who bought in the 365 days before the cutoff",
        headline_metric="auc", higher_is_better=True, baselines=_CLASSICAL,
        explains="p_churn", explanation_sign=-1.0,
    ),
    Model(
        "expected_purchases", (Indicator("expected_purchases", backtested=True),),
        horizon="models.expected_purchases_horizon_days", population="customers with at least one purchase by the cutoff",
        headline_metric="mae", higher_is_better=False, baselines=_CLASSICAL, explains="expected_purchases",
    ),
    Model(
        "clv",
        (Indicator("expected_revenue", backtested=True), Indicator("expected_revenue_p10", backtested=True),
         Indicator("expected_revenue_p90", backtested=True)),
        horizon="models.clv_horizon_days", population="customers with at least one purchase by the cutoff",
        headline_metric="normalized_gini", higher_is_better=True, baselines=_CLASSICAL, explains="expected_revenue",
    ),
    *(
        Model(
            name, (Indicator(f"{name}_score"),), horizon="none: similarity to a seed list",
            population="customers who may be profiled", headline_metric="heldout_seed_recall", higher_is_better=True,
            baselines=("activity_heuristic",), explains=f"{name}_score", lookalike=True,
        )
        for name in ("lookalike_top_value", "lookalike_sustainable")
    ),
)

MODEL_NAMES = tuple(model.name for model in MODELS)
LOOKALIKES = tuple(model.name for model in MODELS if model.lookalike)
STORED_INDICATORS = tuple(i.name for model in MODELS for i in model.indicators if i.stored)
BACKTEST_INDICATORS = tuple(i.name for model in MODELS for i in model.indicators if i.backtested)
BACKTESTED_MODELS = tuple(model.name for model in MODELS if any(i.backtested for i in model.indicators))
# The methods a backtest's metrics set beside the model's own rows (``model``): its baselines,
# the oracle of generated data, and the losing learnt model beside a baseline served in its place.
LEARNT_METHOD = "learnt_model"
COMPARED_METHODS = (*dict.fromkeys(b for model in MODELS for b in model.baselines), "oracle", LEARNT_METHOD)
# indicator -> (model whose SHAP values explain it, sign)
EXPLAINED = {model.explains: (model.name, model.explanation_sign) for model in MODELS if model.explains}

# Segments: labels from the indicators, the same online and in the batch.
SEGMENTS = ("value_tier", "churn_risk_band", "lifecycle_stage")
CHURN_BANDS = ((0.3, "low"), (0.6, "medium"), (1.01, "high"))  # p_churn below each limit
AT_RISK_CHURN = CHURN_BANDS[1][0]  # an active customer this likely to churn is at risk
NEW_CUSTOMER_DAYS = 90  # first purchase this recent: new
LAPSED_DAYS = 365  # no purchase for this long: lapsed


def churn_bands_text() -> str:
    """The bands as the endpoint's metadata states them: 'low < 0.3 <= medium < 0.6 <= high'."""
    parts = [CHURN_BANDS[0][1]]
    for (limit, _), (_, label) in zip(CHURN_BANDS, CHURN_BANDS[1:], strict=False):
        parts.append(f"< {limit:g} <= {label}")
    return " ".join(parts)


def model(name: str) -> Model:
    return next(m for m in MODELS if m.name == name)
