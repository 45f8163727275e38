"""Real exports as they come: line items, cancellations, spreadsheet ids, delimiters, Excel."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.cli import app
from training.config import Paths
from training.data.ingest import ImportOptions, IngestError, detect_delimiter, ingest, normalize

AS_OF = datetime(2026, 1, 1, tzinfo=UTC)
# An online shop's invoice lines: one row per product, cancellations as C-invoices with
# negative quantities, a line without a customer, a line exported twice, float customer ids.
LINES = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26,2.55,17850.0,United Kingdom
536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26,3.39,17850.0,United Kingdom
536365,84406B,CREAM CUPID HEARTS,8,2010-12-01 08:26,2.75,17850.0,United Kingdom
536366,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28,1.85,17850.0,United Kingdom
536367,22745,POPPY'S PLAYHOUSE,6,2010-12-01 08:34,2.10,13047.0,United Kingdom
536367,22745,POPPY'S PLAYHOUSE,6,2010-12-01 08:34,2.10,13047.0,United Kingdom
536367,22748,POPPY'S PLAYHOUSE KITCHEN,6,2010-12-01 08:34,2.10,13047.0,United Kingdom
536368,22960,JAM MAKING SET,6,2010-12-01 08:34,4.25,,United Kingdom
C536379,D,Discount,-1,2010-12-01 09:41,27.50,13047.0,United Kingdom
C536383,35004C,SET OF 3 COLOURED FLYING DUCKS,-1,2010-12-01 09:49,4.65,17850.0,United Kingdom
"""
LINE_MAPPING = {
    "order_id": "InvoiceNo", "product_id": "StockCode", "quantity": "Quantity", "timestamp": "InvoiceDate",
    "unit_price": "UnitPrice", "customer_id": "CustomerID",
}


def _lines(tmp_path: Path, text: str = LINES, name: str = "lines.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_lines_of_an_order_are_one_order_and_only_exact_repeats_are_duplicates(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "data")
    [report] = ingest(paths, {"transactions": _lines(tmp_path)}, ImportOptions(columns=LINE_MAPPING, as_of=AS_OF))
    assert report.reasons == {"missing customer_id": 1, "duplicate row": 1}
    assert report.rows_added == 8
    books = report.books
    assert (books.orders, books.lines_merged, books.refund_lines, books.refund_orders) == (3, 3, 2, 2)
    table = pd.read_parquet(paths.raw_table("transactions"))
    assert sorted(table["customer_id"].unique()) == ["13047", "17850"]  # 17850.0 read as 17850
    assert any("float-formatted" in note for note in report.notes)
    # amount = quantity x unit_price; cancellations are refunds, never purchases
    first = table[table["product_id"] == "85123A"].iloc[0]
    assert first["amount"] == pytest.approx(6 * 2.55)
    assert (table.loc[table["order_id"].str.startswith("C"), "amount"] < 0).all()


def test_revenue_reconciles_with_the_file_to_the_cent(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "data")
    [report] = ingest(paths, {"transactions": _lines(tmp_path)}, ImportOptions(columns=LINE_MAPPING, as_of=AS_OF))
    source = pd.read_csv(tmp_path / "lines.csv")
    revenue = source["Quantity"] * source["UnitPrice"]
    kept = source["CustomerID"].notna() & ~source.duplicated()
    assert report.books.balanced
    assert round(report.books.revenue_read, 2) == round(math.fsum(revenue), 2)
    assert round(report.books.revenue_imported, 2) == round(math.fsum(revenue[kept]), 2)
    stored = pd.read_parquet(paths.raw_table("transactions"))["amount"]
    assert round(math.fsum(stored), 2) == round(report.books.revenue_imported, 2)


def test_cancelled_order_ids_are_refunds_even_with_positive_quantities(tmp_path: Path) -> None:
    text = "order,customer,when,total\n1001,a,2025-01-02,10\nC1001,a,2025-01-03,10\n1002,b,2025-01-04,5\n"
    options = ImportOptions(columns={"order_id": "order", "customer_id": "customer", "timestamp": "when", "amount": "total"}, as_of=AS_OF)
    result = normalize("transactions", pd.read_csv(_lines(tmp_path, text), dtype=str), options)
    assert result.clean.set_index("order_id")["amount"].to_dict() == {"1001": 10.0, "C1001": -10.0, "1002": 5.0}
    assert any("cancellations" in note for note in result.notes)
    none = ImportOptions(**{**options.__dict__, "cancelled_prefix": ""})
    assert (normalize("transactions", pd.read_csv(tmp_path / "lines.csv", dtype=str), none).clean["amount"] > 0).all()


def test_reimporting_line_items_adds_nothing_and_keeps_equal_lines_apart(tmp_path: Path) -> None:
    # Two lines equal in every canonical column but not in the file (other descriptions).
    text = (
        "order,customer,when,sku,qty,price,description\n"
        "1,a,2025-01-02,X,1,2.5,red\n1,a,2025-01-02,X,1,2.5,blue\n2,a,2025-02-02,Y,1,4,green\n"
    )
    mapping = {"order_id": "order", "customer_id": "customer", "timestamp": "when", "product_id": "sku",
               "quantity": "qty", "unit_price": "price"}
    paths = Paths(tmp_path / "data")
    [first] = ingest(paths, {"transactions": _lines(tmp_path, text)}, ImportOptions(columns=mapping, as_of=AS_OF))
    assert first.rows_added == 3 and first.rows_quarantined == 0
    [again] = ingest(paths, {"transactions": _lines(tmp_path, text)}, ImportOptions(columns=mapping, as_of=AS_OF))
    assert (again.rows_added, again.rows_already_present) == (0, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,b,c\n1,2,3\n", ","),
        ("a;b;c\n1;2,5;3\n", ";"),
        ("a\tb\tc\n1\t2\t3\n", "\t"),
        ("a|b|c\n1|2|3\n", "|"),
        (" 00001 19970101  1   11.77\n 00002 19970112  1   12.00\n", r"\s+"),
    ],
)
def test_the_delimiter_is_detected(text: str, expected: str) -> None:
    assert detect_delimiter(text) == expected


