"""Point-in-time correctness: no feature sees the future, and Feast serves what SQL computed."""

from __future__ import annotations

import shutil
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from training.config import Config
from training.features import accelerated
from training.features import store as feature_store
from training.features.snapshots import build_snapshots, connect, snapshot_frame

RNG = np.random.default_rng(11)


def _sample_rows(world, n: int, cutoffs) -> pd.DataFrame:
    profile = pd.read_parquet(world.paths.features / "customer_profile.parquet")
    ids = RNG.choice(profile["customer_id"].to_numpy(), size=n, replace=False)
    return pd.DataFrame({"customer_id": ids, "cutoff": RNG.choice(np.asarray(cutoffs, dtype=object), size=n)})


def _expected_from_raw(raw: dict[str, pd.DataFrame], customer_id: str, cutoff: pd.Timestamp) -> dict:
    """An independent pandas recomputation of core features from rows dated at or before ``cutoff``."""
    tx = raw["transactions"].query("customer_id == @customer_id and timestamp <= @cutoff")
    ev = raw["events"].query("customer_id == @customer_id and timestamp <= @cutoff")
    buys = tx[tx["amount"] > 0]
    distinct = buys["timestamp"].dt.floor("D").drop_duplicates().sort_values()
    gaps = distinct.diff().dropna().dt.total_seconds().to_numpy() / 86_400

    def within(frame: pd.DataFrame, n_days: int, column: str = "timestamp") -> pd.DataFrame:
        return frame[frame[column] > cutoff - timedelta(days=n_days)]

    return {
        "purchase_days_total": len(distinct),
        "purchase_days_90d": int((distinct > cutoff - timedelta(days=90)).sum()),
        "revenue_total": round(tx["amount"].sum(), 6),
        "revenue_365d": round(within(tx, 365)["amount"].sum(), 6),
        "orders_total": len(buys),
        "last_purchase_at": buys["timestamp"].max() if len(buys) else pd.NaT,
        "gap_mean_days": gaps.mean() if len(gaps) else np.nan,
        "share_sustainable": (buys["category"] == "sustainable").mean() if len(buys) else np.nan,
        "sessions_30d": int((within(ev, 30)["event_type"] == "session").sum()),
        "email_sends_90d": int((within(ev, 90)["event_type"] == "email_send").sum()),
        "unsubscribed": bool((ev["event_type"] == "email_unsubscribe").any()),
    }


@pytest.fixture(scope="module")
def raw(feature_world) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(feature_world.paths.raw_table(name)) for name in ("transactions", "events")}


def test_feature_views_declare_exactly_the_sql_columns(feature_world) -> None:
    con = connect(feature_world.paths)
    try:
        for view in feature_store.BATCH_VIEWS:
            if view.name == "customer_profile":
                columns = pd.read_parquet(feature_world.paths.features / "customer_profile.parquet").columns
            else:
                columns = snapshot_frame(con, view.name, feature_world.cutoffs[-1]).columns
            produced = set(columns) - {"customer_id", view.batch_source.timestamp_field}
            assert produced == {field.name for field in view.schema} - {"customer_id"}, view.name
    finally:
        con.close()


def test_feast_matches_a_recomputation_from_past_rows(feature_world, raw) -> None:
    rows = _sample_rows(feature_world, 60, feature_world.cutoffs)
    served = feature_store.training_frame(feature_world.store, rows)
    assert served["customer_id"].tolist() == rows["customer_id"].tolist()
    checked = 0
    for _, row in served.iterrows():
        if pd.isna(row["signup_at"]):
            continue  # signed up after this cutoff: nothing to compare
        expected = _expected_from_raw(raw, row["customer_id"], row["cutoff"])
        for name, value in expected.items():
            got = row[name]
            if isinstance(value, pd.Timestamp) or value is pd.NaT:
                assert (pd.isna(got) and pd.isna(value)) or got == value, (name, row["customer_id"])
            elif isinstance(value, float) and np.isnan(value):
                assert pd.isna(got), (name, row["customer_id"])
            else:
                assert got == pytest.approx(value, abs=1e-6), (name, row["customer_id"], row["cutoff"])
        checked += 1
    assert checked >= 30


