"""Modelling tables: features as of each cutoff (Feast) joined with labels after it.

``FeatureEncoder`` turns Feast output into the numeric matrix the models take: timestamps are
dropped (their ages come from the on-demand view), booleans become 0/1, strings become
categories with a fixed vocabulary learnt at fit time, so serving encodes exactly as training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
from feast import FeatureStore

from training.features import store as feature_store
from training.labels import is_label

ID_COLUMNS = ("customer_id", "cutoff")
# Stored timestamps: models use their ages (customer_recency), never the raw dates.
TIMESTAMP_FEATURES = ("first_purchase_at", "last_purchase_at", "last_engagement_at", "signup_at")
# Consent governs whether a customer may be scored, not how.
EXCLUDED_FEATURES = ("profiling_consent", "marketing_consent")


@dataclass
class FeatureEncoder:
    """Fitted on training rows; ``transform`` gives the same columns and codes at any time."""

    numeric_: list[str] = field(default_factory=list)
    categories_: dict[str, list[str]] = field(default_factory=dict)

    def fit(self, frame: pd.DataFrame) -> FeatureEncoder:
        usable = [
            c
            for c in frame.columns
            if c not in (*ID_COLUMNS, *TIMESTAMP_FEATURES, *EXCLUDED_FEATURES) and not is_label(c)
        ]
        self.categories_ = {
            c: sorted(frame[c].dropna().astype(str).unique().tolist())
            for c in usable
            if frame[c].dtype == object or isinstance(frame[c].dtype, pd.StringDtype | pd.CategoricalDtype)
        }
        self.numeric_ = [c for c in usable if c not in self.categories_]
        return self

    @property
    def columns_(self) -> list[str]:
        return [*self.numeric_, *self.categories_]

    @property
    def signature(self) -> tuple:
        """Equal for encoders that give the same matrix, so callers can share one."""
        return (tuple(self.numeric_), tuple((c, tuple(v)) for c, v in self.categories_.items()))

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """What the boosters read: numeric columns, then category codes (NaN if missing or unseen).

        Typed columns (Feast's offline frames) are copied one by one; columns of Python objects
        (the online store's numbers, booleans and None) are converted in one block, since
        serving encodes a customer per request and pandas costs ~50 us per column.
        """
        missing = [c for c in self.columns_ if c not in frame.columns]
        if missing:
            raise KeyError(f"feature column(s) missing: {missing}")
        dtypes = dict(zip(frame.columns, frame.dtypes, strict=True))
        out = np.empty((len(frame), len(self.columns_)), dtype=float)
        untyped = [i for i, column in enumerate(self.numeric_) if dtypes[column].kind not in "fiub"]
        for i, column in enumerate(self.numeric_):
            if dtypes[column].kind in "fiub":
                out[:, i] = frame[column].to_numpy(dtype=float)
        # A few rows: the whole frame as objects once, then positions (no pandas per column).
        every = frame.to_numpy(dtype=object) if len(frame) < 1_000 else None
        position = {column: k for k, column in enumerate(frame.columns)}

        def block(columns: list[str]) -> np.ndarray:
            if every is not None:
                return every[:, [position[c] for c in columns]]
            return frame[columns].to_numpy(dtype=object)

        if untyped:
            block_values = block([self.numeric_[i] for i in untyped])
            block_values[pd.isna(block_values)] = np.nan
            try:
                out[:, untyped] = block_values.astype(float)
            except (TypeError, ValueError):  # a string among the numbers: coerce column by column
                for j, i in enumerate(untyped):
                    out[:, i] = pd.to_numeric(pd.Series(block_values[:, j]), errors="coerce").to_numpy(dtype=float)
        if self.categories_:
            labels = block(list(self.categories_))
            for j, vocabulary in enumerate(self.categories_.values()):
                if len(labels) < 1_000:  # a dict beats building a hash index for a few rows
                    lookup = {label: code for code, label in enumerate(vocabulary)}
                    codes = np.fromiter((lookup.get(v, -1) for v in labels[:, j]), dtype=float, count=len(labels))
                else:
                    codes = pd.Index(vocabulary, dtype=object).get_indexer(labels[:, j]).astype(float)
                out[:, len(self.numeric_) + j] = np.where(codes < 0, np.nan, codes)  # missing or unseen
        return out

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The same as ``matrix`` as a frame with categorical columns (for training and plots)."""
        return self.frame_of(self.matrix(frame), frame.index)

    def frame_of(self, values: np.ndarray, index: pd.Index) -> pd.DataFrame:
        """The frame of a ``matrix``: numeric columns, then categoricals with their vocabulary."""
        n = len(self.numeric_)
        out = pd.DataFrame(values[:, :n], columns=self.numeric_, index=index)
        for i, (column, vocabulary) in enumerate(self.categories_.items(), start=n):
            codes = np.nan_to_num(values[:, i], nan=-1).astype(int)
            out[column] = pd.Categorical.from_codes(codes, categories=vocabulary)
        return out


def entity_rows(customers: pd.DataFrame, cutoffs: Sequence[datetime]) -> pd.DataFrame:
    """(customer_id, cutoff) for every customer signed up by each cutoff, in a fixed order.

    Rows are sorted by cutoff and customer: files written by parallel DuckDB may list customers
    in any order, and the order of training rows must not change what a seeded model learns.
    """
    customers = customers.sort_values("customer_id", kind="stable")
    signup = pd.to_datetime(customers["signup_at"], utc=True)
    parts = []
    for cutoff in cutoffs:
        cutoff = pd.Timestamp(cutoff)
        ids = customers.loc[signup <= cutoff, "customer_id"]
        parts.append(pd.DataFrame({"customer_id": ids.to_numpy(), "cutoff": cutoff}))
    rows = pd.concat(parts, ignore_index=True)
    rows["cutoff"] = pd.to_datetime(rows["cutoff"], utc=True)
    return rows


def features_at(store: FeatureStore, rows: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features for ``rows`` (customer_id, cutoff), in row order."""
    frame = feature_store.training_frame(store, rows)
    frame["cutoff"] = pd.to_datetime(frame["cutoff"], utc=True)
    return frame
