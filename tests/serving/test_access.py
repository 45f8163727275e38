"""API keys without a server: the store keeps hashes only, revocation, scopes per route."""

from __future__ import annotations

import json

import pytest

from serving.access import AccessError, KeyStore, required_scope


def test_a_created_key_authenticates_and_only_its_hash_is_stored(tmp_path) -> None:
    store = KeyStore(tmp_path / "api_keys.json")
    key, record = store.create("app", ["profiles:read"])
    assert key.startswith(f"ci_{record.key_id}_") and len(key) > 40
    stored = (tmp_path / "api_keys.json").read_text()
    assert key not in stored and key.rsplit("_", 1)[1] not in stored
    assert json.loads(stored)[0]["scopes"] == ["profiles:read"]
    assert (tmp_path / "api_keys.json").stat().st_mode & 0o777 == 0o600
    assert KeyStore(tmp_path / "api_keys.json").authenticate(key) == record  # a fresh reader, as a server is


def test_wrong_malformed_and_revoked_keys_do_not_authenticate(tmp_path) -> None:
    store = KeyStore(tmp_path / "api_keys.json")
    key, record = store.create("app", ["profiles:read"])
    reader = KeyStore(tmp_path / "api_keys.json")
    assert reader.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    for junk in ("", "ci_", "ci__x", "Bearer", f"ci_{record.key_id}", "x" * 10_000):
        assert reader.authenticate(junk) is None
    assert reader.authenticate(key) is not None
    store.revoke(record.key_id)
    assert reader.authenticate(key) is None  # the reader sees the change without a restart
    with pytest.raises(AccessError, match="no API key with id"):
        store.revoke("nope")


def test_scopes_are_checked_and_admin_holds_them_all(tmp_path) -> None:
    store = KeyStore(tmp_path / "api_keys.json")
    _, reader = store.create("reader", ["profiles:read"])
    _, admin = store.create("ops", ["admin"])
    assert reader.allows("profiles:read") and not reader.allows("events:write") and not reader.allows("admin")
    assert admin.allows("events:write") and admin.allows("profiles:read")
    with pytest.raises(AccessError, match="scopes must be among"):
        store.create("bad", ["root"])
    with pytest.raises(AccessError):
        store.create("none", [])


def test_every_route_but_health_and_readiness_needs_a_scope() -> None:
    assert [required_scope(p) for p in ("/livez", "/healthz", "/readyz")] == [None, None, None]
    assert required_scope("/profile") == required_scope("/metadata") == "profiles:read"
    assert required_scope("/events") == "events:write"
    for other in ("/metrics", "/docs.json", "/", "/anything", "/profile/get", "/livez/x"):
        assert required_scope(other) == "admin", other


def _asgi_call(middleware, scope: dict) -> list[dict]:
    import asyncio

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    return sent


def test_the_middleware_refuses_two_keys_websockets_and_a_short_environment_key(tmp_path, monkeypatch) -> None:
    from serving.access import ApiKeyMiddleware

    monkeypatch.delenv("INDICATORS_API_KEY", raising=False)
    store = KeyStore(tmp_path / "api_keys.json")
    key, _ = store.create("app", ["profiles:read"])
    reached: list[str] = []

    async def app(scope, receive, send) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})

    middleware = ApiKeyMiddleware(app, keys_file=tmp_path / "api_keys.json")
    one = [(b"authorization", f"Bearer {key}".encode())]
    assert _asgi_call(middleware, {"type": "http", "path": "/profile", "headers": one})[0]["status"] == 200
    twice = [*one, (b"authorization", b"Bearer other")]
    assert _asgi_call(middleware, {"type": "http", "path": "/profile", "headers": twice})[0]["status"] == 401
    lower = [(b"authorization", f"bearer {key}".encode())]
    assert _asgi_call(middleware, {"type": "http", "path": "/profile", "headers": lower})[0]["status"] == 200
    assert _asgi_call(middleware, {"type": "websocket", "path": "/profile", "headers": one}) == [{"type": "websocket.close", "code": 1008}]
    assert reached == ["/profile", "/profile"]
    with pytest.raises(AccessError, match="at least 32 characters"):
        ApiKeyMiddleware(app, keys_file=tmp_path / "api_keys.json", extra_key="short")