def test_rows_after_the_cutoff_change_nothing(feature_world, tmp_path) -> None:
    """Snapshots from a log truncated at the cutoff equal what Feast serves from the full log."""
    cutoff = feature_world.cutoffs[2]
    truncated = Config(data_dir=tmp_path)
    truncated.paths.raw.mkdir(parents=True)
    for name in ("transactions", "events", "customers"):
        frame = pd.read_parquet(feature_world.paths.raw_table(name))
        column = "signup_at" if name == "customers" else "timestamp"
        frame[frame[column] <= cutoff].to_parquet(truncated.paths.raw_table(name), index=False)
    build_snapshots(truncated.paths, [cutoff])
    recomputed = {
        view: pd.read_parquet(truncated.paths.features / f"{view}.parquet").set_index("customer_id")
        for view in ("customer_transactions", "customer_behaviour")
    }
    ids = recomputed["customer_transactions"].index.to_numpy()
    rows = pd.DataFrame({"customer_id": RNG.choice(ids, 200, replace=False), "cutoff": cutoff})
    served = feature_store.training_frame(feature_world.store, rows).set_index("customer_id")
    for expected in recomputed.values():
        columns = [c for c in expected.columns if c != "snapshot_at"]
        pd.testing.assert_frame_equal(
            served.loc[rows["customer_id"], columns],
            expected.loc[rows["customer_id"], columns],
            check_dtype=False,
            check_names=False,
        )


def test_recency_is_exact_between_snapshots(feature_world) -> None:
    """Between snapshot dates, windowed counts stay at the last snapshot but ages keep growing."""
    snapshot = feature_world.cutoffs[-2]
    later = snapshot + timedelta(days=17, hours=5)
    rows = _sample_rows(feature_world, 40, [snapshot])
    at_snapshot = feature_store.training_frame(feature_world.store, rows)
    at_later = feature_store.training_frame(feature_world.store, rows.assign(cutoff=later))
    pd.testing.assert_series_equal(at_snapshot["purchase_days_90d"], at_later["purchase_days_90d"])
    bought = at_snapshot["last_purchase_at"].notna()
    assert bought.sum() > 10
    expected_age = (later - at_later["last_purchase_at"]).dt.total_seconds() / 86_400
    np.testing.assert_allclose(at_later.loc[bought, "days_since_last_purchase"], expected_age[bought])
    np.testing.assert_allclose(
        at_later.loc[bought, "days_since_last_purchase"] - at_snapshot.loc[bought, "days_since_last_purchase"],
        (later - snapshot).total_seconds() / 86_400,
    )


def test_no_features_before_signup(feature_world) -> None:
    customers = pd.read_parquet(feature_world.paths.raw_table("customers"))
    late = customers[customers["signup_at"] > feature_world.cutoffs[0]].head(20)
    rows = pd.DataFrame({"customer_id": late["customer_id"], "cutoff": feature_world.cutoffs[0]})
    served = feature_store.training_frame(feature_world.store, rows)
    assert served["signup_at"].isna().all()
    assert served["purchase_days_total"].isna().all()


def test_online_values_equal_the_latest_offline_values(feature_world) -> None:
    latest = feature_world.cutoffs[-1]
    rows = _sample_rows(feature_world, 50, [latest])
    offline = feature_store.training_frame(feature_world.store, rows)
    online = pd.DataFrame(feature_store.online_features(feature_world.store, rows["customer_id"].tolist(), latest))
    assert online["customer_id"].tolist() == offline["customer_id"].tolist()
    for column in online.columns.drop("customer_id"):
        left, right = online[column], offline[column]
        if pd.api.types.is_datetime64_any_dtype(right):
            left = pd.to_datetime(left, utc=True)
            assert ((left == right) | (left.isna() & right.isna())).all(), column
        elif pd.api.types.is_numeric_dtype(right) and not pd.api.types.is_bool_dtype(right):
            np.testing.assert_allclose(left.astype(float), right.astype(float), rtol=1e-9, err_msg=column)
        else:
            assert [None if pd.isna(v) else v for v in left] == [None if pd.isna(v) else v for v in right], column


