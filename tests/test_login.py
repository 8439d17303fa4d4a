"""Signing in with a password (POST /api/auth/login), out again, and GET /api/me, against
real server processes."""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import jwt
import pytest
from argon2 import PasswordHasher
from conftest import ServerFactory, ServerProcess, upgrade_schema
from helpers import api, assert_error, query

from server.passwords import hash_password
from server.persistence import users as accounts
from server.persistence.sql import create_engine

SECRET = "a-test-secret-of-at-least-32-bytes-long"
WRONG = "wrong user or password"


async def seed_user(
    url: str,
    name: str,
    password: str | None,
    *,
    role: accounts.Role = "member",
    email: str | None = None,
    department: str | None = None,
    active: bool = True,
) -> None:
    """A user row as `tandem user add` makes it, on a migrated database."""
    await upgrade_schema(url)
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            department_id = None
            if department is not None:
                row = await accounts.get_department_by_name(conn, department)
                row = row or await accounts.create_department(conn, department)
                department_id = int(row.id)
            await accounts.create_user(
                conn,
                name,
                display_name=name.title(),
                email=email,
                department_id=department_id,
                role=role,
                active=active,
                password_hash=hash_password(password) if password is not None else None,
            )
    finally:
        await engine.dispose()


async def login(
    server: ServerProcess, user: str, password: str, *, address: str | None = None
) -> httpx.Response:
    """POST /api/auth/login, from `address` (any 127.x.y.z reaches the server) if given."""
    transport = httpx.AsyncHTTPTransport(local_address=address) if address else None
    async with httpx.AsyncClient(
        base_url=f"{server.http_url}/api", timeout=30, transport=transport
    ) as http:
        return await http.post("/auth/login", json={"user": user, "password": password})


async def token_of(server: ServerProcess, user: str, password: str) -> str:
    response = await login(server, user, password)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def test_login_gives_a_token_that_works_on_me_and_docs(
    database_url: str, make_server: ServerFactory
) -> None:
    await seed_user(database_url, "alice", "correct horse", email="alice@example.com")
    server = await make_server(database_url, TANDEM_SECRET=SECRET)

    response = await login(server, "alice", "correct horse")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["user"] == {
        "id": "alice",
        "name": "Alice",
        "email": "alice@example.com",
        "department": None,
        "role": "member",
        "active": True,
    }
    expires = datetime.fromisoformat(body["expires_at"]).timestamp()
    assert abs(expires - (time.time() + 30 * 24 * 3600)) < 60
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"], issuer="tandem")
    assert claims["sub"] == "alice" and claims["exp"] == int(expires)

    async with api(server, body["token"]) as http:
        me = await http.get("/me")
        assert me.status_code == 200 and me.json() == body["user"]
        assert (await http.get("/docs")).status_code == 200
    async with api(server) as anonymous:
        assert_error(await anonymous.get("/me"), 401)
        assert_error(await anonymous.get("/docs"), 401)

    # The e-mail address signs in too, in any case.
    by_email = await login(server, "ALICE@example.com", "correct horse")
    assert by_email.status_code == 200 and by_email.json()["user"]["id"] == "alice"


async def test_every_failed_login_answers_the_same(
    database_url: str, make_server: ServerFactory
) -> None:
    await seed_user(database_url, "alice", "correct horse")
    await seed_user(database_url, "gone", "correct horse", active=False)
    await seed_user(database_url, "external", None)
    server = await make_server(database_url, TANDEM_SECRET=SECRET)

    answers = [
        await login(server, "alice", "wrong horse"),
        await login(server, "nobody", "correct horse"),
        await login(server, "nobody@example.com", "correct horse"),
        await login(server, "gone", "correct horse"),  # disabled, right password
        await login(server, "external", "correct horse"),  # no password at all
    ]
    for response in answers:
        assert response.status_code == 401
        assert response.json() == {"error": {"status": 401, "message": WRONG}}
    assert len({r.content for r in answers}) == 1
    assert (await login(server, "alice", "correct horse")).status_code == 200


async def test_a_malformed_login_is_422_naming_the_field(make_server: ServerFactory) -> None:
    server = await make_server(TANDEM_SECRET=SECRET)
    async with api(server) as http:
        assert_error(await http.post("/auth/login", json={"user": "alice"}), 422, "password")
        assert_error(await http.post("/auth/login", json={"password": "x"}), 422, "user")
        assert_error(await http.post("/auth/login", content=b"not json"), 422, "body")


async def test_the_eleventh_failure_for_one_account_is_429(
    sqlite_url: str, make_server: ServerFactory
) -> None:
    await seed_user(sqlite_url, "alice", "correct horse")
    await seed_user(sqlite_url, "bob", "battery staple")
    server = await make_server(sqlite_url, TANDEM_SECRET=SECRET)
    # Each attempt from another address: only the account's own count can stop them.
    for i in range(10):
        response = await login(server, "alice", f"guess {i}", address=f"127.0.1.{i + 1}")
        assert response.status_code == 401, response.text
    refused = await login(server, "alice", "correct horse", address="127.0.2.1")
    assert_error(refused, 429)
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Signing in with the e-mail address or another case counts for the same account.
    assert (await login(server, "ALICE", "correct horse", address="127.0.2.2")).status_code == 429
    # Other accounts are not affected.
    assert (await login(server, "bob", "battery staple", address="127.0.2.3")).status_code == 200
    assert server.log().count("refused for") == 1  # the offender is logged once


async def test_the_eleventh_failure_from_one_address_is_429(
    sqlite_url: str, make_server: ServerFactory
) -> None:
    await seed_user(sqlite_url, "alice", "correct horse")
    server = await make_server(sqlite_url, TANDEM_SECRET=SECRET)
    for i in range(10):
        response = await login(server, f"user{i}", "guess", address="127.0.3.1")
        assert response.status_code == 401, response.text
    refused = await login(server, "alice", "correct horse", address="127.0.3.1")
    assert_error(refused, 429)
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert (await login(server, "alice", "correct horse", address="127.0.3.2")).status_code == 200