def test_semicolon_file_with_decimal_commas_imports_without_options(tmp_path: Path) -> None:
    text = "customer_id;timestamp;amount\nA;2025-03-01 10:00;12,50\nB;2025-03-02 11:00;1.234,75\n"
    paths = Paths(tmp_path / "data")
    [report] = ingest(paths, {"transactions": _lines(tmp_path, text, "shop.csv")}, ImportOptions(as_of=AS_OF))
    assert report.rows_quarantined == 0
    assert pd.read_parquet(paths.raw_table("transactions"))["amount"].tolist() == [12.5, 1234.75]
    assert any("semicolon" in note for note in report.notes)


def test_whitespace_log_with_compact_dates_reads_like_cdnow(tmp_path: Path) -> None:
    text = " customer_id  date number_of_cds  dollar_value\n 00001 19970101  1   11.77\n 00002 19970112  5   77.00\n"
    options = ImportOptions(columns={"timestamp": "date", "amount": "dollar_value", "quantity": "number_of_cds"}, as_of=AS_OF)
    paths = Paths(tmp_path / "data")
    [report] = ingest(paths, {"transactions": _lines(tmp_path, text, "cdnow.txt")}, options)
    table = pd.read_parquet(paths.raw_table("transactions"))
    assert report.rows_quarantined == 0 and table["customer_id"].tolist() == ["00001", "00002"]
    assert table["timestamp"].tolist() == [pd.Timestamp("1997-01-01", tz="UTC"), pd.Timestamp("1997-01-12", tz="UTC")]


def test_excel_export_imports(tmp_path: Path) -> None:
    source = pd.read_csv(_lines(tmp_path), dtype=str)
    source["CustomerID"] = pd.to_numeric(source["CustomerID"])  # a spreadsheet keeps ids as floats
    source.to_excel(tmp_path / "lines.xlsx", index=False)
    paths = Paths(tmp_path / "data")
    [report] = ingest(paths, {"transactions": tmp_path / "lines.xlsx"}, ImportOptions(columns=LINE_MAPPING, as_of=AS_OF))
    assert report.rows_added == 8
    assert sorted(pd.read_parquet(paths.raw_table("transactions"))["customer_id"].unique()) == ["13047", "17850"]