def test_training_frames_equal_feasts_retrieval_of_the_service(feature_world) -> None:
    """``training_frame`` computes request-time ages from just their inputs: the frame equals
    Feast's own retrieval of the whole feature service, column for column."""
    rows = _sample_rows(feature_world, 300, feature_world.cutoffs[-3:])
    ours = feature_store.training_frame(feature_world.store, rows)
    cutoff = pd.to_datetime(rows["cutoff"], utc=True).to_numpy()
    entity_df = pd.DataFrame({"customer_id": rows["customer_id"].to_numpy(), "event_timestamp": cutoff,
                              feature_store.REQUEST_TIME: cutoff, "_row": range(len(rows))})
    feast_own = feature_world.store.get_historical_features(
        entity_df=entity_df, features=feature_store.service(feature_world.store)
    ).to_df().sort_values("_row").reset_index(drop=True)
    feast_own = feast_own.drop(columns=["_row", feature_store.REQUEST_TIME]).rename(columns={"event_timestamp": "cutoff"})
    assert ours["customer_id"].tolist() == rows["customer_id"].tolist()
    assert ours["days_since_last_purchase"].notna().any() and ours["days_since_last_purchase"].isna().any()
    pd.testing.assert_frame_equal(ours, feast_own[ours.columns], check_exact=True)
    assert sorted(ours.columns) == sorted(feast_own.columns)


def test_online_reader_equals_feasts_read_of_the_service(feature_world) -> None:
    """What serving reads (``OnlineReader``: stored views via Feast, request-time ages by the
    view's own transformation, fast conversion) is exactly Feast's ``to_dict()`` of the
    whole service, nulls, timestamps and unknown customers included."""
    latest = feature_world.cutoffs[-1] + timedelta(days=3, hours=5)
    ids = [*_sample_rows(feature_world, 30, [latest])["customer_id"], "NO-SUCH-CUSTOMER"]
    response = feature_world.store.get_online_features(
        features=feature_store.service(feature_world.store),
        entity_rows=[{"customer_id": cid, feature_store.REQUEST_TIME: latest} for cid in ids],
    )
    feast_own = response.to_dict()
    assert accelerated.response_columns(response) == feast_own
    served = feature_store.OnlineReader.of(feature_world.store).read(ids, latest)
    assert sorted(served) == sorted(feast_own)  # the same columns (the order is not a contract)
    for column, values in feast_own.items():
        assert [type(v) for v in served[column]] == [type(v) for v in values], column
        assert served[column] == values, column
    assert served["signup_at"][-1] is None and served["days_since_last_purchase"][-1] is None
    assert any(v is not None for v in served["days_since_last_purchase"])


def test_snapshot_rows_are_bounded_by_snapshot_dates(feature_world) -> None:
    snapshots = pd.read_parquet(feature_world.paths.features / "customer_transactions.parquet")
    customers = pd.read_parquet(feature_world.paths.raw_table("customers"))
    assert snapshots["snapshot_at"].nunique() == len(feature_world.cutoffs)
    assert len(snapshots) <= len(customers) * len(feature_world.cutoffs)
    assert not snapshots.duplicated(["customer_id", "snapshot_at"]).any()


def test_snapshots_are_rebuilt_atomically(feature_world, tmp_path) -> None:
    copy = Config(data_dir=tmp_path)
    shutil.copytree(feature_world.paths.raw, copy.paths.raw)
    build_snapshots(copy.paths, feature_world.cutoffs[-2:])
    leftovers = [p.name for p in copy.paths.features.iterdir() if p.name.startswith(".") or p.suffix == ".partial"]
    assert leftovers == []
