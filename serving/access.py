"""API keys: who may call the endpoint, and for what.

A key reads ``ci_<key id>_<secret>``. The store (``<data dir>/access/api_keys.json``, mode
0600) keeps its id, name, scopes, dates and the SHA-256 of the whole key, never the key: the
secret is 32 random bytes, so a plain hash cannot be reversed and is cheap to check per
request (a slow password hash protects guessable secrets, which these are not).

Scopes: ``profiles:read`` (profiles, scores, explanations, audiences, metadata),
``events:write`` (the events route), ``admin`` (every route, metrics and docs included).
Health and readiness are open. ``INDICATORS_API_KEY``, when set, is accepted as one more key
with every scope, for containers and tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving.guard import send_error

SCOPES = ("profiles:read", "events:write", "admin")
OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz"})
# The scope each route needs; any other path (docs, metrics, unknown) needs admin.
ROUTE_SCOPES = {
    "/profile": "profiles:read",
    "/score": "profiles:read",
    "/explain": "profiles:read",
    "/lookalike": "profiles:read",
    "/metadata": "profiles:read",
    "/events": "events:write",
}
ENV_KEY = "INDICATORS_API_KEY"
MIN_ENV_KEY_LENGTH = 32
_PREFIX = "ci"


class AccessError(ValueError):
    """A key operation that cannot be done (unknown scope, unknown key id)."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scopes: tuple[str, ...]
    key_sha256: str
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def listed(self) -> dict[str, Any]:
        """What ``indicators api-key list`` shows: everything but the hash."""
        return {k: v for k, v in asdict(self).items() if k != "key_sha256"}


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id part of a well-formed key, else None."""
    parts = key.split("_")
    return parts[1] if len(parts) == 3 and parts[0] == _PREFIX and parts[1] and parts[2] else None


def required_scope(path: str) -> str | None:
    """The scope a request path needs; None for the open health and readiness routes."""
    if path in OPEN_PATHS:
        return None
    return ROUTE_SCOPES.get(path.rstrip("/") or "/", "admin")


class KeyStore:
    """The key file: read on change (revocation applies to the next request), written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int] | None = None
        self._keys: dict[str, ApiKey] = {}

    def keys(self) -> dict[str, ApiKey]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._seen, self._keys = None, {}
            return self._keys
        if (stat.st_mtime_ns, stat.st_size) != self._seen:
            records = json.loads(self.path.read_text() or "[]")
            self._keys = {r["key_id"]: ApiKey(**{**r, "scopes": tuple(r["scopes"])}) for r in records}
            self._seen = (stat.st_mtime_ns, stat.st_size)
        return self._keys

    def authenticate(self, key: str) -> ApiKey | None:
        """The active stored key ``key`` is, or None (unknown, wrong secret, revoked)."""
        key_id = key_id_of(key)
        stored = self.keys().get(key_id) if key_id else None
        if stored is None or not stored.active:
            return None
        return stored if hmac.compare_digest(stored.key_sha256, _digest(key)) else None

    def create(self, name: str, scopes: list[str]) -> tuple[str, ApiKey]:
        """A new key (returned once, in clear) and its stored record."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise AccessError(f"scopes must be among {list(SCOPES)}, got {sorted(scopes) or 'none'}")
        with self._locked() as records:
            key_id = secrets.token_hex(4)
            while key_id in records:
                key_id = secrets.token_hex(4)
            key = f"{_PREFIX}_{key_id}_{secrets.token_urlsafe(32).replace('_', '-')}"
            record = ApiKey(key_id, name, tuple(dict.fromkeys(scopes)), _digest(key), _now())
            records[key_id] = record
        return key, record

    def revoke(self, key_id: str) -> ApiKey:
        with self._locked() as records:
            if key_id not in records:
                raise AccessError(f"no API key with id {key_id!r} (see `indicators api-key list`)")
            if records[key_id].active:
                records[key_id] = replace(records[key_id], revoked_at=_now())
            return records[key_id]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, ApiKey]]:
        """The records under an exclusive lock, written back (mode 0600) when the block succeeds."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._seen = None
            records = dict(self.keys())
            yield records
            temporary = self.path.with_suffix(".tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump([asdict(r) for r in records.values()], out, indent=1)
            os.replace(temporary, self.path)
            self._seen = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_extra_key(extra_key: str | None) -> None:
    """Refuse an ``INDICATORS_API_KEY`` too short to guess at: it grants every scope. The
    service checks it as it starts (the middleware is built only at a first request), so a
    bad key stops the start instead of failing every request."""
    if extra_key and len(extra_key) < MIN_ENV_KEY_LENGTH:
        raise AccessError(f"{ENV_KEY} must hold at least {MIN_ENV_KEY_LENGTH} characters: it grants every scope")


class ApiKeyMiddleware:
    """ASGI middleware: 401 without a valid key, 403 for a key without the route's scope.

    The key is read from ``Authorization: Bearer KEY`` and never logged; refusals carry the
    same error body as every other client error."""

    def __init__(self, app: Any, keys_file: Path | None = None, extra_key: str | None = None) -> None:
        self.app = app
        self._given_keys_file = keys_file
        self._keys_file = keys_file
        self._store: KeyStore | None = None
        extra_key = extra_key or os.environ.get(ENV_KEY)
        check_extra_key(extra_key)
        self._extra_digest = _digest(extra_key) if extra_key else None

    @property
    def store(self) -> KeyStore:
        if self._store is None:  # resolved at the first request: no configuration at import
            if self._keys_file is None:
                from training.config import config_from_env

                self._keys_file = config_from_env().paths.api_keys
            self._store = KeyStore(self._keys_file)
        return self._store

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # a (re)start reads the configuration of its moment
            self._keys_file, self._store = self._given_keys_file, None
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websocket route: refused, not let through
            await send({"type": "websocket.close", "code": 1008})
            return
        needed = required_scope(scope["path"])
        if needed is None:
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope, needed)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        challenge = [(b"www-authenticate", b'Bearer realm="customer-indicators"')] if status == 401 else []
        await send_error(send, status, message, challenge)

    def _refusal(self, scope: dict, needed: str) -> tuple[int, str] | None:
        store = self.store
        given = [value for name, value in scope.get("headers") or [] if name == b"authorization"]
        if len(given) > 1:
            return 401, "send one Authorization header"
        header = given[0].decode("latin-1") if given else ""
        kind, _, key = header.partition(" ")
        if kind.lower() != "bearer" or not key.strip():
            return 401, "an API key is required: send 'Authorization: Bearer KEY' (create one with `indicators api-key create`)"
        key = key.strip()
        if self._extra_digest is not None and hmac.compare_digest(self._extra_digest, _digest(key)):
            return None
        found = store.authenticate(key)
        if found is None:
            return 401, "the API key is unknown or revoked"
        if not found.allows(needed):
            return 403, f"this API key has scopes {list(found.scopes)}; {scope['path']} needs '{needed}'"
        return None
