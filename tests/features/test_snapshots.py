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


def _snapshot_of(tmp_path: Path, transactions: pd.DataFrame) -> pd.DataFrame:
    paths = Paths(tmp_path)
    paths.raw.mkdir(parents=True, exist_ok=True)
    transactions = transactions.assign(timestamp=pd.to_datetime(transactions["timestamp"], utc=True))
    transactions.to_parquet(paths.raw_table("transactions"), index=False)
    build_snapshots(paths, [CUTOFF])
    return pd.read_parquet(paths.features / "customer_transactions.parquet").set_index("customer_id")


def test_the_lines_of_an_order_are_one_order(tmp_path: Path) -> None:
    lines = pd.DataFrame(
        [
            ("a", "2025-05-01 10:00", 6 * 2.5, "1001", "X", 6.0, 2.5, "home"),
            ("a", "2025-05-01 10:00", 2 * 10.0, "1001", "Y", 2.0, 10.0, "apparel"),
            ("a", "2025-05-01 10:00", 1 * 4.0, "1001", "Z", 1.0, 4.0, "home"),
            ("a", "2025-06-01 10:00", -10.0, "C1002", "Y", -1.0, 10.0, "apparel"),  # a cancellation
            ("a", "2025-06-10 10:00", 5.0, "1003", "Z", 1.0, 5.0, "home"),
        ],
        columns=["customer_id", "timestamp", "amount", "order_id", "product_id", "quantity", "unit_price", "category"],
    )
    a = _snapshot_of(tmp_path, lines).loc["a"]
    assert a["orders_total"] == 2 and a["purchase_days_total"] == 2
    assert a["avg_order_value"] == pytest.approx((39.0 + 5.0) / 2)  # per order, not per line
    assert a["max_order_value"] == pytest.approx(39.0)
    assert a["revenue_total"] == pytest.approx(39.0 - 10.0 + 5.0)
    assert a["refund_rate"] == pytest.approx(1 / 2)
    assert a["share_home"] == pytest.approx(3 / 4)  # of purchase lines: an order spans categories


@pytest.mark.parametrize("missing", ["order_id", "product_id", "quantity", "unit_price", "category", "channel", "discount", "all"])
def test_any_optional_column_may_be_missing(tmp_path: Path, missing: str) -> None:
    """Features that need a missing column are null; the others are what the full log gives."""
    from training.data.schemas import OPTIONAL_COLUMNS

    full = pd.DataFrame(
        [
            ("a", "2025-05-01 10:00", 20.0, "o1", "X", 2.0, 10.0, "home", "web", 5.0),
            ("a", "2025-06-01 10:00", 8.0, "o2", "Y", 1.0, 8.0, "sustainable", "app", 0.0),
            ("b", "2025-06-02 10:00", 12.0, "o3", "X", 1.0, 12.0, "home", "web", 0.0),
        ],
        columns=["customer_id", "timestamp", "amount", *OPTIONAL_COLUMNS["transactions"]],
    )
    dropped = OPTIONAL_COLUMNS["transactions"] if missing == "all" else [missing]
    reference = _snapshot_of(tmp_path / "full", full)
    features = _snapshot_of(tmp_path / "part", full.drop(columns=dropped))
    needs = {"category": ["share_home", "share_sustainable"], "discount": ["discount_share"]}
    nulled = [c for column in dropped for c in needs.get(column, [])]
    assert features[nulled].isna().all().all()
    kept = [c for c in reference.columns if c not in nulled and not c.startswith("share_") and c not in ("category_count", "category_entropy")]
    pd.testing.assert_frame_equal(features[kept].sort_index(), reference[kept].sort_index())
