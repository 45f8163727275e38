"""Erasure with suppression: a customer removed from every store, and kept out of later imports.

``erase`` (``indicators erase``) holds the data directory's lock (``suppression.data_lock``),
so no import, feature build or scoring writes back what it removes, and:

1. checks it can finish (a supported online store, a usable suppression key) before changing
   anything, and writes a "started" audit record;
2. adds the ids to the suppression list (``suppression.Suppression``);
3. rewrites every Parquet and CSV file below the data directory and the local MLflow store
   without the rows whose customer-id column holds an erased id (exact match, as the import
   reads ids): raw tables, quarantine files, feature snapshots, predictions, generated truth,
   tables logged to MLflow; CSV files keep their delimiter and encoding; deletes their
   accepted events from the event journal (``journal``);
4. deletes the customers from the online store (SQLite rows of every view, or the Redis hash)
   and compacts SQLite so freed pages keep no copy;
5. scans again (``find_traces``) and writes the audit record: counts and keyed hashes, never
   an id in clear.

A trace is *definite* in a customer-id column or the online store (the erasure failed), and
*possible* where the id appears as a word anywhere else (another column, JSON, HTML, pickles,
SQLite pages, a compressed file that cannot be read): for a short numeric id that may be an
unrelated number, so possible traces are reported for a person to check.
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import os
import re
import shutil
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from training.config import Config, Paths
from training.data import journal
from training.data.ingest import WHITESPACE, canonical_ids, detect_delimiter
from training.data.suppression import Suppression, SuppressionKeyError, data_lock

SQLITE_MAGIC = b"SQLite format 3\x00"
COMPRESSED = (".gz", ".zip", ".xlsx", ".bz2", ".xz", ".zst")
_BOUNDARY = "[^A-Za-z0-9]"  # an id counts as a word where it stands alone: C1 is not in C10


class ErasureError(ValueError):
    """An erasure that cannot start (no ids, an unsupported store, a missing suppression key);
    nothing was changed."""


@dataclass(frozen=True)
class Trace:
    """Where an erased id was still found, how often, and whether for certain."""

    location: str
    occurrences: int
    definite: bool = True


@dataclass
class ErasureReport:
    customers: int
    not_found: list[str] = field(default_factory=list)  # ids no store held (suppressed all the same)
    rows_removed: dict[str, int] = field(default_factory=dict)  # file -> rows
    online_rows_deleted: int = 0
    traces: list[Trace] = field(default_factory=list)  # what the scan after erasure still found
    audit_file: Path | None = None

    @property
    def complete(self) -> bool:
        return not any(t.definite for t in self.traces)


def roots_of(config: Config) -> list[Path]:
    """The local directories that may hold customer rows: the data directory, the MLflow
    store and a local artifact root (a remote one, s3://..., is the operator's to scan)."""
    roots = [config.paths.data_dir, config.mlflow_store]
    if config.artifact_root and "://" not in config.artifact_root.replace("file://", ""):
        roots.append(Path(config.artifact_root.replace("file://", "")))
    unique: list[Path] = []
    for root in roots:
        root = Path(root).resolve()
        if root.exists() and not any(root.is_relative_to(r) for r in unique):
            unique = [r for r in unique if not r.is_relative_to(root)] + [root]
    return unique


def _files(roots: list[Path]) -> list[Path]:
    """Every file below ``roots``, linked directories followed (each real file once)."""
    seen: set[Path] = set()
    found = []
    for root in roots:
        for directory, _, names in os.walk(root, followlinks=True):
            for name in names:
                path = Path(directory) / name
                real = path.resolve()
                if real.is_file() and real not in seen:
                    seen.add(real)
                    found.append(path)
    return sorted(found)


def _is_id_column(name: str) -> bool:
    return re.sub(r"[\s_\-]", "", str(name)).lower() == "customerid"


def _word(customer_ids: list[str]) -> str:
    """One of the ids as a word (RE2 and Python read this)."""
    alternatives = "|".join(re.escape(c) for c in sorted(customer_ids, key=len, reverse=True))
    return f"(^|{_BOUNDARY})({alternatives})({_BOUNDARY}|$)"


# --- Parquet and CSV: rows whose customer-id column holds an id ------------------------------


def _parquet_rows(table: pa.Table, ids: set[str]) -> tuple[pa.Array | None, set[str]]:
    """Per row, whether its customer-id column holds an id (None: no such column), and which ids."""
    hits, matched = None, set()
    for name in (f.name for f in table.schema if _is_id_column(f.name)):
        values = canonical_ids(table.column(name).to_pandas().astype("string"))
        found = values.isin(ids).fillna(False).to_numpy(dtype=bool)
        matched |= set(values[found])
        hits = found if hits is None else hits | found
    return (pa.array(hits) if hits is not None else None), matched


@dataclass(frozen=True)
class _Csv:
    rows: list[list[str]]
    delimiter: str
    encoding: str
    newline: str


def _read_csv(path: Path) -> _Csv | None:
    """The file's rows as the csv module reads them (None: not a delimited table)."""
    raw = path.read_bytes()
    encoding = "utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        encoding, text = "latin-1", raw.decode("latin-1")
    delimiter = detect_delimiter(text[:65_536])
    if delimiter == WHITESPACE:
        return None
    newline = "\r\n" if "\r\n" in text[:65_536] else "\n"
    return _Csv(list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)), delimiter, encoding, newline)


