"""Import real data into the canonical raw tables, quarantining bad rows with a reason.

Steps are pure functions of DataFrames (``normalize``, ``merge_with_existing``); ``ingest``
wires them to files. Nothing is written until every table of an import has been checked, and
then each file is written under a temporary name and renamed, so a failed import leaves the
earlier data exactly as it was. Re-importing a file adds nothing: rows already present are
recognised and skipped.

Real exports are taken as they come: line items (several rows per order), cancellations as
negative quantities or marked order ids, spreadsheet ids such as ``17850.0``, CSV with any
common delimiter and decimal mark, Parquet and Excel.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from training.config import Paths
from training.data import journal
from training.data.schemas import (
    BOOLEAN_CUSTOMER_COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SCHEMAS,
    UTC_TIMESTAMP,
)
from training.data.suppression import Suppression, SuppressionKeyError, data_lock

TIMESTAMP_COLUMN = {"transactions": "timestamp", "events": "timestamp", "customers": "signup_at"}
ID_COLUMNS = ("customer_id", "order_id", "product_id")
NUMBER_COLUMNS = ("amount", "quantity", "unit_price", "discount")
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
WHITESPACE = r"\s+"
# An order id made of this mark and a number, where other ids are plain numbers, is a cancellation.
CANCELLED_MARK = "C"
# An explicit --date-format that fails on more than this share of the dates is the wrong one.
MAX_FORMAT_FAILURES = 0.25


class IngestError(ValueError):
    """An import that cannot proceed (missing column, unreadable file); nothing was written."""


@dataclass(frozen=True)
class ImportOptions:
    """How a source file maps onto the canonical schema.

    ``columns`` maps canonical name -> name in the file. ``date_format`` is a strftime format
    (None: ISO 8601 and friends are inferred); naive times are read in ``timezone``.
    ``decimal`` is the decimal mark of numbers in text files ("auto": per column, whichever
    reads more values). ``delimiter`` of CSV files (None: detected; "whitespace" for columns
    separated by spaces). ``cancelled_prefix``: order ids starting with it are cancellations
    (None: ``C`` followed by a number, when the other order ids are numbers; "": none).
    """

    columns: dict[str, str] = field(default_factory=dict)
    date_format: str | None = None
    timezone: str = "UTC"
    decimal: str = "auto"
    delimiter: str | None = None
    cancelled_prefix: str | None = None
    as_of: datetime | None = None  # rows after this are "in the future"; default: now


@dataclass(frozen=True)
class Reconciliation:
    """A transaction import in the terms of the shop's books (revenue net of refunds)."""

    lines: int  # clean rows of the file
    orders: int  # purchase orders among them (lines of one order count once)
    lines_merged: int  # purchase lines that joined another line's order
    refund_lines: int
    refund_orders: int
    revenue_read: float  # every row with a readable amount, as the file states it
    sign_corrected_rows: int  # refunds the file states as positive amounts
    revenue_sign_corrected: float  # what counting them as negative changed
    revenue_quarantined: float
    revenue_imported: float  # the clean rows, summed on their own

    @property
    def balanced(self) -> bool:
        expected = self.revenue_read + self.revenue_sign_corrected - self.revenue_quarantined
        return round(expected, 2) == round(self.revenue_imported, 2)


@dataclass
class TableReport:
    table: str
    source: Path
    rows_read: int = 0
    rows_added: int = 0
    rows_already_present: int = 0
    rows_quarantined: int = 0
    rows_suppressed: int = 0  # rows of erased customers, dropped before anything else
    reasons: dict[str, int] = field(default_factory=dict)
    quarantine_file: Path | None = None
    notes: list[str] = field(default_factory=list)  # how the file was read: delimiter, ids, signs
    books: Reconciliation | None = None


@dataclass(frozen=True)
class Normalized:
    clean: pd.DataFrame
    quarantined: pd.DataFrame  # the file's rows as read (mapped names), with a ``reason``
    notes: list[str]
    books: Reconciliation | None = None


