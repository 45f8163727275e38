"""Snapshot SQL on hand-made logs, where every expected value can be worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from training.config import Paths
from training.features.snapshots import build_snapshots

CUTOFF = pd.Timestamp("2025-06-30 00:00", tz="UTC")


def _ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


@pytest.fixture()
def snapshot(tmp_path: Path) -> dict[str, pd.DataFrame]:
    paths = Paths(tmp_path)
    paths.raw.mkdir(parents=True)
    transactions = pd.DataFrame(
        [
            ("a", "2025-01-10 10:00", 50.0, "o1", "home", 0.0),
            ("a", "2025-01-10 18:00", 30.0, "o2", "sustainable", 5.0),  # same day: one purchase day
            ("a", "2025-01-20 09:00", -30.0, "o2-R", "sustainable", 0.0),  # refund, netted
            ("a", "2025-06-20 12:00", 20.0, "o3", "home", 0.0),
            ("a", "2025-06-30 00:00", 10.0, "o4", "grocery", 0.0),  # exactly at the cutoff: counted
            ("a", "2025-06-30 00:00:01", 999.0, "o5", "home", 0.0),  # one second later: not counted
            ("b", "2025-03-01 08:00", 40.0, "o6", "home", 0.0),  # a one-purchase customer
        ],
        columns=["customer_id", "timestamp", "amount", "order_id", "category", "discount"],
    )
    transactions["timestamp"] = pd.to_datetime(transactions["timestamp"], utc=True, format="ISO8601")
    transactions.to_parquet(paths.raw_table("transactions"), index=False)
    events = pd.DataFrame(
        [
            ("a", "2025-06-20 11:50", "session"),
            ("a", "2025-06-20 11:55", "cart_add"),  # bought that day: not abandoned
            ("a", "2025-06-25 10:00", "session"),
            ("a", "2025-06-25 10:05", "cart_add"),  # no purchase that day: abandoned
            ("a", "2025-06-01 09:00", "email_send"),
            ("a", "2025-06-01 12:00", "email_open"),
            ("a", "2025-06-15 09:00", "email_send"),
            ("b", "2025-04-01 09:00", "email_unsubscribe"),
            ("b", "2025-07-01 09:00", "session"),  # after the cutoff
        ],
        columns=["customer_id", "timestamp", "event_type"],
    )
    events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True)
    events.to_parquet(paths.raw_table("events"), index=False)
    customers = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "late"],
            "signup_at": [_ts("2025-01-01"), _ts("2025-02-01"), _ts("2025-02-01"), _ts("2025-07-15")],
        }
    )
    customers.to_parquet(paths.raw_table("customers"), index=False)
    build_snapshots(paths, [CUTOFF])
    return {
        view: pd.read_parquet(paths.features / f"{view}.parquet").set_index("customer_id")
        for view in ("customer_transactions", "customer_behaviour", "customer_profile")
    }


def test_transaction_features_by_hand(snapshot: dict[str, pd.DataFrame]) -> None:
    a = snapshot["customer_transactions"].loc["a"]
    assert a["snapshot_at"] == CUTOFF
    assert a["purchase_days_total"] == 3  # 01-10 (twice), 06-20, 06-30
    assert a["purchase_days_30d"] == 2
    assert a["orders_total"] == 4
    assert a["revenue_total"] == pytest.approx(80.0)  # 50 + 30 - 30 + 20 + 10
    assert a["revenue_30d"] == pytest.approx(30.0)
    assert a["last_purchase_at"] == _ts("2025-06-30 00:00")
    assert a["first_purchase_at"] == _ts("2025-01-10 10:00")
    assert a["gap_mean_days"] == pytest.approx((161 + 10) / 2)
    assert a["refund_rate"] == pytest.approx(1 / 4)
    assert a["discount_share"] == pytest.approx(1 / 4)
    assert a["share_home"] == pytest.approx(2 / 4)
    assert a["category_count"] == 3


def test_one_purchase_and_no_purchase_customers(snapshot: dict[str, pd.DataFrame]) -> None:
    tx = snapshot["customer_transactions"]
    b = tx.loc["b"]
    assert b["purchase_days_total"] == 1 and pd.isna(b["gap_mean_days"])
    c = tx.loc["c"]  # signed up, never bought: present with zeros, not missing
    assert c["purchase_days_total"] == 0 and c["revenue_total"] == 0 and pd.isna(c["last_purchase_at"])
    assert "late" not in tx.index  # signed up after the cutoff


def test_behaviour_features_by_hand(snapshot: dict[str, pd.DataFrame]) -> None:
    a = snapshot["customer_behaviour"].loc["a"]
    assert a["sessions_30d"] == 2
    assert a["cart_adds_30d"] == 2
    assert a["abandoned_cart_days_90d"] == 1
    assert a["cart_abandonment_rate_90d"] == pytest.approx(0.5)
    assert a["email_sends_90d"] == 2
    assert a["email_open_rate_90d"] == pytest.approx(0.5)
    assert a["last_engagement_at"] == _ts("2025-06-25 10:00")
    b = snapshot["customer_behaviour"].loc["b"]
    assert bool(b["unsubscribed"]) and b["sessions_30d"] == 0  # the July session is in the future


def test_profile_rows_start_at_signup(snapshot: dict[str, pd.DataFrame]) -> None:
    profile = snapshot["customer_profile"]
    assert (profile["profile_at"] == profile["signup_at"]).all()
    assert profile["region"].isna().all()  # optional columns absent from the import come out NULL


def test_two_builds_of_the_same_data_are_identical(generated_dir: Path, tmp_path: Path) -> None:
    """DuckDB sums floats on several threads in varying order; the SQL fixes the order, so the
    same raw data always gives the same bits (and the same models downstream)."""
    cutoffs = [pd.Timestamp("2025-03-01", tz="UTC") + pd.Timedelta(days=60 * k) for k in range(4)]
    builds = []
    for name in ("first", "second"):
        paths = Paths(tmp_path / name)
        paths.raw.mkdir(parents=True)
        for table in (generated_dir / "raw").iterdir():
            (paths.raw / table.name).symlink_to(table)
        build_snapshots(paths, cutoffs)
        builds.append(paths)
    for view in ("customer_transactions", "customer_behaviour", "customer_profile"):
        first, second = (pd.read_parquet(p.features / f"{view}.parquet") for p in builds)
        keys = [c for c in ("customer_id", "snapshot_at") if c in first.columns]
        first, second = (f.sort_values(keys).reset_index(drop=True) for f in (first, second))
        pd.testing.assert_frame_equal(first, second, check_exact=True)
