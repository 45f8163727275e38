"""The generator: deterministic for a seed, internally consistent, plausible."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data import generate as gen
from training.data.generate import GenerationSpec, generate
from training.data.schemas import OPTIONAL_COLUMNS, SCHEMAS

FILES = ["raw/customers.parquet", "raw/transactions.parquet", "raw/events.parquet", "truth/latent.parquet"]


def _digests(root: Path) -> dict[str, str]:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in FILES}


def test_same_seed_gives_identical_bytes_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gen, "CHUNK_SIZE", 150)  # several chunks, as at scale
    spec = gen.GenerationSpec(customers=400, seed=3, days=400)
    gen.generate(spec, tmp_path / "a")
    gen.generate(spec, tmp_path / "b")
    gen.generate(gen.GenerationSpec(customers=400, seed=4, days=400), tmp_path / "c")
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert _digests(tmp_path / "a")["raw/transactions.parquet"] != _digests(tmp_path / "c")["raw/transactions.parquet"]
    customers = pd.read_parquet(tmp_path / "a/raw/customers.parquet")
    assert customers["customer_id"].is_unique and len(customers) == 400
    assert not list((tmp_path / "a").rglob("*.partial"))


@pytest.fixture(scope="module")
def tables(generated_dir: Path) -> dict[str, pd.DataFrame]:
    return {name.split("/")[1].removesuffix(".parquet"): pd.read_parquet(generated_dir / name) for name in FILES}


def test_tables_meet_the_canonical_schemas(tables: dict[str, pd.DataFrame]) -> None:
    for name in ("transactions", "events", "customers"):
        SCHEMAS[name].validate(tables[name])


def test_latent_truth_is_kept_apart_from_raw(generated_dir: Path, tables: dict[str, pd.DataFrame]) -> None:
    assert not (generated_dir / "raw" / "latent.parquet").exists()
    assert "purchase_rate_per_day" not in tables["customers"].columns
    assert set(tables["latent"]["customer_id"]) == set(tables["customers"]["customer_id"])


def test_everything_happens_inside_the_history_and_after_signup(tables: dict[str, pd.DataFrame]) -> None:
    start, end = pd.Timestamp("2024-11-01", tz="UTC"), pd.Timestamp("2026-11-01", tz="UTC")
    signup = tables["customers"].set_index("customer_id")["signup_at"]
    for name in ("transactions", "events"):
        frame = tables[name]
        assert frame["timestamp"].between(start, end, inclusive="left").all(), name
        assert (frame["timestamp"].to_numpy() >= signup.reindex(frame["customer_id"]).to_numpy()).all(), name


def test_purchase_behaviour_is_plausible(tables: dict[str, pd.DataFrame]) -> None:
    tx, customers = tables["transactions"], tables["customers"]
    purchases = tx[tx["amount"] > 0]
    buyers = purchases["customer_id"].nunique() / len(customers)
    assert 0.75 <= buyers <= 0.97
    days = purchases.assign(day=purchases["timestamp"].dt.floor("D")).groupby("customer_id")["day"].nunique()
    assert 2.0 <= days.mean() <= 15.0
    assert 0.25 <= (days > 1).mean() <= 0.85  # many repeat buyers, not all
    assert 20 <= purchases["amount"].median() <= 80
    refunds = tx[tx["amount"] < 0]
    assert 0.01 <= len(refunds) / len(purchases) <= 0.10
    originals = tx.set_index("order_id")["amount"]
    refunded = originals.reindex(refunds["order_id"].str.removesuffix("-R")).to_numpy()
    assert (-refunds["amount"].to_numpy() <= refunded + 1e-9).all()
    assert 0.10 <= (purchases["discount"] > 0).mean() <= 0.40
    assert tx["order_id"].is_unique


def test_interests_drive_the_category_mix(tables: dict[str, pd.DataFrame]) -> None:
    purchases = tables["transactions"].query("amount > 0")
    interest = tables["customers"].set_index("customer_id")["interest_sustainable"]
    share = purchases.assign(s=purchases["category"] == "sustainable").groupby("customer_id")["s"].mean()
    by_interest = share.groupby(interest.reindex(share.index)).mean()
    assert by_interest[True] > 2 * by_interest[False]


def test_purchases_peak_before_christmas(tables: dict[str, pd.DataFrame]) -> None:
    purchases = tables["transactions"].query("amount > 0")
    month = purchases["timestamp"].dt.month
    year = purchases["timestamp"].dt.year
    december = ((month == 12) & (year == 2025)).sum()
    august = ((month == 8) & (year == 2025)).sum()
    assert december > 1.3 * august


def test_engagement_fades_before_dropout(tables: dict[str, pd.DataFrame]) -> None:
    truth = tables["latent"].set_index("customer_id")
    sessions = tables["events"].query("event_type == 'session'")
    dropout = truth["dropout_at"].reindex(sessions["customer_id"]).to_numpy()
    before = (dropout - sessions["timestamp"].to_numpy()) / np.timedelta64(1, "D")
    # Sessions per window: the 30 days before dropout see far fewer than 90-120 days before.
    late = ((before > 0) & (before <= 30)).sum()
    early = ((before > 90) & (before <= 120)).sum()
    assert late < 0.75 * early
    after = sessions[(before < 0)]
    assert len(after) < 0.2 * len(sessions)


def test_email_engagement_is_consistent(tables: dict[str, pd.DataFrame]) -> None:
    events, customers = tables["events"], tables["customers"]
    counts = events["event_type"].value_counts()
    assert counts["email_open"] < counts["email_send"]
    assert counts["email_click"] < counts["email_open"]
    senders = set(events.loc[events["event_type"] == "email_send", "customer_id"])
    consenting = set(customers.loc[customers["marketing_consent"], "customer_id"])
    assert senders <= consenting
    unsub = events[events["event_type"] == "email_unsubscribe"].groupby("customer_id")["timestamp"].min()
    sends = events[events["event_type"] == "email_send"]
    later = sends["timestamp"].to_numpy() > unsub.reindex(sends["customer_id"]).to_numpy()
    assert not later.any(), "no e-mail is sent after an unsubscribe"


def test_export_shapes_line_items_and_missing_columns(tmp_path: Path) -> None:
    """The generator writes what real shops export: line items, a bare log, no customer table;
    the same customers buy the same days whatever the shape."""
    base = GenerationSpec(customers=300, seed=3)
    generate(base, tmp_path / "full")
    generate(replace(base, line_items=True, omit_columns=("discount", "channel")), tmp_path / "lines")
    generate(replace(base, transactions_only=True, omit_columns=tuple(OPTIONAL_COLUMNS["transactions"])), tmp_path / "bare")
    full = pd.read_parquet(tmp_path / "full/raw/transactions.parquet")
    lines = pd.read_parquet(tmp_path / "lines/raw/transactions.parquet")
    bare = pd.read_parquet(tmp_path / "bare/raw/transactions.parquet")
    assert list(bare.columns) == ["customer_id", "timestamp", "amount"]
    assert not (tmp_path / "bare/raw/customers.parquet").exists() and not (tmp_path / "bare/raw/events.parquet").exists()
    assert {"product_id", "unit_price"} <= set(lines.columns) and not {"discount", "channel"} & set(lines.columns)
    assert lines["order_id"].duplicated().any()  # several lines per order
    np.testing.assert_allclose(lines["amount"], lines["quantity"] * lines["unit_price"], atol=0.006)
    assert ((lines["amount"] < 0) == (lines["quantity"] < 0)).all()
    orders = lines.groupby("order_id")["amount"].sum()
    gap = np.abs(orders.reindex(full["order_id"]).to_numpy() - full["amount"].to_numpy())
    assert (gap <= 0.05 + 0.01 * full["amount"].abs().to_numpy()).all()
    pd.testing.assert_frame_equal(bare, full[["customer_id", "timestamp", "amount"]])
    SCHEMAS["transactions"].validate(lines)