def _csv_rows(table: _Csv, ids: set[str]) -> tuple[list[bool] | None, set[str]]:
    if not table.rows:
        return None, set()
    columns = [i for i, name in enumerate(table.rows[0]) if _is_id_column(name)]
    if not columns:
        return None, set()
    body = table.rows[1:]
    hits, matched = [False] * len(body), set()
    for i in columns:
        values = canonical_ids(pd.Series([row[i] if i < len(row) else None for row in body], dtype="string"))
        found = values.isin(ids).fillna(False).to_numpy(dtype=bool)
        matched |= set(values[found])
        hits = [a or bool(b) for a, b in zip(hits, found, strict=True)]
    return hits, matched


def _write_csv(path: Path, table: _Csv, keep: list[bool]) -> None:
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=table.delimiter, lineterminator=table.newline)
    writer.writerow(table.rows[0])
    writer.writerows(row for row, kept in zip(table.rows[1:], keep, strict=True) if kept)
    _replace(path, lambda partial: partial.write_bytes(out.getvalue().encode(table.encoding)))


def _replace(path: Path, write) -> None:
    """Write through a temporary file that takes the original's mode, then swap it in."""
    real = path.resolve()
    partial = real.with_name(real.name + ".partial")
    write(partial)
    shutil.copymode(real, partial)
    partial.replace(real)


# --- the scan --------------------------------------------------------------------------------


def find_traces(roots: list[Path], customer_ids: list[str], online: Any = None) -> list[Trace]:
    """Every place below ``roots`` (and in the ``online`` store) an id still appears."""
    ids = set(customer_ids)
    word = _word(customer_ids)
    raw = re.compile(word.encode())
    traces = []
    for path in _files(roots):
        try:
            traces += _file_traces(path, ids, word, raw)
        except FileNotFoundError:
            continue  # gone since listed: a journal SQLite folded in
    if online is not None:
        from training.features import accelerated

        remaining = accelerated.online_rows(online, customer_ids)
        if remaining:
            traces.append(Trace(f"online store ({_store_name(online)})", remaining))
    return traces


def _file_traces(path: Path, ids: set[str], word: str, raw: re.Pattern) -> list[Trace]:
    if path.name.endswith(COMPRESSED):
        return [Trace(f"{path} (compressed: not scanned)", 1, definite=False)]
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError):
            pass
        else:
            rows, _ = _parquet_rows(table, ids)
            traces = [Trace(str(path), int(pc.sum(rows).as_py() or 0))] if rows is not None and pc.any(rows).as_py() else []
            elsewhere = _words_in_parquet(table, word)
            return traces + ([Trace(f"{path} (other columns)", elsewhere, definite=False)] if elsewhere else [])
    if path.suffix == ".csv":
        try:
            table = _read_csv(path)
        except (csv.Error, OSError):
            table = None
        if table is not None:
            rows, _ = _csv_rows(table, ids)
            if rows is not None:
                id_columns = {i for i, name in enumerate(table.rows[0]) if _is_id_column(name)}
                count = sum(rows)
                elsewhere = sum(
                    1 for row in table.rows[1:] for i, cell in enumerate(row) if i not in id_columns and re.search(word, cell)
                )
                return ([Trace(str(path), count)] if count else []) + (
                    [Trace(f"{path} (other columns)", elsewhere, definite=False)] if elsewhere else []
                )
    count = len(raw.findall(path.read_bytes()))
    return [Trace(str(path), count, definite=False)] if count else []


def _words_in_parquet(table: pa.Table, word: str) -> int:
    count = 0
    for f in table.schema:
        if _is_id_column(f.name) or not (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)):
            continue
        count += int(pc.sum(pc.fill_null(pc.match_substring_regex(table.column(f.name), word), False)).as_py() or 0)
    return count


def _store_name(store: Any) -> str:
    online = store.config.online_store
    if getattr(online, "type", "") == "redis":
        return f"redis {online.connection_string.split(',')[0]}, project {store.config.project}"  # no password
    return f"sqlite {getattr(online, 'path', '')}"


# --- erasure ---------------------------------------------------------------------------------


