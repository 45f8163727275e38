"""Erasure with suppression: a customer removed from every store, and kept out of later imports.

``erase`` (``indicators erase``), in this order:

1. adds the ids to the suppression list first, so an import running meanwhile drops them;
2. rewrites every Parquet and CSV file under the data directory and the local MLflow store
   without the rows that hold an erased id: raw tables, quarantine files, feature snapshots,
   predictions, generated truth, tables logged to MLflow;
3. deletes the customers' online rows (SQLite, or Redis on the production profile) and
   compacts SQLite so the freed pages keep no copy;
4. scans every file again (``find_traces``: Parquet decoded, any other file byte by byte,
   SQLite's included) and Redis, and writes an audit record: counts, keyed hashes and
   the scan's result, never an id in clear.

The suppression list holds HMAC-SHA256 hashes of the ids under a secret key
(``access/suppression.key``, or ``INDICATORS_SUPPRESSION_KEY`` where several hosts share a
list): it tells whether a given id was erased, and cannot be read back into ids without the key.
Registered models hold no customer rows (their input examples are ``non_personal_example``).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from training.config import Config, Paths

SECRET_ENV = "INDICATORS_SUPPRESSION_KEY"
SQLITE_MAGIC = b"SQLite format 3\x00"
# An id counts as present where it stands alone: not inside a longer id (C1 in C10).
_BOUNDARY = "[^A-Za-z0-9]"


class ErasureError(ValueError):
    """An erasure that cannot start (no ids, an unknown online store); nothing was changed."""


class Suppression:
    """Erased customers as keyed hashes: ``contains`` tells an import which rows to drop."""

    def __init__(self, paths: Paths, secret: str | None = None) -> None:
        self.paths = paths
        self._secret = (secret or os.environ.get(SECRET_ENV) or "").encode() or None
        self._cache: tuple[tuple[int, int], frozenset[str]] | None = None

    @property
    def path(self) -> Path:
        return self.paths.suppression

    def _key(self, create: bool) -> bytes | None:
        if self._secret:
            return self._secret
        key_file = self.paths.access / "suppression.key"
        if not key_file.exists():
            if not create:
                return None
            key_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
        self._secret = key_file.read_text().strip().encode()
        return self._secret

    def hash_of(self, customer_id: str, create: bool = False) -> str | None:
        key = self._key(create)
        return hmac.new(key, customer_id.encode(), hashlib.sha256).hexdigest() if key else None

    def hashes(self) -> frozenset[str]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return frozenset()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, frozenset(json.loads(self.path.read_text())))
        return self._cache[1]

    def add(self, customer_ids: Iterable[str]) -> list[str]:
        """Suppress ``customer_ids``; returns their hashes."""
        added = [self.hash_of(cid, create=True) for cid in customer_ids]
        merged = sorted(self.hashes() | set(added))
        _write_private(self.path, json.dumps(merged, indent=0))
        return added

    def contains(self, customer_ids: pd.Series) -> np.ndarray:
        """Per id (missing ones never match), whether it was erased."""
        suppressed = self.hashes()
        if not suppressed:
            return np.zeros(len(customer_ids), dtype=bool)
        return np.array([isinstance(c, str) and self.hash_of(c) in suppressed for c in customer_ids.tolist()], dtype=bool)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    partial.replace(path)


@dataclass(frozen=True)
class Trace:
    """Where an erased id was still found, and how often."""

    location: str
    occurrences: int


@dataclass
class ErasureReport:
    customers: int
    rows_removed: dict[str, int] = field(default_factory=dict)  # file -> rows
    online_rows_deleted: int = 0
    traces: list[Trace] = field(default_factory=list)  # what the scan after erasure still found
    audit_file: Path | None = None

    @property
    def complete(self) -> bool:
        return not self.traces


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
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _pattern(customer_ids: list[str]) -> str:
    """RE2 and Python both read this: one of the ids, standing alone."""
    alternatives = "|".join(re.escape(c) for c in sorted(customer_ids, key=len, reverse=True))
    return f"(^|{_BOUNDARY})({alternatives})({_BOUNDARY}|$)"


def _text_columns(table: pa.Table) -> list[str]:
    return [
        f.name for f in table.schema
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
        or (pa.types.is_dictionary(f.type) and pa.types.is_string(f.type.value_type))
    ]


def _parquet_hits(table: pa.Table, pattern: str) -> pa.ChunkedArray | None:
    """Per row, whether any text column holds an id (None: the table has no text column)."""
    hits = None
    for name in _text_columns(table):
        column = table.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(pa.string())
        found = pc.fill_null(pc.match_substring_regex(column, pattern), False)
        hits = found if hits is None else pc.or_(hits, found)
    return hits


def _csv_hits(frame: pd.DataFrame, pattern: str) -> pd.Series:
    regex = re.compile(pattern)
    return frame.apply(lambda column: column.map(lambda v: bool(regex.search(v)) if isinstance(v, str) else False)).any(axis=1)


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False, sep=None, engine="python")


def find_traces(roots: list[Path], customer_ids: list[str], online: Any = None) -> list[Trace]:
    """Every place under ``roots`` (and in a Redis ``online`` store) an id still appears.

    Parquet is decoded; every other file (CSV, JSON, SQLite and its journal, pickles) is
    searched byte by byte, which also finds values SQLite left in freed pages."""
    pattern = _pattern(customer_ids)
    raw = re.compile(pattern.encode())
    traces = []
    for path in _files(roots):
        if path.suffix == ".parquet":
            try:
                table = pq.read_table(path)
            except (pa.ArrowInvalid, OSError):
                count = len(raw.findall(path.read_bytes()))
            else:
                hits = _parquet_hits(table, pattern)
                count = int(pc.sum(hits).as_py() or 0) if hits is not None else 0
        else:
            count = len(raw.findall(path.read_bytes()))
        if count:
            traces.append(Trace(str(path), count))
    if online is not None:
        traces += _redis_traces(online, raw)
    return traces


def _redis_traces(store: Any, raw: re.Pattern) -> list[Trace]:
    client, project = _redis_client(store)
    if client is None:
        return []
    count = 0
    for key in client.scan_iter(match=b"*" + project, count=1000):
        count += len(raw.findall(key[: -len(project)]))  # Feast's key: the entity key, then the project
        count += sum(len(raw.findall(v)) for v in client.hgetall(key).values())
    return [Trace(f"redis {store.config.online_store.connection_string} project {project.decode()}", count)] if count else []


def _redis_client(store: Any) -> tuple[Any, bytes]:
    from feast.infra.online_stores.redis import RedisOnlineStore

    online = store._get_provider().online_store
    if not isinstance(online, RedisOnlineStore):
        return None, b""
    return online._get_client(store.config.online_store), store.config.project.encode()


def _erase_from_files(roots: list[Path], customer_ids: list[str]) -> dict[str, int]:
    """Rewrite each Parquet and CSV file without the rows holding an id; rows removed per file."""
    pattern = _pattern(customer_ids)
    removed: dict[str, int] = {}
    for path in _files(roots):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            hits = _parquet_hits(table, pattern)
            count = int(pc.sum(hits).as_py() or 0) if hits is not None else 0
            if count:
                _replace(path, lambda partial, t=table.filter(pc.invert(hits)): pq.write_table(t, partial))
        elif path.suffix == ".csv":
            if not re.search(pattern.encode(), path.read_bytes()):
                continue
            frame = _read_csv(path)
            hits = _csv_hits(frame, pattern)
            count = int(hits.sum())
            _replace(path, lambda partial, f=frame[~hits]: f.to_csv(partial, index=False))
        else:
            continue
        if count:
            removed[str(path)] = count
    return removed


def _replace(path: Path, write) -> None:
    partial = path.with_name(path.name + ".partial")
    write(partial)
    partial.replace(path)


def _compact_sqlite(roots: list[Path]) -> None:
    """VACUUM every SQLite file (freed pages would keep deleted values) and fold its WAL in."""
    for path in _files(roots):
        if path.name.endswith(("-wal", "-shm", "-journal")):
            continue
        with open(path, "rb") as head:
            if head.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                continue
        connection = sqlite3.connect(path, timeout=30)
        try:
            connection.execute("VACUUM")
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            connection.close()


def erase(config: Config, customer_ids: Iterable[str]) -> ErasureReport:
    """Erase ``customer_ids`` everywhere, suppress them, verify, and audit (see the module)."""
    from training.features import store as feature_store

    ids = sorted({c.strip() for c in customer_ids if c and c.strip()})
    if not ids:
        raise ErasureError("no customer id to erase")
    paths = config.paths
    suppression = Suppression(paths)
    hashes = suppression.add(ids)
    roots = roots_of(config)
    report = ErasureReport(customers=len(ids), rows_removed=_erase_from_files(roots, ids))
    online = None
    if (paths.feast / "online_store.db").exists() or config.feast.online_store != "sqlite":
        online = feature_store.feature_store(config)
        report.online_rows_deleted = feature_store.erase_online(online, ids)
    _compact_sqlite(roots)
    report.traces = find_traces(roots, ids, online)
    report.audit_file = paths.access / "erasure_audit.jsonl"
    record = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "operator": getpass.getuser(),
        "customer_id_hashes": hashes,
        "rows_removed": report.rows_removed,
        "online_rows_deleted": report.online_rows_deleted,
        "traces_after": [asdict(t) for t in report.traces],
    }
    with open(report.audit_file, "a") as audit:
        audit.write(json.dumps(record) + "\n")
    os.chmod(report.audit_file, 0o600)
    return report


def read_ids_file(path: Path) -> list[str]:
    """One id per line (a CSV's first column, header ``customer_id`` skipped)."""
    lines = [line.split(",")[0].strip().strip('"') for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line and line != "customer_id"]