async def test_the_limit_is_a_setting(sqlite_url: str, make_server: ServerFactory) -> None:
    await seed_user(sqlite_url, "alice", "correct horse")
    server = await make_server(
        sqlite_url, TANDEM_SECRET=SECRET, TANDEM_LOGIN_ATTEMPTS_PER_MINUTE="2"
    )
    for _ in range(2):
        assert (await login(server, "alice", "wrong")).status_code == 401
    assert (await login(server, "alice", "correct horse")).status_code == 429


async def test_logout_revokes_the_token(database_url: str, make_server: ServerFactory) -> None:
    await seed_user(database_url, "alice", "correct horse")
    server = await make_server(database_url, TANDEM_SECRET=SECRET)
    token = await token_of(server, "alice", "correct horse")
    claims = jwt.decode(token, options={"verify_signature": False})
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            assert not await accounts.is_revoked(conn, claims["jti"])
        async with api(server, token) as http:
            response = await http.post("/auth/logout")
            assert response.status_code == 204, response.text
        async with engine.connect() as conn:
            assert await accounts.is_revoked(conn, claims["jti"])
    finally:
        await engine.dispose()
    rows = await query(database_url, 'SELECT "user", expires_at FROM revoked_tokens')
    assert len(rows) == 1 and rows[0][0] == "alice" and rows[0][1] is not None
    async with api(server) as anonymous:
        assert_error(await anonymous.post("/auth/logout"), 401)


async def test_without_a_secret_login_is_503_and_everyone_is_the_local_admin(
    sqlite_url: str, make_server: ServerFactory
) -> None:
    await seed_user(sqlite_url, "alice", "correct horse")
    server = await make_server(sqlite_url)
    response = await login(server, "alice", "correct horse")
    assert_error(response, 503)
    assert response.json()["error"]["message"] == "sign-in needs TANDEM_SECRET"
    async with api(server) as http:
        me = await http.get("/me")
    assert me.status_code == 200
    assert me.json()["id"] == "local" and me.json()["role"] == "admin"
    assert "1 users but no TANDEM_SECRET: sign-in is off" in server.log()


@pytest.mark.parametrize("users", [0, 2])
async def test_start_up_says_whether_sign_in_is_on(
    sqlite_url: str, make_server: ServerFactory, users: int
) -> None:
    for i in range(users):
        await seed_user(sqlite_url, f"user{i}", "correct horse")
    server = await make_server(sqlite_url, TANDEM_SECRET=SECRET)
    assert f"sign-in on: {users} users" in server.log()
    await server.stop()
    open_server = await make_server(sqlite_url)
    expected = (
        "no users and no TANDEM_SECRET: every connection is the local user with full access"
        if users == 0
        else f"{users} users but no TANDEM_SECRET"
    )
    assert expected in open_server.log()


async def test_me_for_a_token_without_a_user_row_and_for_a_disabled_user(
    sqlite_url: str, make_server: ServerFactory
) -> None:
    from server.auth import issue_token

    await seed_user(sqlite_url, "alice", "correct horse")
    server = await make_server(sqlite_url, TANDEM_SECRET=SECRET)
    token = await token_of(server, "alice", "correct horse")
    async with api(server, issue_token(SECRET, "robot")) as http:
        me = (await http.get("/me")).json()
    assert me["id"] == "robot" and me["role"] == "member"
    engine = create_engine(sqlite_url)
    try:
        async with engine.begin() as conn:
            assert await accounts.disable_user(conn, "alice")
    finally:
        await engine.dispose()
    async with api(server, token) as http:
        assert_error(await http.get("/me"), 401)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_sliding_window_counts_failures_per_key_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from server.limits import SlidingWindow

    clock = Clock()
    window = SlidingWindow(3, 60.0, clock=clock, name="sign-in")
    for _ in range(3):
        assert window.retry_after("a") == 0
        window.record("a")
        clock.now += 10
    # Failures at 1000, 1010, 1020; now 1030: "a" waits until the first is 60 s old.
    assert window.retry_after("a") == pytest.approx(30.0)
    assert window.retry_after("b") == 0
    assert window.retry_after("a") == pytest.approx(30.0)
    assert sum("refused for" in r.getMessage() for r in caplog.records) == 1
    clock.now = 1060.0
    assert window.retry_after("a") == 0  # the first failure left the window
    window.record("a")
    assert window.retry_after("a") == pytest.approx(10.0)  # now the second one decides
    assert sum("refused for" in r.getMessage() for r in caplog.records) == 2
    clock.now = 2000.0
    assert window.retry_after("a") == 0 and len(window) == 0  # forgotten entirely
    unlimited = SlidingWindow(0, clock=clock)
    for _ in range(100):
        unlimited.record("a")
    assert unlimited.retry_after("a") == 0


def test_password_checks_never_raise() -> None:
    from server import passwords

    stored = passwords.hash_password("correct horse")
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert passwords.hash_password("correct horse") != stored  # salted
    assert passwords.verify_password(stored, "correct horse")
    assert not passwords.verify_password(stored, "correct horsE")
    assert not passwords.verify_password("not a hash", "correct horse")
    assert not passwords.verify_password(stored, "\ud800")  # a lone surrogate
    assert not passwords.dummy_verify("correct horse")
    assert not passwords.needs_rehash(stored)
    weaker = PasswordHasher(time_cost=1).hash("correct horse")
    assert passwords.verify_password(weaker, "correct horse") and passwords.needs_rehash(weaker)
