"""SHAP explanations: global plots per model and each customer's top reasons.

``top_reasons`` is the one function notebooks and serving use for per-customer reasons.
Contributions come from LightGBM's ``pred_contrib`` (exact TreeSHAP, same values as
``shap.TreeExplainer``) in the model's raw output space (log-odds, log-mean).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def top_reasons(x: pd.DataFrame, contributions: np.ndarray, k: int = 3, sign: float = 1.0) -> list[list[dict]]:
    """For each row, the ``k`` features with the largest absolute contribution.

    Each reason is ``{"feature", "value", "contribution"}``; ``sign=-1`` flips contributions
    for an indicator that is the complement of the model's output (churn = not buying).
    """
    return reasons_from(list(x.columns), x.to_numpy(dtype=object), contributions, k, sign)


def reasons_from(
    names: list[str], values: np.ndarray, contributions: np.ndarray, k: int = 3, sign: float = 1.0
) -> list[list[dict]]:
    """``top_reasons`` on arrays: feature names, their values per row (objects) and SHAP values."""
    signed = contributions[:, :-1] * sign
    order = np.argsort(-np.abs(signed), axis=1, kind="stable")[:, :k]
    return [
        [{"feature": names[j], "value": _plain(values[row, j]), "contribution": float(signed[row, j])} for j in top]
        for row, top in enumerate(order)
    ]


def _plain(value):
    """A JSON-ready scalar: missing values (None, NaN, pd.NA) become None."""
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def global_importance(x: pd.DataFrame, contributions: np.ndarray) -> pd.DataFrame:
    """Mean |SHAP| per feature, largest first."""
    mean_abs = np.abs(contributions[:, :-1]).mean(axis=0)
    return (
        pd.DataFrame({"feature": x.columns, "mean_abs_shap": mean_abs})
        .sort_values("mean_abs_shap", ascending=False)
        .reset_index(drop=True)
    )


def shap_plots(x: pd.DataFrame, contributions: np.ndarray, out_dir: Path, title: str, top: int = 3) -> list[Path]:
    """Beeswarm and bar plots, and dependence plots of the ``top`` features in one figure, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    out_dir.mkdir(parents=True, exist_ok=True)
    shown = x.notna().any().to_numpy()  # a feature the log has no column for is all null: nothing to plot
    numeric = x.loc[:, shown].copy()
    for column in numeric.columns:
        if isinstance(numeric[column].dtype, pd.CategoricalDtype):
            numeric[column] = numeric[column].cat.codes.astype(float)
    explanation = shap.Explanation(
        values=contributions[:, :-1][:, shown],
        base_values=contributions[:, -1],
        data=numeric.to_numpy(dtype=float),
        feature_names=list(numeric.columns),
    )
    paths = []
    for kind in ("beeswarm", "bar"):
        plt.figure()
        getattr(shap.plots, kind)(explanation, max_display=15, show=False)
        plt.title(f"{title}: SHAP {kind}")
        path = out_dir / f"shap_{kind}.png"
        plt.tight_layout()
        plt.savefig(path, dpi=80)
        plt.close("all")
        paths.append(path)
    features = list(global_importance(numeric, np.c_[explanation.values, explanation.base_values])["feature"].head(top))
    if features:  # one figure, a panel per feature: each figure costs a render
        figure, axes = plt.subplots(1, len(features), figsize=(4.5 * len(features), 4), squeeze=False)
        for ax, feature in zip(axes[0], features, strict=True):
            shap.plots.scatter(explanation[:, feature], ax=ax, show=False)
            ax.set_title(feature)
        figure.suptitle(f"{title}: SHAP dependence of the top {len(features)} features")
        path = out_dir / "shap_dependence.png"
        figure.tight_layout()
        figure.savefig(path, dpi=80)
        plt.close("all")
        paths.append(path)
    return paths
