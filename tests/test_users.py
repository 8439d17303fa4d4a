"""/api/users and /api/departments against real servers: admins change them, everyone else
reads them; only argon2id hashes are stored; the schema matches server/persistence/tables.py;
the demo people can sign in."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from conftest import ServerFactory, ServerProcess, upgrade_schema
from helpers import api, assert_error, query
from test_login import SECRET, login, seed_user, token_of

from server.auth import issue_token
from server.persistence.sql import create_engine
from server.persistence.tables import metadata


async def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


async def admin_server(url: str, make_server: ServerFactory) -> tuple[ServerProcess, str]:
    await seed_user(url, "root", "root password", role="admin", department="IT")
    server = await make_server(url, TANDEM_SECRET=SECRET)
    return server, await token_of(server, "root", "root password")


async def test_an_admin_manages_users(database_url: str, make_server: ServerFactory) -> None:
    server, token = await admin_server(database_url, make_server)
    async with api(server, token) as http:
        created = await http.post(
            "/users",
            json={
                "id": "王晓雯",
                "name": "王晓雯 · 市场部经理",
                "email": "Wang@Example.com",
                "department": "IT",
                "role": "lead",
                "password": "first password",
            },
        )
        user = await _ok(created, 201)
        assert user == {
            "id": "王晓雯",
            "name": "王晓雯 · 市场部经理",
            "email": "wang@example.com",
            "department": "IT",
            "role": "lead",
            "active": True,
        }
        assert created.headers["location"] == "/api/users/%E7%8E%8B%E6%99%93%E9%9B%AF"
        assert await _ok(await http.get(created.headers["location"][4:])) == user
        listed = await _ok(await http.get("/users"))
        assert [u["id"] for u in listed["users"]] == ["root", "王晓雯"]
        assert (await _ok(await http.get("/users", params={"department": "none"})))["users"] == []

        # The new user signs in with the password the admin set.
        assert (await login(server, "wang@example.com", "first password")).status_code == 200

        # Duplicates are 409, naming the field.
        assert_error(await http.post("/users", json={"id": "王晓雯"}), 409, "id")
        assert_error(
            await http.post("/users", json={"id": "other", "email": "WANG@example.com"}),
            409,
            "email",
        )
        # Invalid input is 422, naming the field.
        for body, field in (
            ({"id": "a/b"}, "id"),
            ({"id": "has@sign"}, "id"),
            ({"id": "local"}, "id"),
            ({"id": "x", "email": "not an address"}, "email"),
            ({"id": "x", "role": "boss"}, "role"),
            ({"id": "x", "password": "short"}, "password"),
            ({"id": "x", "department": "Nowhere"}, "department"),
            ({"id": "x", "colour": "red"}, "colour"),
        ):
            assert_error(await http.post("/users", json=body), 422, field)
        nowhere = await http.post("/users", json={"id": "x", "department": "Nowhere"})
        assert "IT" in nowhere.json()["error"]["message"]  # it says which departments exist

        # PATCH changes what it is given.
        path = "/users/王晓雯"
        changed = await _ok(await http.patch(path, json={"name": None, "role": "member"}))
        assert changed["name"] == "王晓雯" and changed["role"] == "member"
        assert changed["email"] == "wang@example.com" and changed["department"] == "IT"
        changed = await _ok(await http.patch(path, json={"department": None, "email": None}))
        assert changed["department"] is None and changed["email"] is None
        await _ok(await http.patch(path, json={"password": "second password"}))
        assert (await login(server, "王晓雯", "first password")).status_code == 401
        assert (await login(server, "王晓雯", "second password")).status_code == 200
        assert (await _ok(await http.patch(path, json={"active": False})))["active"] is False
        assert (await login(server, "王晓雯", "second password")).status_code == 401
        assert_error(await http.patch(path, json={"role": None}), 422, "role")
        assert_error(await http.patch(path, json={"email": "root@"}), 422, "email")
        assert_error(await http.patch("/users/nobody", json={"role": "lead"}), 404)
        assert_error(await http.get("/users/nobody"), 404)

        # The last active admin cannot be demoted or disabled.
        assert_error(await http.patch("/users/root", json={"role": "lead"}), 409, "role")
        assert_error(await http.patch("/users/root", json={"active": False}), 409, "active")
        await _ok(await http.patch(path, json={"role": "admin", "active": True}))
        assert (await _ok(await http.patch("/users/root", json={"role": "lead"})))["role"] == "lead"


async def test_an_admin_manages_departments(database_url: str, make_server: ServerFactory) -> None:
    server, token = await admin_server(database_url, make_server)
    async with api(server, token) as http:
        sales = await _ok(await http.post("/departments", json={"name": "Sales"}), 201)
        assert sales["name"] == "Sales" and sales["users"] == 0
        assert_error(await http.post("/departments", json={"name": "Sales"}), 409, "name")
        assert_error(await http.post("/departments", json={"name": "  "}), 422, "name")
        listed = await _ok(await http.get("/departments"))
        assert [(d["name"], d["users"]) for d in listed["departments"]] == [
            ("IT", 1),
            ("Sales", 0),
        ]
        folder = await _ok(
            await http.post("/folders", json={"name": "Leads", "department": "Sales"}), 201
        )

        # Renaming relabels the folders (and documents) of the department.
        renamed = await _ok(
            await http.patch(f"/departments/{sales['id']}", json={"name": "Revenue"})
        )
        assert renamed == {"id": sales["id"], "name": "Revenue", "users": 0}
        assert (await _ok(await http.get(f"/folders/{folder['id']}")))["department"] == "Revenue"
        assert_error(await http.patch(f"/departments/{sales['id']}", json={"name": "IT"}), 409)
        assert_error(await http.patch("/departments/9999", json={"name": "X"}), 404)

        # A department something still belongs to stays.
        in_use = await http.delete(f"/departments/{sales['id']}")
        assert_error(in_use, 409)
        assert "1 folders" in in_use.json()["error"]["message"]
        assert (await http.delete(f"/folders/{folder['id']}")).status_code == 204
        assert (await http.delete(f"/departments/{sales['id']}")).status_code == 204
        assert_error(await http.delete(f"/departments/{sales['id']}"), 404)


async def test_writes_are_for_admins_only(sqlite_url: str, make_server: ServerFactory) -> None:
    server, admin = await admin_server(sqlite_url, make_server)
    await seed_user(sqlite_url, "member", "member password", department="IT")
    await seed_user(sqlite_url, "lead", "lead password", role="lead", department="IT")
    await seed_user(sqlite_url, "gone", "gone password", role="admin", active=False)
    writes = (
        ("POST", "/users", {"id": "new"}),
        ("PATCH", "/users/member", {"role": "admin"}),
        ("POST", "/departments", {"name": "New"}),
        ("PATCH", "/departments/1", {"name": "New"}),
        ("DELETE", "/departments/1", None),
    )
    callers = {
        "member": await token_of(server, "member", "member password"),
        "lead": await token_of(server, "lead", "lead password"),
        "no row": issue_token(SECRET, "robot"),
        "disabled admin": issue_token(SECRET, "gone"),
        "read-only admin": issue_token(SECRET, "root", read_only=True),
        "admin, one document": issue_token(SECRET, "root", doc="d1"),
    }
    for who, token in callers.items():
        async with api(server, token) as http:
            for method, path, body in writes:
                response = await http.request(method, path, json=body)
                # A disabled user is not signed in at all any more: 401, not 403.
                expected = 401 if who == "disabled admin" else 403
                assert response.status_code == expected, (who, method, path, response.text)
            if who in ("member", "lead", "no row"):
                assert (await http.get("/users")).status_code == 200
                assert (await http.get("/departments")).status_code == 200
                assert (await http.get("/users/root")).status_code == 200
    async with api(server, admin) as http:
        assert (await http.get("/users/member")).json()["role"] == "member"
        assert (await http.post("/departments", json={"name": "New"})).status_code == 201
    async with api(server) as anonymous:
        assert_error(await anonymous.get("/users"), 401)
        assert_error(await anonymous.post("/users", json={"id": "x"}), 401)


async def test_without_sign_in_the_local_user_may_manage_users(
    sqlite_url: str, make_server: ServerFactory
) -> None:
    server = await make_server(sqlite_url)
    async with api(server) as http:
        await _ok(await http.post("/departments", json={"name": "IT"}), 201)
        body = {"id": "alice", "department": "IT", "password": "alice password"}
        user = await _ok(await http.post("/users", json=body), 201)
        assert user["role"] == "member" and user["name"] == "alice"


async def test_only_argon2id_hashes_are_stored(
    database_url: str, make_server: ServerFactory, tmp_path: Path
) -> None:
    server, token = await admin_server(database_url, make_server)
    secrets = ["first plaintext 1", "second plaintext 2", "third plaintext 3", "root password"]
    async with api(server, token) as http:
        await _ok(await http.post("/users", json={"id": "a", "password": secrets[0]}), 201)
        await _ok(await http.post("/users", json={"id": "b", "password": secrets[1]}), 201)
        await _ok(await http.patch("/users/b", json={"password": secrets[2]}))
        await _ok(await http.post("/users", json={"id": "c"}), 201)  # no password
    for user, password in (("a", secrets[0]), ("b", secrets[2]), ("root", secrets[3])):
        assert (await login(server, user, password)).status_code == 200
        assert (await login(server, user, password + "x")).status_code == 401
    await server.stop()  # the SQLite file (and its WAL) as it stays on disk

    hashes = dict(await query(database_url, "SELECT name, password_hash FROM users"))
    assert hashes["c"] is None
    stored = [hashes[name] for name in ("a", "b", "root")]
    assert all(h.startswith("$argon2id$") for h in stored), stored
    assert len(set(stored)) == 3
    everything = await _every_value(database_url)
    if database_url.startswith("sqlite"):
        path = Path(database_url.split(":///", 1)[1])
        for file in path.parent.glob(path.name + "*"):
            everything += file.read_bytes().decode("latin-1")
    for password in secrets:
        assert password not in everything


async def _every_value(url: str) -> str:
    """Every row of every table, as text."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            values: list[str] = []
            for table in metadata.sorted_tables:
                for row in (await conn.execute(table.select())).all():
                    values.extend(repr(value) for value in row)
            return "\n".join(values)
    finally:
        await engine.dispose()