def _erase_from_files(roots: list[Path], ids: set[str]) -> tuple[dict[str, int], list[Trace], set[str]]:
    """Rewrite each Parquet and CSV file without the rows of ``ids``: rows removed per file,
    the files that could not be rewritten, and the ids some file held."""
    removed: dict[str, int] = {}
    failed: list[Trace] = []
    present: set[str] = set()
    for path in _files(roots):
        try:
            if path.suffix == ".parquet":
                table = pq.read_table(path)
                rows, matched = _parquet_rows(table, ids)
                count = int(pc.sum(rows).as_py() or 0) if rows is not None else 0
                if count:
                    _replace(path, lambda partial, t=table.filter(pc.invert(rows)): pq.write_table(t, partial))
            elif path.suffix == ".csv" and (table := _read_csv(path)) is not None:
                rows, matched = _csv_rows(table, ids)
                count = sum(rows) if rows is not None else 0
                if count:
                    _write_csv(path, table, [not hit for hit in rows])
            else:
                continue
        except (pa.ArrowInvalid, OSError, csv.Error, ValueError) as error:
            failed.append(Trace(f"{path} (could not be rewritten: {type(error).__name__})", 1))
            continue
        present |= matched
        if count:
            removed[str(path)] = count
    return removed, failed, present


def _compact_sqlite(roots: list[Path]) -> list[Trace]:
    """VACUUM every SQLite file (freed pages keep deleted values) and fold its WAL in."""
    failed = []
    for path in _files(roots):
        if path.name.endswith(("-wal", "-shm", "-journal")) or not path.exists():
            continue
        with open(path, "rb") as head:
            if head.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                continue
        connection = sqlite3.connect(path, timeout=30)
        try:
            connection.execute("VACUUM")
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as error:
            failed.append(Trace(f"{path} (not compacted: {error}; freed pages may keep values)", 1, definite=False))
        finally:
            connection.close()
    return failed


def _audit(paths: Paths, record: dict) -> Path:
    audit = paths.access / "erasure_audit.jsonl"
    audit.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(audit, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as out:
        out.write(json.dumps(record) + "\n")
    return audit


def erase(config: Config, customer_ids: Iterable[str]) -> ErasureReport:
    """Erase ``customer_ids`` everywhere, suppress them, verify, and audit (see the module)."""
    from training.features import accelerated
    from training.features import store as feature_store

    ids = sorted({c.strip() for c in customer_ids if c and c.strip()})
    if not ids:
        raise ErasureError("no customer id to erase")
    paths = config.paths
    suppression = Suppression(paths)
    try:
        suppression.hashes()
    except SuppressionKeyError as error:
        raise ErasureError(str(error)) from error
    online = None
    if (paths.feast / "online_store.db").exists() or config.feast.online_store != "sqlite":
        online = feature_store.feature_store(config)
        if not accelerated.supports_erasure(online):
            raise ErasureError(f"erasure from this online store is not supported: {config.feast.online_store}")
    roots = roots_of(config)
    with data_lock(paths):
        hashes = [suppression.hash_of(cid, create=True) for cid in ids]
        at = datetime.now(UTC).isoformat(timespec="seconds")
        _audit(paths, {"at": at, "event": "erasure started", "operator": getpass.getuser(), "customer_id_hashes": hashes})
        suppression.add(ids)
        removed, failed, present = _erase_from_files(roots, set(ids))
        journaled, in_journal = journal.erase(paths, ids)
        if journaled:
            removed[str(journal.journal_file(paths))] = journaled
        present |= in_journal
        if online is not None:  # an id only the online store held was found too
            present |= {cid for cid in set(ids) - present if accelerated.online_rows(online, [cid])}
        report = ErasureReport(customers=len(ids), not_found=[c for c in ids if c not in present], rows_removed=removed)
        if online is not None:
            report.online_rows_deleted = accelerated.erase_online(online, ids)
        failed += _compact_sqlite(roots)
        left = journal.count_rows(paths, ids)
        report.traces = failed + find_traces(roots, ids, online) + ([Trace(str(journal.journal_file(paths)), left)] if left else [])
        report.audit_file = _audit(paths, {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "event": "erasure done" if report.complete else "erasure incomplete",
            "operator": getpass.getuser(),
            "customer_id_hashes": hashes,
            "ids_found_nowhere": len(report.not_found),
            "rows_removed": report.rows_removed,
            "online_rows_deleted": report.online_rows_deleted,
            "traces_after": [asdict(t) for t in report.traces],
        })
    return report


def read_ids_file(path: Path) -> list[str]:
    """Customer ids, one per line (a CSV's first column; a ``customer_id`` header skipped)."""
    text = Path(path).read_text(encoding="utf-8-sig")
    delimiter = detect_delimiter(text[:65_536])
    rows = csv.reader(io.StringIO(text, newline=""), delimiter="," if delimiter == WHITESPACE else delimiter)
    ids = [row[0].strip() for row in rows if row and row[0].strip()]
    return ids[1:] if ids and _is_id_column(ids[0]) else ids
