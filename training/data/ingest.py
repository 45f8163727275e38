"""Import real data into the canonical raw tables, quarantining bad rows with a reason.

Steps are pure functions of DataFrames (``normalize``, ``merge_with_existing``); ``ingest``
wires them to files. Nothing is written until every table of an import has been checked, and
then each file is written under a temporary name and renamed, so a failed import leaves the
earlier data exactly as it was. Re-importing a file adds nothing: rows already present are
recognised and skipped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from training.config import Paths
from training.data.schemas import (
    BOOLEAN_CUSTOMER_COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SCHEMAS,
    UTC_TIMESTAMP,
)

TIMESTAMP_COLUMN = {"transactions": "timestamp", "events": "timestamp", "customers": "signup_at"}
# Columns that identify a row: a re-imported row with the same values is the same row.
ROW_KEY = {
    "transactions": ["customer_id", "timestamp", "amount", "order_id"],
    "events": ["customer_id", "timestamp", "event_type"],
    "customers": ["customer_id"],
}


class IngestError(ValueError):
    """An import that cannot proceed (missing column, unreadable file); nothing was written."""


@dataclass(frozen=True)
class ImportOptions:
    """How a source file maps onto the canonical schema.

    ``columns`` maps canonical name -> name in the file. ``date_format`` is a strftime format
    (None: ISO 8601 and friends are inferred); naive times are read in ``timezone``.
    ``decimal`` is the decimal separator of amounts in text files.
    """

    columns: dict[str, str] = field(default_factory=dict)
    date_format: str | None = None
    timezone: str = "UTC"
    decimal: str = "."
    as_of: datetime | None = None  # rows after this are "in the future"; default: now


@dataclass
class TableReport:
    table: str
    source: Path
    rows_read: int = 0
    rows_added: int = 0
    rows_already_present: int = 0
    rows_quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    quarantine_file: Path | None = None


def read_source(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file with every column as text (parsing happens in ``normalize``)."""
    if not path.exists():
        raise IngestError(f"file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        frame = pd.read_parquet(path)
    elif suffix in {".csv", ".txt", ".gz"}:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            raise IngestError(f"cannot parse {path} as CSV: {error}") from error
    else:
        raise IngestError(f"unsupported file type {suffix!r} for {path}: use .csv or .parquet")
    return frame


def normalize(
    table: str, source: pd.DataFrame, options: ImportOptions
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Map ``source`` onto the canonical ``table`` schema.

    Returns (clean rows, quarantined rows with a ``reason`` column). Raises ``IngestError``
    naming any required column that is missing.
    """
    frame = _rename(table, source, options.columns)
    keep = REQUIRED_COLUMNS[table] + [c for c in OPTIONAL_COLUMNS[table] if c in frame.columns]
    frame = frame[keep].copy()
    original = frame.copy()
    reason = pd.Series("", index=frame.index, dtype=object)

    def flag(mask: pd.Series, why: str) -> None:
        fresh = mask & (reason == "")
        reason[fresh] = why

    frame["customer_id"] = frame["customer_id"].astype("string").str.strip()
    flag(frame["customer_id"].isna() | (frame["customer_id"] == ""), "missing customer_id")

    ts_col = TIMESTAMP_COLUMN[table]
    frame[ts_col] = _parse_timestamps(frame[ts_col], options)
    flag(frame[ts_col].isna(), f"unparseable {ts_col}")
    as_of = pd.Timestamp(options.as_of or datetime.now(UTC))
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    flag(frame[ts_col] > as_of, f"future {ts_col}")

    if table == "transactions":
        frame["amount"] = _parse_number(frame["amount"], options.decimal)
        flag(frame["amount"].isna() | ~np.isfinite(frame["amount"].fillna(0)), "non-numeric amount")
        if "discount" in frame:
            frame["discount"] = _parse_number(frame["discount"], options.decimal)
            flag(frame["discount"] < 0, "negative discount")
        if "quantity" in frame:
            quantity = _parse_number(frame["quantity"], options.decimal)
            flag(quantity.notna() & (quantity != quantity.round()), "non-integer quantity")
            frame["quantity"] = quantity.round().astype("Int64")
        if "order_id" in frame:
            frame["order_id"] = frame["order_id"].astype("string").str.strip().replace("", pd.NA)
            repeated = frame["order_id"].notna() & frame.duplicated(subset=["order_id"], keep="first")
            same_row = frame.duplicated(subset=["customer_id", "timestamp", "amount", "order_id"], keep="first")
            flag(repeated & ~same_row, "duplicate order_id")
            flag(same_row & frame["order_id"].notna(), "duplicate row")
    elif table == "events":
        frame["event_type"] = frame["event_type"].astype("string").str.strip().str.lower()
        known = SCHEMAS["events"].columns["event_type"].checks[0]
        allowed = set(known.statistics["allowed_values"])
        flag(~frame["event_type"].isin(allowed), "unknown event_type")
    elif table == "customers":
        flag(frame.duplicated(subset=["customer_id"], keep="first"), "duplicate customer_id")
        for column in BOOLEAN_CUSTOMER_COLUMNS:
            if column in frame:
                parsed = _parse_bool(frame[column])
                flag(frame[column].notna() & parsed.isna(), f"invalid {column}")
                frame[column] = parsed

    bad = reason != ""
    quarantined = original[bad].astype("string").assign(reason=reason[bad].astype("string"))
    clean = _canonical_types(table, frame[~bad])
    return clean.reset_index(drop=True), quarantined.reset_index(drop=True)


def merge_with_existing(
    table: str, existing: pd.DataFrame | None, clean: pd.DataFrame
) -> tuple[pd.DataFrame, int, pd.DataFrame]:
    """Append ``clean`` to ``existing``, skipping rows already there.

    Returns (merged table, rows already present, rows that conflict with existing data: a
    transaction whose order_id is already taken by a different row).
    """
    if existing is None or existing.empty:
        return clean, 0, clean.iloc[0:0]
    key = [c for c in ROW_KEY[table] if c in clean.columns and c in existing.columns]
    existing_keys = pd.MultiIndex.from_frame(existing[key].astype("string"))
    new_keys = pd.MultiIndex.from_frame(clean[key].astype("string"))
    present = new_keys.isin(existing_keys)
    fresh = clean[~present]
    conflicts = fresh.iloc[0:0]
    if table == "transactions" and "order_id" in fresh and "order_id" in existing:
        taken = fresh["order_id"].notna() & fresh["order_id"].isin(existing["order_id"].dropna())
        conflicts, fresh = fresh[taken], fresh[~taken]
    merged = pd.concat([existing, fresh], ignore_index=True)
    return _canonical_types(table, merged), int(present.sum()), conflicts


def ingest(paths: Paths, sources: dict[str, Path], options: ImportOptions) -> list[TableReport]:
    """Import ``sources`` (table name -> file) into ``paths.raw``; quarantine bad rows.

    All tables are read and checked before anything is written (a missing column anywhere
    stops the whole import), then each table is replaced atomically.
    """
    unknown = set(sources) - set(REQUIRED_COLUMNS)
    if unknown:
        raise IngestError(f"unknown table(s): {sorted(unknown)}")
    canonical = {c for table in REQUIRED_COLUMNS for c in REQUIRED_COLUMNS[table] + OPTIONAL_COLUMNS[table]}
    unknown_targets = sorted(set(options.columns) - canonical)
    if unknown_targets:
        raise IngestError(f"cannot map to unknown canonical column(s) {unknown_targets}")
    planned: list[tuple[TableReport, pd.DataFrame, pd.DataFrame]] = []
    for table, source_path in sources.items():
        source = read_source(source_path)
        clean, quarantined = normalize(table, source, options)
        target = paths.raw_table(table)
        existing = pd.read_parquet(target) if target.exists() else None
        merged, already, conflicts = merge_with_existing(table, existing, clean)
        if not conflicts.empty:
            quarantined = pd.concat(
                [quarantined, conflicts.astype("string").assign(reason="order_id already imported with other values")],
                ignore_index=True,
            )
        SCHEMAS[table].validate(merged)
        report = TableReport(
            table=table,
            source=source_path,
            rows_read=len(source),
            rows_added=len(merged) - (0 if existing is None else len(existing)),
            rows_already_present=already,
            rows_quarantined=len(quarantined),
            reasons=quarantined["reason"].value_counts().to_dict() if len(quarantined) else {},
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


def _rename(table: str, source: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Apply the mappings whose source column is in this file; name any required column missing."""
    frame = source.rename(columns={src: dst for dst, src in columns.items() if src in source.columns})
    missing = [c for c in REQUIRED_COLUMNS[table] if c not in frame.columns]
    if missing:
        raise IngestError(
            f"{table}: missing required column(s) {', '.join(missing)}; "
            f"file has {', '.join(map(str, source.columns))} (map names with --column CANONICAL=NAME)"
        )
    return frame


def _parse_timestamps(values: pd.Series, options: ImportOptions) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        text = values.astype("string").str.strip()
        fmt = options.date_format or "mixed"
        parsed = pd.to_datetime(text, format=fmt, errors="coerce", utc=False)
        if parsed.dtype == object:  # mixed offsets: normalise each value to UTC
            parsed = pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
    if getattr(parsed.dt, "tz", None) is None:
        parsed = parsed.dt.tz_localize(options.timezone, ambiguous="NaT", nonexistent="NaT")
    return parsed.dt.tz_convert("UTC").astype(UTC_TIMESTAMP)


def _parse_number(values: pd.Series, decimal: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values):
        return values.astype(float)
    text = values.astype("string").str.strip()
    if decimal != ".":
        text = text.str.replace(".", "", regex=False).str.replace(decimal, ".", regex=False)
    return pd.to_numeric(text, errors="coerce").astype(float)


def _parse_bool(values: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(values):
        return values.astype("boolean")
    text = values.astype("string").str.strip().str.lower()
    mapping = {"true": True, "1": True, "yes": True, "y": True, "false": False, "0": False, "no": False, "n": False}
    return text.map(mapping).astype("boolean")


def _canonical_types(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["customer_id"] = out["customer_id"].astype(str)
    for column in ("order_id", "category", "channel", "event_type", *OPTIONAL_COLUMNS["customers"]):
        if column in out and column not in BOOLEAN_CUSTOMER_COLUMNS:
            out[column] = out[column].astype(object).where(out[column].notna(), None)
    for column in BOOLEAN_CUSTOMER_COLUMNS:
        if column in out:
            out[column] = out[column].astype("boolean")
    if "quantity" in out:
        out["quantity"] = out["quantity"].astype("Int64")
    for column in ("amount", "discount"):
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