TABLES = (
    "users",
    "revoked_tokens",
    "grants",
    "share_links",
    "audit_events",
    "feed_checkpoints",
    "task_index",
    "message_index",
    "edit_bursts",
    "watches",
    "events",
    "notifications",
    "notification_prefs",
    "webhooks",
    "webhook_deliveries",
)


async def test_the_migrations_make_the_tables_the_code_declares(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    await upgrade_schema(database_url)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
    finally:
        await engine.dispose()
    # Alembic reports each difference as a tuple (or a list of them) naming the table.
    mine = [
        d
        for d in differences
        if re.search(rf"\b({'|'.join(TABLES)})\b", repr(d))
    ]
    assert mine == []


async def test_the_demo_people_sign_in_with_the_passwords_logged_once(
    sqlite_url: str, make_server: ServerFactory
) -> None:
    server = await make_server(sqlite_url, TANDEM_SECRET=SECRET, TANDEM_DEMO="1")
    lines = re.findall(r"^  (\S+)\s+(\S+@double11\.example)\s+(\w+)\s+(\S+)$", server.log(), re.M)
    assert len(lines) == 9, server.log()
    roles = [role for _, _, role, _ in lines]
    assert roles.count("admin") == 1 and roles.count("lead") == 3
    admin = next(line for line in lines if line[2] == "admin")
    response = await login(server, admin[1], admin[3])
    assert response.status_code == 200, response.text
    assert response.json()["user"]["role"] == "admin"
    assert response.json()["user"]["department"] == "客服部"
    await server.stop()
    again = await make_server(sqlite_url, TANDEM_SECRET=SECRET, TANDEM_DEMO="1")
    assert "double11.example" not in again.log()
    assert "sign-in on: 9 users" in again.log()
