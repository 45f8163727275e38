"""Labels from the window after each cutoff (never before it).

For a row (customer, cutoff c) and horizon H, the window is (c, c + H]. A purchase is a
positive-amount transaction; purchases are counted as distinct purchase days. Revenue is net
of refunds. Time to next purchase is censored at the end of the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import duckdb
import pandas as pd

from training.config import as_utc

LABEL_COLUMNS = ("bought_last_365d", "days_to_next_purchase", "next_purchase_observed")
LABEL_PREFIXES = ("future_", "observable_")


def is_label(column: str) -> bool:
    """True for every column ``build_labels`` adds: such a column must never be a model input."""
    return column in LABEL_COLUMNS or column.startswith(LABEL_PREFIXES)

LABELS_SQL = """
WITH rows AS (SELECT customer_id, cutoff FROM entity_rows),
tx AS (
    SELECT t.customer_id, r.cutoff, t."timestamp" AS ts, t.amount,
           date_diff('second', r.cutoff, t."timestamp") / 86400.0 AS after_days
    FROM transactions t JOIN rows r USING (customer_id)
    WHERE t."timestamp" > r.cutoff - INTERVAL 365 DAY
)
SELECT r.customer_id, r.cutoff,
       coalesce(bool_or(tx.amount > 0 AND tx.after_days <= 0), false) AS bought_last_365d,
       min(tx.after_days) FILTER (WHERE tx.amount > 0 AND tx.after_days > 0) AS days_to_next_purchase,
       {windows}
FROM rows r LEFT JOIN tx ON tx.customer_id = r.customer_id AND tx.cutoff = r.cutoff
GROUP BY r.customer_id, r.cutoff
"""


def build_labels(
    con: duckdb.DuckDBPyConnection,
    entity_rows: pd.DataFrame,
    horizons: Sequence[int],
    revenue_horizons: Sequence[int],
    data_end: datetime,
) -> pd.DataFrame:
    """Labels for each (customer_id, cutoff) row.

    ``con`` has a ``transactions`` view (see ``training.features.snapshots.connect``).
    Columns: ``bought_last_365d`` (the churn population), ``future_purchase_days_{H}d`` for
    every horizon, ``future_revenue_{H}d`` for each revenue horizon, ``observable_{H}d`` (the window ends by
    ``data_end``), ``days_to_next_purchase`` and ``next_purchase_observed`` (censoring flag:
    if no purchase by ``data_end``, the time is the censoring time).
    """
    data_end = as_utc(data_end)
    rows = entity_rows[["customer_id", "cutoff"]].copy()
    rows["cutoff"] = pd.to_datetime(rows["cutoff"], utc=True)
    windows = []
    for h in sorted(set(horizons) | set(revenue_horizons)):
        windows.append(
            f"count(DISTINCT date_trunc('day', tx.ts)) FILTER "
            f"(WHERE tx.amount > 0 AND tx.after_days > 0 AND tx.after_days <= {h}) AS future_purchase_days_{h}d"
        )
    for h in sorted(set(revenue_horizons)):
        windows.append(
            f"coalesce(sum(tx.amount) FILTER (WHERE tx.after_days > 0 AND tx.after_days <= {h}), 0) AS future_revenue_{h}d"
        )
    con.register("entity_rows", rows)
    try:
        labels = con.execute(LABELS_SQL.format(windows=",\n       ".join(windows))).df()
    finally:
        con.unregister("entity_rows")
    labels["cutoff"] = pd.to_datetime(labels["cutoff"], utc=True)
    labels = rows.merge(labels, on=["customer_id", "cutoff"], how="left", validate="one_to_one")
    remaining = (data_end - labels["cutoff"]).dt.total_seconds() / 86_400
    labels["next_purchase_observed"] = labels["days_to_next_purchase"].notna()
    labels["days_to_next_purchase"] = labels["days_to_next_purchase"].fillna(remaining)
    for h in sorted(set(horizons) | set(revenue_horizons)):
        labels[f"observable_{h}d"] = remaining >= h
        labels[f"future_purchase_days_{h}d"] = labels[f"future_purchase_days_{h}d"].astype(int)
    return labels
