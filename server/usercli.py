"""`tandem user add|list|disable|passwd`: manage users on the database directly.

The server may be running or not. A SQLite database is migrated first, as `tandem serve`
does; a PostgreSQL one must be current (`tandem db upgrade`). Exit codes: 0 done, 1 a user
or department that does not exist (or a user that does), 2 a usage error.

A password comes from --password (visible to other local users in the process list), else
from a prompt shown twice when stdin is a terminal, else from the first line of stdin (for
scripts: `printf '%s\\n' "$PASSWORD" | tandem user passwd ID`). Only its argon2id hash is
stored.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server import passwords
from server.persistence import users as accounts
from server.persistence.users import ROLES

NOT_FOUND = 1
USAGE = 2


class CommandError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def add_parsers(commands: Any) -> None:
    """Add `user` and its subcommands to the `tandem` subparsers `commands`."""
    user = commands.add_parser(
        "user",
        help="add, list, disable users and set their passwords",
        description="Manage users on the database directly (the server may be running).",
    )
    user_commands = user.add_subparsers(dest="user_command", required=True)

    add = user_commands.add_parser("add", help="add a user")
    add.add_argument("id", metavar="ID", help="the user id: what tokens carry and sign-in takes")
    add.add_argument("--name", required=True, help="the display name")
    add.add_argument("--department", required=True, help="the department (its name)")
    add.add_argument(
        "--create-department",
        action="store_true",
        help="create the department if there is none of that name",
    )
    add.add_argument("--role", choices=ROLES, default="member", help="default: member")
    add.add_argument("--email", help="an e-mail address, also accepted at sign-in")
    _password_arguments(add)
    add.add_argument(
        "--no-password",
        action="store_true",
        help="no password: the user signs in through an identity provider (or gets one later)",
    )

    user_commands.add_parser("list", help="list the users")

    disable = user_commands.add_parser("disable", help="stop a user from signing in")
    disable.add_argument("id", metavar="ID")

    passwd = user_commands.add_parser("passwd", help="set a user's password")
    passwd.add_argument("id", metavar="ID")
    _password_arguments(passwd)

    for parser in (add, user_commands.choices["list"], disable, passwd):
        parser.add_argument("--database-url", help="SQLAlchemy async URL (TANDEM_DATABASE_URL)")


def _password_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password",
        help="the password (else prompted for, or read from stdin's first line); "
        "visible to other local users while the command runs",
    )


def run(args: argparse.Namespace) -> int:
    """Run `tandem user ...`; returns the exit code."""
    command = f"tandem user {args.user_command}"
    try:
        return asyncio.run(_run(args))
    except CommandError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return exc.code
    except EOFError:
        print(f"{command}: no password given; nothing changed", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


async def _run(args: argparse.Namespace) -> int:
    if args.user_command == "add":
        _check_add_arguments(args)
    engine = await _open(args.database_url)
    try:
        if args.user_command == "list":
            return await _list(engine)
        if args.user_command == "add":
            code = await _add(engine, args)
        elif args.user_command == "disable":
            code = await _disable(engine, args.id)
        else:
            code = await _passwd(engine, args)
        await _tell_servers(engine)
        return code
    finally:
        await engine.dispose()


async def _tell_servers(engine: AsyncEngine) -> None:
    """Running servers re-read users and re-check open connections at once (a disabled
    user's connections close within a second)."""
    from server.access_events import AccessChange, announce
    from server.settings import Settings

    settings = Settings()
    told = await announce(
        AccessChange(), redis_url=settings.redis_url, prefix=settings.redis_prefix, engine=engine
    )
    if not told:
        print(
            "note: a running server on SQLite without TANDEM_REDIS_URL applies this at its next "
            "access change or restart; the REST API (/api/users) applies it at once",
            file=sys.stderr,
        )


async def _open(database_url: str | None) -> AsyncEngine:
    from server.persistence import migrate
    from server.persistence.sql import create_engine
    from server.settings import Settings

    settings = Settings(database_url=database_url) if database_url else Settings()
    if settings.in_memory:
        raise CommandError("memory:// keeps no users; give a database URL", USAGE)
    engine = create_engine(settings.database_url)
    current = await migrate.current(engine)
    if current != migrate.head():
        if not settings.is_sqlite:
            await engine.dispose()
            raise CommandError(
                "the database schema is not current: run `tandem db upgrade`", NOT_FOUND
            )
        await migrate.upgrade(engine)
    return engine


def _check_add_arguments(args: argparse.Namespace) -> None:
    """Usage errors of `user add`, before anything is opened or asked."""
    from server.api.users import check_email, check_user_id

    try:
        check_user_id(args.id)
        if args.email is not None:
            args.email = check_email(args.email.strip())
    except ValueError as exc:
        raise CommandError(str(exc), USAGE) from None
    if not args.name.strip():
        raise CommandError("--name may not be empty", USAGE)
    if not args.department.strip():
        raise CommandError("--department may not be empty", USAGE)
    if args.no_password and args.password is not None:
        raise CommandError("give --password or --no-password, not both", USAGE)


def _read_password(given: str | None) -> str:
    """The new password: `given`, or asked twice on a terminal, or stdin's first line."""
    if given is not None:
        password = given
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise CommandError("the two passwords differ; nothing changed", USAGE)
    else:
        line = sys.stdin.readline()
        if not line:
            raise CommandError("no password on stdin; nothing changed", USAGE)
        password = line.rstrip("\r\n")
    problem = passwords.check_password_rules(password)
    if problem is not None:
        raise CommandError(f"{problem}; nothing changed", USAGE)
    return password


async def _department_id(conn: AsyncConnection, name: str, create: bool) -> int:
    row = await accounts.get_department_by_name(conn, name)
    if row is not None:
        return int(row.id)
    if create:
        return int((await accounts.create_department(conn, name)).id)
    known = [d.name for d in await accounts.list_departments(conn)]
    there = f"the departments are: {', '.join(known)}" if known else "there are no departments yet"
    raise CommandError(
        f"no department {name!r}; {there} (--create-department creates it)", NOT_FOUND
    )


async def _add(engine: AsyncEngine, args: argparse.Namespace) -> int:
    async with engine.connect() as conn:
        if await accounts.get_user(conn, args.id) is not None:
            raise CommandError(f"a user {args.id!r} exists already", NOT_FOUND)
        if args.email is not None and await accounts.get_user_by_email(conn, args.email):
            raise CommandError(f"{args.email} is another user's e-mail address", NOT_FOUND)
        if not args.create_department:
            await _department_id(conn, args.department.strip(), False)
    password_hash = None
    if not args.no_password:
        password_hash = passwords.hash_password(_read_password(args.password))
    try:
        async with engine.begin() as conn:
            department_id = await _department_id(
                conn, args.department.strip(), args.create_department
            )
            row = await accounts.create_user(
                conn,
                args.id,
                display_name=args.name.strip(),
                email=args.email,
                department_id=department_id,
                role=args.role,
                password_hash=password_hash,
            )
    except IntegrityError:
        raise CommandError("the user id or e-mail address was taken meanwhile", NOT_FOUND) from None
    with_password = "with a password" if password_hash else "without a password"
    print(f"added {row.role} {row.name!r} ({row.department}), {with_password}")
    return 0


async def _list(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        rows = await accounts.list_users(conn)
    header = ("ID", "NAME", "EMAIL", "DEPARTMENT", "ROLE", "ACTIVE", "PASSWORD")
    table = [header] + [
        (
            row.name,
            row.display_name or "",
            row.email or "",
            row.department or "",
            row.role,
            "yes" if row.active else "no",
            "set" if row.password_hash else "none",
        )
        for row in rows
    ]
    print(_format_table(table))
    return 0


def _width(text: str) -> int:
    """Terminal columns `text` takes: East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(_width(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell + " " * (width - _width(cell)) for cell, width in zip(row, widths, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


async def _disable(engine: AsyncEngine, user_id: str) -> int:
    async with engine.begin() as conn:
        if not await accounts.disable_user(conn, user_id):
            raise CommandError(f"no user {user_id!r}", NOT_FOUND)
    print(f"disabled {user_id!r}: it can no longer sign in")
    return 0


async def _passwd(engine: AsyncEngine, args: argparse.Namespace) -> int:
    async with engine.connect() as conn:
        if await accounts.get_user(conn, args.id) is None:
            raise CommandError(f"no user {args.id!r}", NOT_FOUND)
    password_hash = passwords.hash_password(_read_password(args.password))
    async with engine.begin() as conn:
        if not await accounts.set_password(conn, args.id, password_hash):
            raise CommandError(f"no user {args.id!r}", NOT_FOUND)
    print(f"password of {args.id!r} set")
    return 0
