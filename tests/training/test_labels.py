"""Labels on hand-made logs: the window after the cutoff, and nothing else."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest

from training.dataset import entity_rows
from training.labels import build_labels, is_label

CUTOFF = pd.Timestamp("2025-03-01", tz="UTC")
END = pd.Timestamp("2025-12-31", tz="UTC")


@pytest.fixture()
def labels() -> pd.DataFrame:
    tx = pd.DataFrame(
        [
            ("a", "2025-03-01 00:00:00", 10.0),  # exactly at the cutoff: history, not label
            ("a", "2025-03-10 09:00:00", 20.0),
            ("a", "2025-03-10 15:00:00", 5.0),  # same day: one purchase day
            ("a", "2025-03-20 09:00:00", -20.0),  # refund: netted in revenue, not a purchase
            ("a", "2025-05-01 09:00:00", 30.0),
            ("b", "2024-12-01 09:00:00", 50.0),  # one purchase, before the cutoff only
            ("c", "2023-12-01 09:00:00", 50.0),  # last bought over a year before the cutoff
            ("c", "2025-11-15 09:00:00", 12.0),
        ],
        columns=["customer_id", "timestamp", "amount"],
    )
    tx["timestamp"] = pd.to_datetime(tx["timestamp"], utc=True)
    con = duckdb.connect()
    con.register("transactions", tx)
    customers = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "late"],
            "signup_at": pd.to_datetime(["2025-01-01", "2024-11-01", "2023-11-01", "2025-04-01"], utc=True),
        }
    )
    rows = entity_rows(customers, [CUTOFF])
    return build_labels(con, rows, [7, 30, 90, 365], [365], END).set_index("customer_id")


def test_customers_who_sign_up_after_the_cutoff_get_no_row(labels: pd.DataFrame) -> None:
    assert sorted(labels.index) == ["a", "b", "c"]


def test_a_purchase_at_the_cutoff_is_history(labels: pd.DataFrame) -> None:
    a = labels.loc["a"]
    assert a["future_purchase_days_7d"] == 0
    assert a["future_purchase_days_30d"] == 1  # the two March 10 purchases are one day
    assert a["future_purchase_days_90d"] == 2
    assert a["days_to_next_purchase"] == pytest.approx(9.375)
    assert bool(a["next_purchase_observed"])
    assert bool(a["bought_last_365d"])


def test_refunds_are_netted_in_revenue(labels: pd.DataFrame) -> None:
    assert labels.loc["a", "future_revenue_365d"] == pytest.approx(20 + 5 - 20 + 30)


def test_one_purchase_customers_are_censored_at_the_end_of_the_data(labels: pd.DataFrame) -> None:
    b = labels.loc["b"]
    assert not b["next_purchase_observed"]
    assert b["days_to_next_purchase"] == pytest.approx((END - CUTOFF).days)
    assert b["future_purchase_days_365d"] == 0 and b["future_revenue_365d"] == 0


def test_the_churn_population_is_last_years_buyers(labels: pd.DataFrame) -> None:
    assert not labels.loc["c", "bought_last_365d"]
    assert labels.loc["c", "future_purchase_days_365d"] == 1


def test_observability_of_each_window(labels: pd.DataFrame) -> None:
    assert labels.loc["a", "observable_90d"]
    assert not labels.loc["a", "observable_365d"]  # the window runs past the end of the data


def test_label_columns_are_recognised() -> None:
    assert is_label("future_revenue_365d") and is_label("bought_last_365d")
    assert not is_label("revenue_365d") and not is_label("purchase_days_30d")
