"""Who may read or write what: access rules on folders and documents.

A grant gives `read` or `write` to a department, a user, or everyone, on a folder (inherited
by everything beneath it: sub-folders, documents, files) or on one document. A document's
access for a person is the highest of:

- `write` for admins, and for members of an owning department: the department of the
  document or of any folder above it;
- every grant on the document or a folder above it that names the person, their department,
  or everyone;
- `write` when nothing claims the document at all (no owning department, no grant): a
  workspace nobody has divided up stays open, as it was before there were rules.

Otherwise the person has no access; an inactive user has none anywhere. A token narrows this
further: one limited to a document opens only that one, a read-only one (share links
included) never writes.

The rules are small (a row per folder and per grant) and read on every connection and
request, so `AccessControl` keeps them in memory and reloads them after any change it is told
about (`changed()`). Placement of documents (folder, department) is read per check: it is one
indexed row.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.persistence.tables import departments, documents, folders, grants, users
from server.persistence.workspace import now

Access = Literal["none", "read", "write"]
REMEMBERED = 100_000
UNKNOWN_SECONDS = 60.0
"""People and placements kept in memory at most; past that the memory starts over."""
Role = Literal["member", "lead", "admin"]
_RANK: dict[str, int] = {"none": 0, "read": 1, "write": 2}


def highest(*levels: Access) -> Access:
    best: Access = "none"
    for level in levels:
        if _RANK[level] > _RANK[best]:
            best = level
    return best


def lowest(a: Access, b: Access) -> Access:
    return a if _RANK[a] <= _RANK[b] else b


def at_least(level: Access, needed: Access) -> bool:
    return _RANK[level] >= _RANK[needed]


@dataclass(frozen=True, slots=True)
class Person:
    """A user as the rules see them."""

    name: str
    department: str | None = None
    role: str = "member"
    active: bool = True
    display_name: str | None = None

    @property
    def admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class Grant:
    access: Access
    department: str | None = None
    user: str | None = None
    everyone: bool = False

    def names(self, person: Person) -> bool:
        if self.everyone:
            return True
        if self.user is not None:
            return self.user == person.name
        return self.department is not None and self.department == person.department

    def to_json(self) -> dict[str, Any]:
        if self.everyone:
            return {"everyone": True, "access": self.access}
        if self.user is not None:
            return {"user": self.user, "access": self.access}
        return {"department": self.department, "access": self.access}


@dataclass(frozen=True, slots=True)
class FolderNode:
    id: int
    parent_id: int | None
    department: str | None


@dataclass(slots=True)
class Rules:
    """The folder tree and every grant, as loaded at one moment."""

    folders: dict[int, FolderNode] = field(default_factory=dict)
    folder_grants: dict[int, list[Grant]] = field(default_factory=dict)
    doc_grants: dict[str, list[Grant]] = field(default_factory=dict)

    def chain(self, folder_id: int | None) -> list[FolderNode]:
        """The folder and those above it, nearest first (cycles cut)."""
        found: list[FolderNode] = []
        seen: set[int] = set()
        while folder_id is not None and folder_id not in seen:
            seen.add(folder_id)
            node = self.folders.get(folder_id)
            if node is None:
                break
            found.append(node)
            folder_id = node.parent_id
        return found

    def _decide(
        self, person: Person, owners: Iterable[str | None], granted: Iterable[Grant]
    ) -> Access:
        if not person.active:
            return "none"
        if person.admin:
            return "write"
        claimed = False
        for owner in owners:
            if owner is not None:
                claimed = True
                if owner == person.department:
                    return "write"
        best: Access = "none"
        for grant in granted:
            claimed = True
            if grant.names(person):
                best = highest(best, grant.access)
        return best if claimed else "write"

    def folder_access(self, person: Person, folder_id: int) -> Access:
        chain = self.chain(folder_id)
        owners = [node.department for node in chain]
        granted = [g for node in chain for g in self.folder_grants.get(node.id, ())]
        return self._decide(person, owners, granted)

    def document_access(
        self, person: Person, doc_id: str, folder_id: int | None, department: str | None
    ) -> Access:
        chain = self.chain(folder_id)
        owners = [department, *(node.department for node in chain)]
        granted = [
            *self.doc_grants.get(doc_id, ()),
            *(g for node in chain for g in self.folder_grants.get(node.id, ())),
        ]
        return self._decide(person, owners, granted)

    def owning_departments(self, folder_id: int | None, department: str | None) -> set[str]:
        owners = {node.department for node in self.chain(folder_id)} | {department}
        return {owner for owner in owners if owner is not None}


async def load_rules(conn: AsyncConnection) -> Rules:
    rules = Rules()
    for row in await conn.execute(select(folders.c.id, folders.c.parent_id, folders.c.department)):
        rules.folders[row.id] = FolderNode(row.id, row.parent_id, row.department)
    for row in await conn.execute(select(grants)):
        grant = Grant(row.access, row.department, row.user_name, bool(row.everyone))
        if row.folder_id is not None:
            rules.folder_grants.setdefault(row.folder_id, []).append(grant)
        elif row.doc_id is not None:
            rules.doc_grants.setdefault(row.doc_id, []).append(grant)
    return rules


async def load_person(conn: AsyncConnection, name: str) -> tuple[Person, bool]:
    """The user `name`, and whether it has a row; one without (a token issued for any name)
    is a member of no department."""
    row = (
        await conn.execute(
            select(
                users.c.name,
                users.c.display_name,
                users.c.role,
                users.c.active,
                departments.c.name.label("dept"),
            )
            .select_from(users.outerjoin(departments, departments.c.id == users.c.department_id))
            .where(users.c.name == name)
        )
    ).first()
    if row is None:
        return Person(name), False
    person = Person(row.name, row.dept, row.role or "member", bool(row.active), row.display_name)
    return person, True


async def replace_grants(
    conn: AsyncConnection,
    *,
    folder_id: int | None = None,
    doc_id: str | None = None,
    new: Sequence[Grant],
    by: str | None,
) -> None:
    """Make `new` the grants of one folder or document."""
    target = grants.c.folder_id == folder_id if folder_id is not None else grants.c.doc_id == doc_id
    await conn.execute(delete(grants).where(target))
    if new:
        stamp = now()
        await conn.execute(
            insert(grants),
            [
                {
                    "folder_id": folder_id,
                    "doc_id": doc_id,
                    "department": g.department,
                    "user_name": g.user,
                    "everyone": g.everyone,
                    "access": g.access,
                    "created_at": stamp,
                    "created_by": by,
                }
                for g in new
            ],
        )


class AccessControl:
    """The rules in memory, reloaded after a change, and the checks built on them.

    With sign-in off (`enabled` False) every check passes: the local user owns everything.
    """

    def __init__(self, engine: AsyncEngine, *, enabled: bool) -> None:
        self.engine = engine
        self.enabled = enabled
        self._rules: Rules | None = None
        self._people: dict[str, tuple[Person, bool, float]] = {}  # person, has a row, when
        # Where each document sits (folder, department), as read: a reconnect storm opens the
        # same documents over and over. Moves and department changes go through `changed`.
        self._placements: dict[str, tuple[int | None, str | None]] = {}
        self._lock = asyncio.Lock()

    def changed(self) -> None:
        """Rules, folders, documents' placement or users changed: read them again."""
        self._rules = None
        self._people.clear()
        self._placements.clear()

    async def rules(self) -> Rules:
        rules = self._rules
        if rules is None:
            async with self._lock:
                if self._rules is None:
                    async with self.engine.connect() as conn:
                        self._rules = await load_rules(conn)
                rules = self._rules
        return rules

    async def person(self, name: str) -> Person:
        """The user `name`, from memory when seen lately. A name without a row is asked for
        again after UNKNOWN_SECONDS: `tandem user add` writes to the database directly,
        without telling the server."""
        known = self._people.get(name)
        if known is not None and (known[1] or time.monotonic() - known[2] < UNKNOWN_SECONDS):
            return known[0]
        async with self.engine.connect() as conn:
            person, found = await load_person(conn, name)
        if len(self._people) >= REMEMBERED:
            self._people.clear()
        self._people[name] = (person, found, time.monotonic())
        return person

    async def placement(self, doc_id: str) -> tuple[int | None, str | None]:
        """(folder id, department) of a document; (None, None) for one without a row yet."""
        known = self._placements.get(doc_id)
        if known is not None:
            return known
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(documents.c.folder_id, documents.c.department).where(
                        documents.c.id == doc_id
                    )
                )
            ).first()
        found = (row.folder_id, row.department) if row is not None else (None, None)
        if len(self._placements) >= REMEMBERED:
            self._placements.clear()
        self._placements[doc_id] = found
        return found

    async def document(
        self, name: str, doc_id: str, placement: tuple[int | None, str | None] | None = None
    ) -> Access:
        """`name`'s access to `doc_id` (a document without a row is open: a client creating
        it by connecting; its row, once stored, has no department and no folder)."""
        if not self.enabled:
            return "write"
        person = await self.person(name)
        folder_id, department = placement or await self.placement(doc_id)
        rules = await self.rules()
        return rules.document_access(person, doc_id, folder_id, department)

    async def folder(self, name: str, folder_id: int) -> Access:
        if not self.enabled:
            return "write"
        return (await self.rules()).folder_access(await self.person(name), folder_id)

    async def documents(self, name: str, rows: Iterable[Any]) -> list[Any]:
        """The document rows (with id, folder_id, department) `name` may read."""
        items = list(rows)
        if not self.enabled:
            return items
        person = await self.person(name)
        rules = await self.rules()
        readable = []
        for row in items:
            level = rules.document_access(person, row.id, row.folder_id, row.department)
            if at_least(level, "read"):
                readable.append(row)
        return readable

    async def folders(self, name: str, rows: Iterable[Any], attribute: str = "id") -> list[Any]:
        """The rows `name` may read, each in the folder its `attribute` names."""
        items = list(rows)
        if not self.enabled:
            return items
        person = await self.person(name)
        rules = await self.rules()
        return [
            row
            for row in items
            if at_least(rules.folder_access(person, getattr(row, attribute)), "read")
        ]

    async def may_manage(
        self, name: str, *, folder_id: int | None = None, department: str | None = None
    ) -> bool:
        """Admins manage every grant; a lead those of folders and documents their
        department owns."""
        if not self.enabled:
            return True
        person = await self.person(name)
        if person.admin:
            return True
        if person.role != "lead" or not person.active or person.department is None:
            return False
        rules = await self.rules()
        return person.department in rules.owning_departments(folder_id, department)


def grants_from_json(items: Sequence[Mapping[str, Any]]) -> list[Grant]:
    """Grants from validated request items (see server/api/access.py)."""
    found: list[Grant] = []
    for item in items:
        access: Access = "write" if item["access"] == "write" else "read"
        if item.get("everyone"):
            found.append(Grant(access, everyone=True))
        elif item.get("user") is not None:
            found.append(Grant(access, user=item["user"]))
        else:
            found.append(Grant(access, department=item["department"]))
    return found
