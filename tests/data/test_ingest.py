"""Importing real data: mapping, validation, quarantine, idempotence, atomicity."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.cli import app
from training.config import Paths
from training.data.ingest import ImportOptions, IngestError, ingest, normalize

AS_OF = datetime(2026, 1, 1, tzinfo=UTC)
SHOP_MAPPING = {"customer_id": "ClientID", "timestamp": "Date", "amount": "Total", "order_id": "Order"}
GOOD = """ClientID,Date,Total,Order,Category
A1,03/01/2025 10:00,12.50,o1,home
A1,05/01/2025 11:00,-12.50,o1r,home
B2,07/01/2025 10:00,8,o6,grocery
"""
BAD_ROWS = """,05/01/2025 11:00,3,o2,home
B2,31/02/2025 10:00,3,o3,home
B2,04/01/2025 10:00,abc,o4,home
B2,04/01/2031 10:00,5,o5,home
B2,06/01/2025 10:00,7,o1,home
"""


def _options(**extra) -> ImportOptions:
    return ImportOptions(
        columns={**SHOP_MAPPING, "category": "Category"}, date_format="%d/%m/%Y %H:%M", as_of=AS_OF, **extra
    )


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_good_file_is_mapped_to_the_canonical_schema(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "data")
    [report] = ingest(paths, {"transactions": _write(tmp_path, "t.csv", GOOD)}, _options())
    assert (report.rows_read, report.rows_added, report.rows_quarantined) == (3, 3, 0)
    table = pd.read_parquet(paths.raw_table("transactions"))
    assert list(table.columns) == ["customer_id", "timestamp", "amount", "order_id", "category"]
    assert str(table["timestamp"].dtype) == "datetime64[us, UTC]"
    assert table["timestamp"].iloc[0] == pd.Timestamp("2025-01-03 10:00", tz="UTC")
    assert table["amount"].tolist() == [12.5, -12.5, 8.0]


def test_bad_rows_are_quarantined_with_a_reason_and_counted(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "data")
    source = _write(tmp_path, "t.csv", GOOD + BAD_ROWS)
    [report] = ingest(paths, {"transactions": source}, _options())
    assert report.rows_added == 3
    assert report.reasons == {
        "missing customer_id": 1,
        "unparseable timestamp": 1,
        "non-numeric amount": 1,
        "future timestamp": 1,
        "order_id of another customer": 1,
    }
    quarantined = pd.read_csv(report.quarantine_file, dtype=str)
    assert len(quarantined) == report.rows_quarantined == 5
    assert set(quarantined["order_id"]) == {"o2", "o3", "o4", "o5", "o1"}
    assert "reason" in quarantined.columns
    # the original values are kept, untouched, for the user to fix
    assert quarantined.loc[quarantined["order_id"] == "o4", "amount"].item() == "abc"


def test_importing_the_same_file_twice_changes_nothing(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "data")
    source = _write(tmp_path, "t.csv", GOOD + BAD_ROWS)
    ingest(paths, {"transactions": source}, _options())
    before = _digest(paths.raw_table("transactions"))
    [again] = ingest(paths, {"transactions": source}, _options())
    assert again.rows_added == 0 and again.rows_already_present == 3
    assert _digest(paths.raw_table("transactions")) == before
    assert len(list(paths.quarantine.iterdir())) == 1


def test_a_new_file_appends_and_conflicting_order_ids_are_quarantined(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "data")
    ingest(paths, {"transactions": _write(tmp_path, "a.csv", GOOD)}, _options())
    later = "ClientID,Date,Total,Order,Category\nC3,08/01/2025 09:00,4,o7,home\nC3,08/01/2025 09:30,99,o1,home\n"
    [report] = ingest(paths, {"transactions": _write(tmp_path, "b.csv", later)}, _options())
    assert report.rows_added == 1
    assert report.reasons == {"order_id already imported for another customer": 1}
    assert len(pd.read_parquet(paths.raw_table("transactions"))) == 4


def test_missing_required_column_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "data")
    ingest(paths, {"transactions": _write(tmp_path, "t.csv", GOOD)}, _options())
    before = _digest(paths.raw_table("transactions"))
    broken = _write(tmp_path, "broken.csv", "ClientID,Date,Order\nA1,03/01/2025 10:00,o9\n")
    with pytest.raises(IngestError, match="missing required column.*amount"):
        ingest(paths, {"transactions": broken}, ImportOptions(columns={"customer_id": "ClientID", "timestamp": "Date"}))
    assert _digest(paths.raw_table("transactions")) == before


def test_one_bad_table_stops_the_whole_import(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "data")
    events = _write(tmp_path, "e.csv", "customer_id,when\nA1,2025-01-01\n")
    with pytest.raises(IngestError, match="events: missing required column.*timestamp"):
        ingest(paths, {"transactions": _write(tmp_path, "t.csv", GOOD), "events": events}, _options())
    assert not paths.raw_table("transactions").exists()


def test_time_zones_decimal_commas_and_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"cid": ["x", "y"], "when": ["2025-07-01 12:00", "2025-07-01 12:00"], "value": ["10,5", "1.234,25"]}
    )
    frame.to_parquet(tmp_path / "t.parquet")
    options = ImportOptions(
        columns={"customer_id": "cid", "timestamp": "when", "amount": "value"},
        timezone="Europe/Paris",
        decimal=",",
        as_of=AS_OF,
    )
    result = normalize("transactions", pd.read_parquet(tmp_path / "t.parquet"), options)
    clean, quarantined = result.clean, result.quarantined
    assert quarantined.empty
    assert clean["timestamp"].iloc[0] == pd.Timestamp("2025-07-01 10:00", tz="UTC")
    assert clean["amount"].tolist() == [10.5, 1234.25]


def test_events_and_customers_are_validated(tmp_path: Path) -> None:
    events = pd.DataFrame(
        {"customer_id": ["a", "a", "b"], "timestamp": ["2025-01-01", "2025-01-02", "2025-01-03"],
         "event_type": ["session", "teleport", "email_open"]}
    )
    result = normalize("events", events, ImportOptions(as_of=AS_OF))
    assert len(result.clean) == 2 and result.quarantined["reason"].tolist() == ["unknown event_type"]
    customers = pd.DataFrame(
        {"customer_id": ["a", "a", "b"], "signup_at": ["2024-01-01"] * 3, "marketing_consent": ["yes", "no", "maybe"]}
    )
    result = normalize("customers", customers, ImportOptions(as_of=AS_OF))
    assert result.clean["customer_id"].tolist() == ["a"]
    assert sorted(result.quarantined["reason"]) == ["duplicate customer_id", "invalid marketing_consent"]


def test_cli_reports_a_missing_column_without_a_traceback(tmp_path: Path) -> None:
    broken = _write(tmp_path, "broken.csv", "ClientID,Date\nA1,2025-01-01\n")
    result = CliRunner().invoke(app, ["ingest", "--transactions", str(broken), "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "missing required column" in result.output and "customer_id" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "d" / "raw").exists()


def test_cli_prints_a_summary_with_the_quarantine_counts(tmp_path: Path) -> None:
    source = _write(tmp_path, "t.csv", GOOD + BAD_ROWS)
    args = ["ingest", "--transactions", str(source), "--data-dir", str(tmp_path / "d"), "--as-of", "2026-01-01",
            "--date-format", "%d/%m/%Y %H:%M"]
    for canonical, name in SHOP_MAPPING.items():
        args += ["--column", f"{canonical}={name}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "quarantined" in result.output and "future timestamp: 1" in result.output