def read_source(path: Path, delimiter: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """A CSV, Parquet or Excel file, text columns kept as text (parsing happens in ``normalize``).

    Returns the frame and notes on how it was read (the delimiter found, for example).
    """
    if not path.exists():
        raise IngestError(f"file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        return pd.read_parquet(path), []
    if suffix in {".xlsx", ".xlsm", ".xls"}:
        try:
            return pd.read_excel(path, dtype=str, keep_default_na=False, na_values=[""]), []
        except (ValueError, OSError, ImportError) as error:
            raise IngestError(f"cannot read {path} as Excel: {error}") from error
    if suffix not in {".csv", ".txt", ".gz", ".tsv"}:
        raise IngestError(f"unsupported file type {suffix!r} for {path}: use .csv, .parquet or .xlsx")
    notes: list[str] = []
    if delimiter is None:
        delimiter = detect_delimiter(_head(path))
        notes.append(f"delimiter: {DELIMITERS.get(delimiter, 'whitespace')} (detected)")
    elif delimiter.lower() in {"whitespace", "space", "spaces"}:
        delimiter = WHITESPACE
    elif delimiter.lower() in {"tab", "\\t"}:
        delimiter = "\t"
    try:
        if delimiter == WHITESPACE:
            frame = pd.read_csv(path, sep=WHITESPACE, dtype=str, keep_default_na=False, na_values=[""], engine="python")
        else:
            frame = pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise IngestError(f"cannot parse {path} as CSV: {error}") from error
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame, notes


def _head(path: Path, size: int = 65_536) -> str:
    raw = path.read_bytes()[:size] if path.suffix.lower() != ".gz" else _gunzip_head(path, size)
    return raw.decode("utf-8", errors="replace")


def _gunzip_head(path: Path, size: int) -> bytes:
    import gzip

    with gzip.open(path, "rb") as handle:
        return handle.read(size)


def detect_delimiter(sample: str) -> str:
    """The delimiter that splits the sample's lines into the same number (> 1) of fields.

    Candidates: comma, semicolon, tab, pipe (most fields wins), then runs of whitespace.
    A file of one column reads as comma-separated.
    """
    lines = [line for line in sample.splitlines()[:50] if line.strip()]
    if len(lines) > 1 and not sample.endswith("\n"):
        lines = lines[:-1]  # the sample may cut the last line
    best, best_fields = ",", 1
    for candidate in DELIMITERS:
        counts = {len(row) for row in csv.reader(io.StringIO("\n".join(lines)), delimiter=candidate)}
        if len(counts) == 1 and (fields := counts.pop()) > best_fields:
            best, best_fields = candidate, fields
    if best_fields == 1 and lines:
        counts = {len(line.split()) for line in lines}
        if len(counts) == 1 and counts.pop() > 1:
            return WHITESPACE
    return best


def normalize(table: str, source: pd.DataFrame, options: ImportOptions) -> Normalized:
    """Map ``source`` onto the canonical ``table`` schema.

    Returns the clean rows, the quarantined rows (as read, with a ``reason``), notes on how
    values were read and, for transactions, the reconciliation with the file's revenue.
    Raises ``IngestError`` naming any required column that is missing.
    """
    _check_targets(options.columns)
    renamed = _rename(table, source, options.columns)
    notes: list[str] = []
    keep = [c for c in REQUIRED_COLUMNS[table] + OPTIONAL_COLUMNS[table] if c in renamed.columns]
    frame = renamed[keep].copy()
    reason = pd.Series("", index=frame.index, dtype=object)

    def flag(mask: pd.Series, why: str) -> None:
        fresh = mask.fillna(False).astype(bool) & (reason == "")
        reason[fresh] = why

    for column in ID_COLUMNS:
        if column in frame:
            frame[column], note = _read_ids(frame[column], column)
            notes += note
    flag(frame["customer_id"].isna() | (frame["customer_id"] == ""), "missing customer_id")

    ts_col = TIMESTAMP_COLUMN[table]
    given = frame[ts_col].notna()
    frame[ts_col] = _parse_timestamps(frame[ts_col], options, notes)
    failed = given & frame[ts_col].isna()
    if options.date_format and given.sum() and failed.sum() > MAX_FORMAT_FAILURES * given.sum():
        example = renamed.loc[failed, ts_col].iloc[0]
        raise IngestError(
            f"{table}: --date-format {options.date_format!r} fails on {int(failed.sum()):,} of {int(given.sum()):,} "
            f"{ts_col} values (e.g. {example!r}); the rows it reads may be misread too: check the format"
        )
    flag(frame[ts_col].isna(), f"unparseable {ts_col}")
    as_of = pd.Timestamp(options.as_of or datetime.now(UTC))
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    flag(frame[ts_col] > as_of, f"future {ts_col}")

    books = None
    if table == "transactions":
        notes += _transaction_values(frame, renamed, options, flag)
    elif table == "events":
        frame["event_type"] = frame["event_type"].astype("string").str.strip().str.lower()
        known = SCHEMAS["events"].columns["event_type"].checks[0]
        allowed = set(known.statistics["allowed_values"])
        flag(~frame["event_type"].isin(allowed), "unknown event_type")
        flag(renamed.duplicated(keep="first"), "duplicate row")
    elif table == "customers":
        flag(frame.duplicated(subset=["customer_id"], keep="first"), "duplicate customer_id")
        for column in BOOLEAN_CUSTOMER_COLUMNS:
            if column in frame:
                parsed = _parse_bool(frame[column])
                flag(frame[column].notna() & parsed.isna(), f"invalid {column}")
                frame[column] = parsed

    bad = reason != ""
    quarantined = renamed[bad].astype("string").assign(reason=reason[bad].astype("string"))
    clean = _canonical_types(table, frame[~bad].drop(columns="_file_amount", errors="ignore"))
    if table == "transactions":
        readable = frame["amount"].notna() & np.isfinite(frame["amount"].fillna(0))
        signed = readable & (frame["amount"] != frame["_file_amount"])
        books = reconcile(
            clean,
            revenue_read=math.fsum(frame.loc[readable, "_file_amount"]),
            sign_corrections=(int(signed.sum()), math.fsum(frame.loc[signed, "amount"] - frame.loc[signed, "_file_amount"])),
            revenue_quarantined=math.fsum(frame.loc[readable & bad, "amount"]),
        )
    return Normalized(clean.reset_index(drop=True), quarantined.reset_index(drop=True), notes, books)


def _transaction_values(frame: pd.DataFrame, renamed: pd.DataFrame, options: ImportOptions, flag) -> list[str]:
    """Parse numbers, derive amounts of line items, sign refunds, mark duplicates (in place)."""
    notes: list[str] = []
    for column in NUMBER_COLUMNS:
        if column in frame:
            frame[column], mark = _parse_number(frame[column], options.decimal)
            if mark == ",":
                notes.append(f"{column}: decimal comma")
    if "amount" not in frame:
        frame.insert(2, "amount", frame["quantity"] * frame["unit_price"])
        notes.append("amount = quantity x unit_price (no amount column)")
    elif "quantity" in frame and "unit_price" in frame:
        derived = frame["amount"].isna() & frame["quantity"].notna() & frame["unit_price"].notna()
        frame.loc[derived, "amount"] = frame.loc[derived, "quantity"] * frame.loc[derived, "unit_price"]
        if derived.any():
            notes.append(f"amount = quantity x unit_price on {int(derived.sum()):,} rows without an amount")
    flag(frame["amount"].isna() | ~np.isfinite(frame["amount"].fillna(0)), "non-numeric amount")
    for column in ("quantity", "unit_price", "discount"):
        if column in frame:
            flag(renamed[column].notna() & frame[column].isna(), f"non-numeric {column}")
    if "discount" in frame:
        flag(frame["discount"] < 0, "negative discount")

    frame["_file_amount"] = frame["amount"]  # as the file states it, for the books
    refund = frame["amount"] < 0
    if "quantity" in frame:
        refund |= frame["quantity"].fillna(0) < 0
    if "order_id" in frame:
        prefix = _cancelled_prefix(frame["order_id"], options.cancelled_prefix)
        if prefix:
            cancelled = frame["order_id"].str.startswith(prefix).fillna(False)
            refund |= cancelled
            notes.append(f"order ids starting with {prefix!r} read as cancellations ({int(cancelled.sum()):,} rows)")
    flipped = refund & (frame["amount"] > 0)
    if flipped.any():
        notes.append(f"{int(flipped.sum()):,} refund rows with a positive amount counted as negative")
    frame["amount"] = frame["amount"].where(~refund, -frame["amount"].abs())
    if "quantity" in frame:
        frame["quantity"] = frame["quantity"].where(~refund, -frame["quantity"].abs())

    # A duplicate repeats another row in every column of the file; lines of one order are not.
    flag(renamed.duplicated(keep="first"), "duplicate row")
    if "order_id" in frame:
        owner = frame["customer_id"].groupby(frame["order_id"]).transform("first")
        flag(frame["order_id"].notna() & (owner != frame["customer_id"]), "order_id of another customer")
    return notes


def _cancelled_prefix(order_ids: pd.Series, given: str | None) -> str:
    if given is not None:
        return given
    ids = order_ids.dropna()
    marked = ids.str.fullmatch(rf"{CANCELLED_MARK}\d+").fillna(False)
    rest = ids[~marked]
    if marked.any() and (rest.empty or rest.str.fullmatch(r"\d+").fillna(False).mean() >= 0.9):
        return CANCELLED_MARK
    return ""


def reconcile(
    kept: pd.DataFrame, revenue_read: float, sign_corrections: tuple[int, float], revenue_quarantined: float
) -> Reconciliation:
    """The books of the rows kept: orders (lines of one order count once), refunds, revenue.

    ``revenue_read`` sums the file's amounts as stated; ``sign_corrections`` counts and sums
    the changes of refunds the file states as positive (a negative quantity, a cancelled order)."""
    order = kept["order_id"] if "order_id" in kept else pd.Series(pd.NA, index=kept.index, dtype="object")
    order = order.astype(object).where(order.notna(), "row " + pd.Series(range(len(kept)), index=kept.index).astype(str))
    bought, refunded = kept["amount"] > 0, kept["amount"] < 0
    orders = pd.MultiIndex.from_arrays([kept["customer_id"][bought], order[bought]]).nunique()
    refund_orders = pd.MultiIndex.from_arrays([kept["customer_id"][refunded], order[refunded]]).nunique()
    return Reconciliation(
        lines=len(kept),
        orders=int(orders),
        lines_merged=int(bought.sum() - orders),
        refund_lines=int(refunded.sum()),
        refund_orders=int(refund_orders),
        revenue_read=revenue_read,
        sign_corrected_rows=sign_corrections[0],
        revenue_sign_corrected=sign_corrections[1],
        revenue_quarantined=revenue_quarantined,
        revenue_imported=math.fsum(kept["amount"]),
    )


def merge_with_existing(
    table: str, existing: pd.DataFrame | None, clean: pd.DataFrame, journaled: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, int, pd.DataFrame]:
    """Append ``clean`` to ``existing``, skipping rows already there.

    A row is already there if the table, with the rows the event journal accepted
    (``journaled``), holds as many rows equal to it in every canonical column (the second of
    two identical lines of an order is new until imported twice): a nightly export of what
    was streamed during the day adds nothing. Returns (merged table, rows already present,
    rows that conflict with existing data: a transaction whose order_id belongs to another
    customer).
    """
    known = pd.concat([f for f in (existing, journaled) if f is not None and not f.empty], ignore_index=True) \
        if any(f is not None and not f.empty for f in (existing, journaled)) else None
    if known is None:
        return clean, 0, clean.iloc[0:0]
    if existing is None:
        existing = clean.iloc[0:0]
    if table == "customers":
        key = ["customer_id"]
    else:
        key = [c for c in clean.columns if c in known.columns]
    present = _occurrence_keys(clean, key).isin(_occurrence_keys(known[key], key))
    fresh = clean[~present]
    conflicts = fresh.iloc[0:0]
    if table == "transactions" and "order_id" in fresh and "order_id" in known:
        owners = known.dropna(subset=["order_id"]).drop_duplicates("order_id").set_index("order_id")["customer_id"]
        owner = fresh["order_id"].map(owners)
        taken = owner.notna() & (owner != fresh["customer_id"])
        conflicts, fresh = fresh[taken], fresh[~taken]
    merged = pd.concat([existing, fresh], ignore_index=True)
    return _canonical_types(table, merged), int(present.sum()), conflicts


def _occurrence_keys(frame: pd.DataFrame, key: list[str]) -> pd.MultiIndex:
    """Each row's values in ``key`` as text, plus how many equal rows came before it."""
    text = frame[key].astype("string").fillna("\x00")
    occurrence = text.groupby(key, sort=False).cumcount()
    return pd.MultiIndex.from_frame(text.assign(_occurrence=occurrence.to_numpy()))


def ingest(paths: Paths, sources: dict[str, Path], options: ImportOptions) -> list[TableReport]:
    """Import ``sources`` (table name -> file) into ``paths.raw``; quarantine bad rows.

    All tables are read and checked before anything is written (a missing column anywhere
    stops the whole import), then each table is replaced atomically. Rows of erased customers
    are dropped first. The data directory's lock is held throughout, so an erasure waits
    for the import to finish, or the import for the erasure.
    """
    with data_lock(paths):
        try:
            return _ingest(paths, sources, options)
        except SuppressionKeyError as error:
            raise IngestError(str(error)) from error


def _ingest(paths: Paths, sources: dict[str, Path], options: ImportOptions) -> list[TableReport]:
    unknown = set(sources) - set(REQUIRED_COLUMNS)
    if unknown:
        raise IngestError(f"unknown table(s): {sorted(unknown)}")
    _check_targets(options.columns)
    planned: list[tuple[TableReport, pd.DataFrame, pd.DataFrame]] = []
    suppression = Suppression(paths)
    journaled = journal.read_frames(paths)
    for table, source_path in sources.items():
        source, read_notes = read_source(source_path, options.delimiter)
        rows_read = len(source)
        source, suppressed = drop_suppressed(source, options, suppression.contains)
        result = normalize(table, source, options)
        quarantined = result.quarantined
        target = paths.raw_table(table)
        existing = pd.read_parquet(target) if target.exists() else None
        # Customers are matched by id alone, and a journaled change must not hide the full record.
        streamed = journaled.get(table) if table != "customers" else None
        merged, already, conflicts = merge_with_existing(table, existing, result.clean, streamed)
        if not conflicts.empty:
            quarantined = pd.concat(
                [quarantined, conflicts.astype("string").assign(reason="order_id already imported for another customer")],
                ignore_index=True,
            )
        SCHEMAS[table].validate(merged)
        report = TableReport(
            table=table,
            source=source_path,
            rows_read=rows_read,
            rows_suppressed=suppressed,
            rows_added=len(merged) - (0 if existing is None else len(existing)),
            rows_already_present=already,
            rows_quarantined=len(quarantined),
            reasons=quarantined["reason"].value_counts().to_dict() if len(quarantined) else {},
            notes=[*read_notes, *result.notes],
            books=result.books if result.books is None or conflicts.empty else reconcile(
                result.clean.drop(index=conflicts.index), result.books.revenue_read,
                (result.books.sign_corrected_rows, result.books.revenue_sign_corrected),
                result.books.revenue_quarantined + math.fsum(conflicts["amount"]),
            ),
        )
        planned.append((report, merged, quarantined))

    paths.raw.mkdir(parents=True, exist_ok=True)
    for report, merged, quarantined in planned:
        if len(quarantined):
            paths.quarantine.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256(report.source.read_bytes()).hexdigest()[:12]
            report.quarantine_file = paths.quarantine / f"{report.table}-{digest}.csv"
            _write_atomic(quarantined, report.quarantine_file)
        if report.rows_added:
            _write_atomic(merged, paths.raw_table(report.table))
    return [report for report, _, _ in planned]


def write_normalized(paths: Paths, table: str, clean: pd.DataFrame) -> None:
    """Rows ``normalize`` already produced written as ``table``, replacing it: a log cut at a
    cutoff (``indicators backtest``). Normalizing them again would judge duplicates on the
    canonical columns alone and set aside lines that differed only in a column not mapped."""
    with data_lock(paths):
        SCHEMAS[table].validate(clean)
        paths.raw.mkdir(parents=True, exist_ok=True)
        _write_atomic(clean, paths.raw_table(table))


def drop_suppressed(
    source: pd.DataFrame, options: ImportOptions, suppressed: Callable[[pd.Series], np.ndarray]
) -> tuple[pd.DataFrame, int]:
    """``source`` without the rows of erased customers (read as the import reads ids), and how
    many there were: they reach neither the tables nor the quarantine file."""
    mapped = options.columns.get("customer_id")
    column = mapped if mapped in source.columns else "customer_id"  # as _rename reads it
    if column not in source.columns:
        return source, 0  # normalize names the missing column
    ids, _ = _read_ids(source[column], "customer_id")
    hits = suppressed(ids)
    return (source[~hits].reset_index(drop=True), int(hits.sum())) if hits.any() else (source, 0)


def _check_targets(columns: dict[str, str]) -> None:
    canonical = {c for table in REQUIRED_COLUMNS for c in REQUIRED_COLUMNS[table] + OPTIONAL_COLUMNS[table]}
    unknown_targets = sorted(set(columns) - canonical)
    if unknown_targets:
        raise IngestError(f"cannot map to unknown canonical column(s) {unknown_targets}; known: {sorted(canonical)}")


def _rename(table: str, source: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Apply the mappings whose source column is in this file; name any required column missing."""
    frame = source.rename(columns={src: dst for dst, src in columns.items() if src in source.columns})
    frame = frame.loc[:, ~frame.columns.duplicated()]
    required = REQUIRED_COLUMNS[table]
    if table == "transactions" and {"quantity", "unit_price"} <= set(frame.columns):
        required = [c for c in required if c != "amount"]  # derived from the line's quantity and price
    missing = [c for c in required if c not in frame.columns]
    if missing:
        hint = " (or quantity and unit_price)" if "amount" in missing else ""
        absent = [f"{c} <- {columns[c]!r}" for c in missing if c in columns]
        hint += f"; mapped from column(s) the file lacks: {', '.join(absent)}" if absent else ""
        raise IngestError(
            f"{table}: missing required column(s) {', '.join(missing)}{hint}; "
            f"file has {', '.join(map(str, source.columns))} (map names with --column CANONICAL=NAME)"
        )
    return frame


def canonical_ids(values: pd.Series) -> pd.Series:
    """Customer ids as the import stores them (trimmed text; ``17850.0`` as ``17850``)."""
    return _read_ids(values, "customer_id")[0]


def _read_ids(values: pd.Series, column: str) -> tuple[pd.Series, list[str]]:
    """Ids as text; a column of float-formatted integers (``17850.0``, a spreadsheet's) as integers."""
    text = values.astype("string").str.strip().replace("", pd.NA)
    present = text.dropna()
    if len(present) and present.str.contains(r"[.,]").any() and present.str.fullmatch(r"-?\d+([.,]0*)?").all():
        note = f"{column}: float-formatted integers read as integers (17850.0 or 17850,0 -> 17850)"
        return text.str.replace(r"[.,]0*$", "", regex=True), [note]
    return text, []


def _parse_timestamps(values: pd.Series, options: ImportOptions, notes: list[str]) -> pd.Series:
    """UTC timestamps. Without a format, dates such as 12/1/2010 are read month-first or
    day-first as the file shows (a first part above 12 means day-first), the same for every row."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        text = values.astype("string").str.strip()
        fmt, dayfirst = options.date_format or "mixed", False
        if options.date_format is None and text.dropna().str.fullmatch(r"\d{8}").all() and text.notna().any():
            fmt = "%Y%m%d"  # 19970101: compact ISO dates, which "mixed" would read as numbers
        elif options.date_format is None:
            dayfirst = _day_first(text, notes)
        parsed = pd.to_datetime(text, format=fmt, errors="coerce", utc=False, dayfirst=dayfirst)
        if parsed.dtype == object:  # mixed offsets: normalise each value to UTC
            parsed = pd.to_datetime(text, format=fmt, errors="coerce", utc=True, dayfirst=dayfirst)
    if getattr(parsed.dt, "tz", None) is None:
        parsed = parsed.dt.tz_localize(options.timezone, ambiguous="NaT", nonexistent="NaT")
    return parsed.dt.tz_convert("UTC").astype(UTC_TIMESTAMP)


def _day_first(text: pd.Series, notes: list[str]) -> bool:
    """Whether numeric dates (d/m/y or m/d/y) put the day first; an error when rows disagree."""
    parts = text.str.extract(r"^(\d{1,2})[/.-](\d{1,2})[/.-]\d{2,4}\b").astype(float)
    if parts[0].notna().mean() < 0.5:
        return False
    day_first, month_first = bool((parts[0] > 12).any()), bool((parts[1] > 12).any())
    if day_first and month_first:
        raise IngestError("dates are day-first on some rows and month-first on others: give --date-format")
    if day_first or month_first:
        notes.append(f"dates read {'day' if day_first else 'month'}-first (a part above 12 says so)")
    else:
        notes.append("dates read month-first: no part above 12 tells; give --date-format if they are day-first")
    return day_first


COMMA_DECIMAL = r"-?\d{1,3}(\.\d{3})*,\d+|-?\d+,\d+"  # 1.234,50 or 12,50
DOT_THOUSANDS = r"-?\d{1,3}(,\d{3})+(\.\d+)?"  # 1,234.50


def _parse_number(values: pd.Series, decimal: str) -> tuple[pd.Series, str]:
    """Numbers from text with ``decimal`` as the mark. "auto" reads a comma as the decimal mark
    only when values look like ``12,50`` or ``1.234,50`` and none like ``1,234.50``; values
    with a thousands separator are read as such, never as decimals."""
    if pd.api.types.is_numeric_dtype(values):
        return values.astype(float), "."
    text = values.astype("string").str.strip()
    present = text.dropna()
    comma_decimal = bool(len(present)) and present.str.fullmatch(COMMA_DECIMAL).any() and not present.str.fullmatch(DOT_THOUSANDS).any()
    if decimal == "," or (decimal == "auto" and comma_decimal):
        grouped = text.str.fullmatch(r"-?\d{1,3}(\.\d{3})+(,\d+)?").fillna(False)
        plain = text.where(~grouped, text.str.replace(".", "", regex=False))
        return pd.to_numeric(plain.str.replace(",", ".", regex=False), errors="coerce").astype(float), ","
    thousands = text.str.fullmatch(DOT_THOUSANDS).fillna(False)
    plain = text.where(~thousands, text.str.replace(",", "", regex=False))
    return pd.to_numeric(plain, errors="coerce").astype(float), "."


def _parse_bool(values: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(values):
        return values.astype("boolean")
    text = values.astype("string").str.strip().str.lower()
    mapping = {"true": True, "1": True, "yes": True, "y": True, "false": False, "0": False, "no": False, "n": False}
    return text.map(mapping).astype("boolean")


def _canonical_types(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["customer_id"] = out["customer_id"].astype(str)
    for column in ("order_id", "product_id", "category", "channel", "event_type", *OPTIONAL_COLUMNS["customers"]):
        if column in out and column not in BOOLEAN_CUSTOMER_COLUMNS:
            out[column] = out[column].astype(object).where(out[column].notna(), None)
    for column in BOOLEAN_CUSTOMER_COLUMNS:
        if column in out:
            out[column] = out[column].astype("boolean")
    for column in NUMBER_COLUMNS:
        if column in out:
            out[column] = out[column].astype(float)
    ts_col = TIMESTAMP_COLUMN[table]
    out[ts_col] = out[ts_col].astype(UTC_TIMESTAMP)
    return out.sort_values(["customer_id", ts_col], kind="stable").reset_index(drop=True)


def _write_atomic(frame: pd.DataFrame, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    if target.suffix == ".csv":
        frame.to_csv(partial, index=False)
    else:
        frame.to_parquet(partial, index=False)
    partial.replace(target)
