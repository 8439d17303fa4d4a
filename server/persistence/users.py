"""Users and departments for sign-in and administration, and revoked tokens.

Plain functions over SQLAlchemy Core taking an open connection, like workspace.py (whose
older `create_user`/`get_user` keep working: the new columns have server defaults). A user
is addressed by its name, the id that tokens carry; e-mail addresses are stored in lower case
and unique. User rows come back with the department's name as `department`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Row, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from server.persistence.tables import departments, documents, folders, grants, revoked_tokens, users

Role = Literal["member", "lead", "admin"]
ROLES: tuple[Role, ...] = ("member", "lead", "admin")
# The columns `update_user` may change (department by id).
JTI_CHARS = 64  # revoked_tokens.jti
USER_FIELDS = ("display_name", "email", "department_id", "role", "active", "password_hash")


def now() -> datetime:
    return datetime.now(UTC)


def normalize_email(email: str | None) -> str | None:
    return email.strip().lower() if email is not None else None


def _user_select() -> Any:
    return select(users, departments.c.name.label("department")).select_from(
        users.outerjoin(departments, users.c.department_id == departments.c.id)
    )


def user_json(row: Any) -> dict[str, Any]:
    """The public JSON of a user row from this module (never the password hash)."""
    return {
        "id": row.name,
        "name": row.display_name or row.name,
        "email": row.email,
        "department": row.department,
        "role": row.role,
        "active": bool(row.active),
    }


# -- users ------------------------------------------------------------------------------------


async def create_user(
    conn: AsyncConnection,
    name: str,
    *,
    display_name: str | None = None,
    email: str | None = None,
    department_id: int | None = None,
    role: Role = "member",
    active: bool = True,
    password_hash: str | None = None,
) -> Row[Any]:
    """Insert a user; raises IntegrityError when the name or e-mail is taken."""
    await conn.execute(
        insert(users).values(
            name=name,
            display_name=display_name,
            email=normalize_email(email),
            department_id=department_id,
            role=role,
            active=active,
            password_hash=password_hash,
            created_at=now(),
        )
    )
    row = await get_user(conn, name)
    assert row is not None
    return row


async def get_user(conn: AsyncConnection, name: str) -> Row[Any] | None:
    return (await conn.execute(_user_select().where(users.c.name == name))).first()


async def get_user_by_email(conn: AsyncConnection, email: str) -> Row[Any] | None:
    stmt = _user_select().where(users.c.email == normalize_email(email))
    return (await conn.execute(stmt)).first()


async def find_sign_in(conn: AsyncConnection, login: str) -> Row[Any] | None:
    """The user `login` names: a user id, or else an e-mail address."""
    row = await get_user(conn, login)
    if row is None and "@" in login:
        row = await get_user_by_email(conn, login)
    return row


async def list_users(
    conn: AsyncConnection, *, department_id: int | None = None
) -> Sequence[Row[Any]]:
    stmt = _user_select().order_by(users.c.name)
    if department_id is not None:
        stmt = stmt.where(users.c.department_id == department_id)
    return (await conn.execute(stmt)).all()


async def count_users(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(users))).scalar_one())


async def count_active_admins(conn: AsyncConnection) -> int:
    stmt = select(func.count()).where(users.c.role == "admin", users.c.active.is_(True))
    return int((await conn.execute(stmt)).scalar_one())


async def update_user(
    conn: AsyncConnection, name: str, changes: Mapping[str, Any]
) -> Row[Any] | None:
    """Set any of USER_FIELDS; None if there is no such user. IntegrityError for a taken
    e-mail address."""
    values = {key: changes[key] for key in USER_FIELDS if key in changes}
    if "email" in values:
        values["email"] = normalize_email(values["email"])
    if values:
        result = await conn.execute(update(users).where(users.c.name == name).values(**values))
        if result.rowcount != 1:
            return None
    return await get_user(conn, name)


async def disable_user(conn: AsyncConnection, name: str) -> bool:
    """Stop a user from signing in; False if there is no such user."""
    result = await conn.execute(update(users).where(users.c.name == name).values(active=False))
    return result.rowcount == 1


async def set_password(conn: AsyncConnection, name: str, password_hash: str | None) -> bool:
    """Store a new password hash (None: no password); False if there is no such user."""
    result = await conn.execute(
        update(users).where(users.c.name == name).values(password_hash=password_hash)
    )
    return result.rowcount == 1


async def is_admin(conn: AsyncConnection, name: str) -> bool:
    """Whether `name` is an active user with the admin role."""
    stmt = select(users.c.id).where(
        users.c.name == name, users.c.role == "admin", users.c.active.is_(True)
    )
    return (await conn.execute(stmt)).first() is not None


async def is_disabled(conn: AsyncConnection, name: str) -> bool:
    """Whether `name` is a user who has been disabled (a name without a row is not)."""
    stmt = select(users.c.id).where(users.c.name == name, users.c.active.is_(False))
    return (await conn.execute(stmt)).first() is not None


# -- departments --------------------------------------------------------------------------------


def _department_select() -> Any:
    members = (
        select(func.count())
        .where(users.c.department_id == departments.c.id)
        .scalar_subquery()
        .label("users")
    )
    return select(departments, members)


def department_json(row: Any) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "users": int(row.users)}


async def create_department(conn: AsyncConnection, name: str) -> Row[Any]:
    """Insert a department; raises IntegrityError when the name is taken."""
    result = await conn.execute(insert(departments).values(name=name).returning(departments.c.id))
    row = await get_department(conn, int(result.scalar_one()))
    assert row is not None
    return row


async def get_department(conn: AsyncConnection, department_id: int) -> Row[Any] | None:
    stmt = _department_select().where(departments.c.id == department_id)
    return (await conn.execute(stmt)).first()


async def get_department_by_name(conn: AsyncConnection, name: str) -> Row[Any] | None:
    stmt = _department_select().where(departments.c.name == name)
    return (await conn.execute(stmt)).first()


async def list_departments(conn: AsyncConnection) -> Sequence[Row[Any]]:
    return (await conn.execute(_department_select().order_by(departments.c.name))).all()


async def rename_department(
    conn: AsyncConnection, department_id: int, name: str
) -> Row[Any] | None:
    """Rename a department, and the folders, documents and grants naming it (they
    carry the name, not the id). None if there is no such department; IntegrityError when the
    new name is taken."""
    old = await get_department(conn, department_id)
    if old is None:
        return None
    if old.name != name:
        await conn.execute(
            update(departments).where(departments.c.id == department_id).values(name=name)
        )
        await conn.execute(
            update(folders).where(folders.c.department == old.name).values(department=name)
        )
        await conn.execute(
            update(documents).where(documents.c.department == old.name).values(department=name)
        )
        await conn.execute(
            update(grants).where(grants.c.department == old.name).values(department=name)
        )
    return await get_department(conn, department_id)


async def department_usage(conn: AsyncConnection, name: str) -> dict[str, int]:
    """How many users, folders and (live) documents belong to the department `name`."""
    members = (
        select(func.count())
        .select_from(users.join(departments, users.c.department_id == departments.c.id))
        .where(departments.c.name == name)
    )
    in_folders = select(func.count()).where(folders.c.department == name)
    in_docs = select(func.count()).where(
        documents.c.department == name, documents.c.deleted_at.is_(None)
    )
    return {
        "users": int((await conn.execute(members)).scalar_one()),
        "folders": int((await conn.execute(in_folders)).scalar_one()),
        "documents": int((await conn.execute(in_docs)).scalar_one()),
    }


async def delete_department(conn: AsyncConnection, department_id: int) -> bool:
    """Delete a department (check `department_usage` first); False if there is none."""
    result = await conn.execute(departments.delete().where(departments.c.id == department_id))
    return result.rowcount == 1


# -- revoked tokens ------------------------------------------------------------------------------


def _jti_key(jti: str) -> str:
    """The stored form of a token id: itself, or its SHA-256 when longer than the column
    (an identity provider's ids may be)."""
    if len(jti) <= JTI_CHARS:
        return jti
    return hashlib.sha256(jti.encode("utf-8", "surrogatepass")).hexdigest()


async def revoke_token(
    conn: AsyncConnection, jti: str, user: str, expires_at: datetime | None
) -> None:
    """Record that the token `jti` was signed out (again: nothing changes)."""
    if await is_revoked(conn, jti):
        return
    await conn.execute(
        insert(revoked_tokens).values(
            jti=_jti_key(jti), user=user[:128], expires_at=expires_at, revoked_at=now()
        )
    )


async def is_revoked(conn: AsyncConnection, jti: str) -> bool:
    """Whether the token with this id has been signed out."""
    stmt = select(revoked_tokens.c.jti).where(revoked_tokens.c.jti == _jti_key(jti))
    return (await conn.execute(stmt)).first() is not None


async def prune_revoked(conn: AsyncConnection) -> int:
    """Forget revoked tokens that have expired anyway; how many rows went."""
    result = await conn.execute(revoked_tokens.delete().where(revoked_tokens.c.expires_at < now()))
    return int(result.rowcount)
