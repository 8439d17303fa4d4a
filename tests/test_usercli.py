"""`tandem user add|list|disable|passwd` as a subprocess on SQLite and PostgreSQL, checked
through the database and through signing in to a real server."""

from __future__ import annotations

import asyncio
import os
import sys
import unicodedata
from dataclasses import dataclass

import pytest
from conftest import ROOT, ServerFactory, upgrade_schema
from helpers import query
from test_login import SECRET, login


def columns(text: str) -> int:
    """How many terminal columns `text` takes (CJK characters take two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


@dataclass
class Result:
    code: int
    out: str
    err: str


async def tandem_user(url: str, *args: str, stdin: str = "") -> Result:
    """`python -m server user ARGS` with TANDEM_DATABASE_URL=url; stdin is a pipe."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "user",
        *args,
        cwd=ROOT,
        env={**os.environ, "TANDEM_DATABASE_URL": url},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def test_add_list_passwd_disable_round_trip(
    database_url: str, make_server: ServerFactory
) -> None:
    if database_url.startswith("postgresql"):
        # PostgreSQL is migrated by `tandem db upgrade`, never behind one's back.
        refused = await tandem_user(database_url, "list")
        assert refused.code == 1 and "tandem db upgrade" in refused.err
        await upgrade_schema(database_url)

    added = await tandem_user(
        database_url,
        "add",
        "alice",
        "--name",
        "Alice Liddell",
        "--department",
        "市场部",
        "--create-department",
        "--role",
        "lead",
        "--email",
        "Alice@Example.com",
        stdin="through the looking glass\n",
    )
    assert added.code == 0, added.err
    added = await tandem_user(
        database_url, "add", "王晓雯", "--name", "王晓雯", "--department", "市场部",
        "--password", "wang password",
    )  # fmt: skip
    assert added.code == 0, added.err

    listed = await tandem_user(database_url, "list")
    assert listed.code == 0, listed.err
    header, *rows = listed.out.splitlines()
    assert header.split() == ["ID", "NAME", "EMAIL", "DEPARTMENT", "ROLE", "ACTIVE", "PASSWORD"]
    assert rows[0].split() == [
        "alice", "Alice", "Liddell", "alice@example.com", "市场部", "lead", "yes", "set",
    ]  # fmt: skip
    assert rows[1].split() == ["王晓雯", "王晓雯", "市场部", "member", "yes", "set"]
    # Columns line up in a terminal: the wide characters count twice.
    assert columns(rows[0][: rows[0].index("lead")]) == header.index("ROLE")
    assert columns(rows[1][: rows[1].index("member")]) == header.index("ROLE")

    hashes = await query(database_url, "SELECT password_hash FROM users")
    assert all(h.startswith("$argon2id$") for (h,) in hashes)

    server = await make_server(database_url, TANDEM_SECRET=SECRET)
    assert (
        await login(server, "alice@example.com", "through the looking glass")
    ).status_code == 200
    assert (await login(server, "王晓雯", "wang password")).status_code == 200

    changed = await tandem_user(database_url, "passwd", "alice", "--password", "a new password")
    assert changed.code == 0, changed.err
    assert (await login(server, "alice", "through the looking glass")).status_code == 401
    assert (await login(server, "alice", "a new password")).status_code == 200
    changed = await tandem_user(database_url, "passwd", "alice", stdin="from stdin 123\n")
    assert changed.code == 0, changed.err
    assert (await login(server, "alice", "from stdin 123")).status_code == 200

    disabled = await tandem_user(database_url, "disable", "alice")
    assert disabled.code == 0, disabled.err
    assert (await login(server, "alice", "from stdin 123")).status_code == 401
    listed = await tandem_user(database_url, "list")
    assert listed.out.splitlines()[1].split()[-2:] == ["no", "set"]


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        # Not found: 1, and an unknown department names the ones there are.
        (["add", "bob", "--name", "B", "--department", "Nowhere"], "", 1, "are: IT"),
        (["add", "root", "--name", "R", "--department", "IT"], "password1\n", 1, "exists"),
        (["disable", "nobody"], "", 1, "no user 'nobody'"),
        (["passwd", "nobody"], "password1\n", 1, "no user 'nobody'"),
        # Usage errors: 2.
        (["add", "bob", "--name", "B", "--department", "IT"], "short\n", 2, "at least 8"),
        (["add", "bob", "--name", "B", "--department", "IT"], "", 2, "no password"),
        (["add", "b/b", "--name", "B", "--department", "IT"], "", 2, "user id"),
        (["add", "bob", "--name", "B", "--department", "IT", "--email", "x"], "", 2, "e-mail"),
        (["add", "bob", "--name", "B", "--department", "IT", "--role", "boss"], "", 2, "boss"),
        (["add", "bob", "--department", "IT"], "", 2, "--name"),
        (["passwd", "root", "--password", "short"], "", 2, "at least 8"),
    ],
)
async def test_errors_say_what_is_wrong_and_change_nothing(
    sqlite_url: str, args: list[str], stdin: str, code: int, message: str
) -> None:
    created = await tandem_user(
        sqlite_url, "add", "root", "--name", "Root", "--department", "IT",
        "--create-department", "--role", "admin", "--password", "root password",
    )  # fmt: skip
    assert created.code == 0, created.err
    before = await query(sqlite_url, "SELECT * FROM users ORDER BY id")

    result = await tandem_user(sqlite_url, *args, stdin=stdin)
    assert result.code == code, result.err
    assert message in result.err
    assert await query(sqlite_url, "SELECT * FROM users ORDER BY id") == before


async def test_an_external_user_has_no_password(sqlite_url: str) -> None:
    result = await tandem_user(
        sqlite_url, "add", "ext", "--name", "E", "--department", "IT", "--create-department",
        "--no-password",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "without a password" in result.out
    assert await query(sqlite_url, "SELECT password_hash FROM users") == [(None,)]
