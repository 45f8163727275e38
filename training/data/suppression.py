"""Erased customers kept out of later imports, and the lock that orders erasure with writers.

The suppression list (``access/suppression.json``) holds HMAC-SHA256 hashes of the erased ids
under a secret key (``access/suppression.key``, or ``INDICATORS_SUPPRESSION_KEY`` where several
hosts share a list), and a check value of that key: with a missing or different key the list
would silently match nothing, so it refuses to be used instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from training.config import Paths

SECRET_ENV = "INDICATORS_SUPPRESSION_KEY"
_KEY_CHECK = b"suppression-key-check"


class SuppressionKeyError(RuntimeError):
    """The suppression list was written with a key that is not here (restored without it,
    another host, a changed ``INDICATORS_SUPPRESSION_KEY``)."""


_held: set[Path] = set()  # data directories this process holds the lock of (it nests)


class DataBusy(TimeoutError):
    """Another command held the data directory's lock for longer than the caller would wait."""


@contextlib.contextmanager
def data_lock(paths: Paths, timeout: float | None = None) -> Iterator[None]:
    """Exclusive use of the data directory's tables: erasure, imports, accepted events, feature
    and score writes take it in turn (waiting, or at most ``timeout`` seconds, then
    ``DataBusy``), so none writes back rows another has just removed. It nests within a
    process; threads of one process must take turns themselves."""
    directory = paths.data_dir.resolve()
    if directory in _held:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        if timeout is None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise DataBusy(f"{directory} is held by another command (an import, feature build, scoring "
                                       f"or erasure) for more than {timeout:g} s") from None
                    time.sleep(0.002)
        _held.add(directory)
        try:
            yield
        finally:
            _held.discard(directory)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    partial.replace(path)


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
            write_private(key_file, secrets.token_hex(32))
        self._secret = key_file.read_text().strip().encode()
        return self._secret

    def _check(self, key: bytes) -> str:
        return hmac.new(key, _KEY_CHECK, hashlib.sha256).hexdigest()

    def hash_of(self, customer_id: str, create: bool = False) -> str | None:
        key = self._key(create)
        return hmac.new(key, customer_id.encode(), hashlib.sha256).hexdigest() if key else None

    def hashes(self) -> frozenset[str]:
        """The erased customers' hashes; raises ``SuppressionKeyError`` if this key did not write them."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return frozenset()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._cache is None or self._cache[0] != stamp:
            stored = json.loads(self.path.read_text())
            key = self._key(create=False)
            if stored["hashes"] and (key is None or not hmac.compare_digest(stored["key_check"], self._check(key))):
                raise SuppressionKeyError(
                    f"{self.path} was written with a suppression key that is not here ({self.paths.access / 'suppression.key'} "
                    f"or {SECRET_ENV}): without it erased customers would be imported again. Restore the key."
                )
            self._cache = (stamp, frozenset(stored["hashes"]))
        return self._cache[1]

    def add(self, customer_ids: Iterable[str]) -> list[str]:
        """Suppress ``customer_ids``; returns their hashes."""
        existing = self.hashes()
        added = [self.hash_of(cid, create=True) for cid in customer_ids]
        record = {"key_check": self._check(self._key(create=True)), "hashes": sorted(existing | set(added))}
        write_private(self.path, json.dumps(record, indent=0))
        return added

    def contains(self, customer_ids: pd.Series) -> np.ndarray:
        """Per id (missing ones never match), whether it was erased."""
        suppressed = self.hashes()
        if not suppressed:
            return np.zeros(len(customer_ids), dtype=bool)
        return np.array([isinstance(c, str) and self.hash_of(c) in suppressed for c in customer_ids.tolist()], dtype=bool)