def test_cli_summary_reconciles_orders_refunds_and_revenue(tmp_path: Path) -> None:
    args = ["ingest", "--transactions", str(_lines(tmp_path)), "--data-dir", str(tmp_path / "d"), "--as-of", "2026-01-01"]
    for canonical, name in LINE_MAPPING.items():
        args += ["--column", f"{canonical}={name}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 orders (3 lines merged" in result.output and "2 refund lines in 2 refunds" in result.output
    assert "does not balance" not in result.output and "imported" in result.output


def test_european_export_with_decimal_comma_ids_matches_the_comma_export(tmp_path: Path) -> None:
    source = pd.read_csv(_lines(tmp_path), dtype=str)
    european = source.assign(
        UnitPrice=source["UnitPrice"].str.replace(".", ",", regex=False),
        CustomerID=source["CustomerID"].str.replace(".", ",", regex=False),
    )
    european.to_csv(tmp_path / "eu.csv", sep=";", index=False)
    tables = []
    for name in ("lines.csv", "eu.csv"):
        paths = Paths(tmp_path / name.replace(".", "_"))
        ingest(paths, {"transactions": tmp_path / name}, ImportOptions(columns=LINE_MAPPING, as_of=AS_OF))
        tables.append(pd.read_parquet(paths.raw_table("transactions")))
    pd.testing.assert_frame_equal(*tables)
    assert sorted(tables[1]["customer_id"].unique()) == ["13047", "17850"]


def test_day_first_dates_are_read_day_first_on_every_row(tmp_path: Path) -> None:
    text = "customer_id,timestamp,amount\na,05/02/2025 10:00,1\nb,13/02/2025 10:00,2\n"
    result = normalize("transactions", pd.read_csv(_lines(tmp_path, text), dtype=str), ImportOptions(as_of=AS_OF))
    assert result.clean["timestamp"].tolist() == [pd.Timestamp("2025-02-05 10:00", tz="UTC"), pd.Timestamp("2025-02-13 10:00", tz="UTC")]
    assert any("day-first" in note for note in result.notes)
    mixed = "customer_id,timestamp,amount\na,05/13/2025,1\nb,13/05/2025,2\n"
    with pytest.raises(IngestError, match="day-first on some rows"):
        normalize("transactions", pd.read_csv(_lines(tmp_path, mixed), dtype=str), ImportOptions(as_of=AS_OF))


def test_a_date_format_that_fails_on_many_rows_stops_the_import(tmp_path: Path) -> None:
    text = "customer_id,timestamp,amount\n" + "".join(f"c{d},12/{d}/2025 08:26,1\n" for d in range(1, 29))
    paths = Paths(tmp_path / "data")
    with pytest.raises(IngestError, match="fails on 16 of 28"):
        ingest(paths, {"transactions": _lines(tmp_path, text)}, ImportOptions(date_format="%d/%m/%Y %H:%M", as_of=AS_OF))
    assert not paths.raw.exists()


def test_a_mapped_column_the_file_lacks_is_named(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="customer_id <- 'ClientID'"):
        normalize("transactions", pd.read_csv(_lines(tmp_path), dtype=str), ImportOptions(columns={**LINE_MAPPING, "customer_id": "ClientID"}))
    with pytest.raises(IngestError, match="unknown canonical column"):
        normalize("transactions", pd.read_csv(_lines(tmp_path), dtype=str), ImportOptions(columns={"client": "CustomerID"}))


def test_rows_refused_against_the_existing_table_leave_the_books_consistent(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "data")
    options = ImportOptions(columns=LINE_MAPPING, as_of=AS_OF)
    ingest(paths, {"transactions": _lines(tmp_path)}, options)
    other = pd.read_csv(tmp_path / "lines.csv", dtype=str).assign(CustomerID="99999.0", Description="again")
    other.to_csv(tmp_path / "other.csv", index=False)
    [report] = ingest(paths, {"transactions": tmp_path / "other.csv"}, options)
    # the guest line (quarantined the first time) now has a customer and a new order: added
    assert report.rows_added == 1 and report.reasons["order_id already imported for another customer"] == 8
    assert (report.books.lines, report.books.orders, report.books.refund_lines) == (1, 1, 0)
    assert report.books.balanced and round(report.books.revenue_imported, 2) == round(6 * 4.25, 2)


def test_refunds_stated_as_positive_amounts_are_signed_and_shown_in_the_books(tmp_path: Path) -> None:
    text = "customer_id,timestamp,amount,quantity\na,2025-01-02,100,1\na,2025-01-05,40,-1\n"
    result = normalize("transactions", pd.read_csv(_lines(tmp_path, text), dtype=str), ImportOptions(as_of=AS_OF))
    books = result.books
    assert (books.revenue_read, books.sign_corrected_rows, books.revenue_sign_corrected) == (140.0, 1, -80.0)
    assert books.revenue_imported == 60.0 and books.balanced


def test_thousands_separators_are_not_read_as_decimal_marks() -> None:
    from training.data.ingest import _parse_number

    us, mark = _parse_number(pd.Series(["1,234.50", "2,000.00", "12.50"], dtype="string"), "auto")
    assert us.tolist() == [1234.5, 2000.0, 12.5] and mark == "."
    european, mark = _parse_number(pd.Series(["12,50", "1.234,75", "3"], dtype="string"), "auto")
    assert european.tolist() == [12.5, 1234.75, 3.0] and mark == ","


def test_a_returns_export_of_cancellations_only_imports(tmp_path: Path) -> None:
    text = "order,customer,when,total\nC1,a,2025-01-02,10\nC2,b,2025-01-03,5\n"
    options = ImportOptions(columns={"order_id": "order", "customer_id": "customer", "timestamp": "when", "amount": "total"}, as_of=AS_OF)
    result = normalize("transactions", pd.read_csv(_lines(tmp_path, text), dtype=str), options)
    assert (result.clean["amount"] < 0).all()
