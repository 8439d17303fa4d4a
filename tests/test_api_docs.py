"""REST API: documents and folders, against a real server process (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
from alembic import command
from conftest import ServerFactory, ServerProcess
from helpers import api, assert_error, close_of, query, wait_until
from pycrdt import Array, Map, Text, XmlFragment
from sqlalchemy import text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client.sync import SyncClient
from server.api import routes as api_routes
from server.auth import issue_token
from server.persistence import migrate
from server.persistence.sql import create_engine


async def test_create_each_kind_writes_its_shape_through_the_room(
    database_url: str, make_server: ServerFactory
) -> None:
    server = await make_server(database_url)
    async with api(server) as http:
        folder = (await http.post("/folders", json={"name": "双十一 2026"})).json()
        created = {}
        for kind, title in [("board", "活动任务板"), ("doc", "活动方案"), ("discussion", "讨论")]:
            response = await http.post(
                "/docs",
                json={
                    "kind": kind,
                    "title": title,
                    "folder_id": folder["id"],
                    "department": "marketing",
                    "tags": ["双十一", "plan"],
                    "notes": "owner: 小王",
                    "project": "Double 11" if kind == "board" else None,
                },
            )
            assert response.status_code == 201, response.text
            body = response.json()
            assert re.fullmatch(r"[a-z0-9]{12}", body["id"])
            assert response.headers["location"] == f"/api/docs/{body['id']}"
            assert body["kind"] == kind and body["title"] == title
            assert body["folder_id"] == folder["id"] and body["department"] == "marketing"
            assert body["tags"] == ["双十一", "plan"] and body["notes"] == "owner: 小王"
            assert body["created_by"] == "local"
            created[kind] = body["id"]
        chosen = await http.post("/docs", json={"kind": "doc", "title": "FAQ", "id": "faq.客服-1"})
        assert chosen.status_code == 201 and chosen.json()["id"] == "faq.客服-1"

    for kind, doc_id in created.items():
        async with SyncClient(server.ws_url, doc_id) as client:
            await client.wait_synced()
            meta = client.doc.get("meta", type=Map)
            assert meta["kind"] == kind
            assert (
                meta["title"]
                == {"board": "活动任务板", "doc": "活动方案", "discussion": "讨论"}[kind]
            )
            assert meta["department"] == "marketing"
            if kind == "board":
                assert meta["project"] == "Double 11"
                assert client.doc.get("tasks", type=Map).to_py() == {}
            elif kind == "doc":
                assert str(client.doc.get("default", type=XmlFragment)) == ""
            else:
                assert client.doc.get("messages", type=Array).to_py() == []

    # The creation is in the update log like any edit: origin "rest", the caller as author.
    rows = await query(
        server.database_url,
        "SELECT origin, author FROM updates WHERE doc_id = :doc ORDER BY seq",
        doc=created["board"],
    )
    assert rows == [("rest", "local")]


async def test_list_and_filter(database_url: str, make_server: ServerFactory) -> None:
    server = await make_server(database_url)
    async with api(server) as http:
        marketing = (await http.post("/folders", json={"name": "市场部"})).json()["id"]
        service = (await http.post("/folders", json={"name": "客服部"})).json()["id"]
        specs = [
            ("board", "双十一 任务", marketing, "marketing", ["双十一", "urgent"]),
            ("doc", "Campaign PLAN", marketing, "marketing", ["plan"]),
            ("doc", "客服 FAQ 100% 答案", service, "service", ["faq", "双十一"]),
            ("discussion", "FAQ discussion", service, "service", []),
        ]
        ids = {}
        for kind, title, folder, department, tags in specs:
            response = await http.post(
                "/docs",
                json={
                    "kind": kind,
                    "title": title,
                    "folder_id": folder,
                    "department": department,
                    "tags": tags,
                },
            )
            ids[title] = response.json()["id"]
        upload = await http.post(
            "/files",
            params={"folder_id": service, "name": "FAQ 手册.pdf", "tags": "faq,双十一"},
            content=b"%PDF-1.7 answers",
        )
        assert upload.status_code == 201, upload.text

        async def titles(**params: Any) -> set[str]:
            response = await http.get("/docs", params=params)
            assert response.status_code == 200, response.text
            return {doc["title"] for doc in response.json()["documents"]}

        assert len(await titles()) == 4
        assert await titles(kind="doc") == {"Campaign PLAN", "客服 FAQ 100% 答案"}
        assert await titles(folder=marketing) == {"双十一 任务", "Campaign PLAN"}
        assert await titles(department="service") == {"客服 FAQ 100% 答案", "FAQ discussion"}
        assert await titles(tag="双十一") == {"双十一 任务", "客服 FAQ 100% 答案"}
        assert await titles(tag="双十") == set()  # whole tags only
        assert await titles(q="plan") == {"Campaign PLAN"}  # case-insensitive
        assert await titles(q="faq") == {"客服 FAQ 100% 答案", "FAQ discussion"}
        assert await titles(q="100%") == {"客服 FAQ 100% 答案"}  # % is literal
        assert await titles(q="0%") == {"客服 FAQ 100% 答案"}
        assert await titles(q="_") == set()
        assert await titles(kind="doc", tag="双十一", folder=service) == {"客服 FAQ 100% 答案"}
        assert await titles(kind="") == await titles()  # empty parameters are ignored
        assert len(await titles(limit=2)) == 2
        assert len(await titles(limit=2, offset=3)) == 1

        listing = (await http.get("/docs", params={"tag": "faq", "include_files": "1"})).json()
        assert [doc["title"] for doc in listing["documents"]] == ["客服 FAQ 100% 答案"]
        assert [file["name"] for file in listing["files"]] == ["FAQ 手册.pdf"]
        listing = (await http.get("/docs", params={"q": "手册", "include_files": "1"})).json()
        assert listing["documents"] == [] and len(listing["files"]) == 1
        listing = (
            await http.get("/docs", params={"department": "marketing", "include_files": "1"})
        ).json()
        assert len(listing["documents"]) == 2 and listing["files"] == []
        listing = (await http.get("/docs", params={"kind": "doc", "include_files": "1"})).json()
        assert listing["files"] == []
        assert "files" not in (await http.get("/docs")).json()

        one = await http.get(f"/docs/{ids['Campaign PLAN']}")
        assert one.status_code == 200 and one.json()["tags"] == ["plan"]


async def test_update_move_and_soft_delete(database_url: str, make_server: ServerFactory) -> None:
    server = await make_server(database_url)
    async with api(server) as http:
        folder = (await http.post("/folders", json={"name": "运营"})).json()["id"]
        doc = (await http.post("/docs", json={"kind": "doc", "title": "方案 v1"})).json()
        doc_id = doc["id"]
        async with SyncClient(server.ws_url, doc_id) as client:
            await client.wait_synced()
            meta = client.doc.get("meta", type=Map)
            assert meta["title"] == "方案 v1"

            response = await http.patch(
                f"/docs/{doc_id}",
                json={"title": "方案 v2", "tags": ["final", "final", " 双十一 "], "notes": "n"},
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["title"] == "方案 v2" and body["tags"] == ["final", "双十一"]
            assert body["notes"] == "n" and body["updated_by"] == "local"
            # A connected client sees the new title at once: it went through the room.
            await wait_until(lambda: meta.get("title") == "方案 v2")

            moved = (await http.patch(f"/docs/{doc_id}", json={"folder_id": folder})).json()
            assert moved["folder_id"] == folder and moved["title"] == "方案 v2"
            listed = (await http.get("/docs", params={"folder": folder})).json()["documents"]
            assert [d["id"] for d in listed] == [doc_id]
            back = (await http.patch(f"/docs/{doc_id}", json={"folder_id": None})).json()
            assert back["folder_id"] is None

            department = await http.patch(f"/docs/{doc_id}", json={"department": "operations"})
            assert department.json()["department"] == "operations"
            await wait_until(lambda: meta.get("department") == "operations")
            await http.patch(f"/docs/{doc_id}", json={"department": None})
            await wait_until(lambda: "department" not in meta)
            unchanged = (await http.patch(f"/docs/{doc_id}", json={})).json()
            assert unchanged["title"] == "方案 v2"

        rows = await query(
            server.database_url,
            "SELECT origin, author FROM updates WHERE doc_id = :doc AND origin = 'rest'",
            doc=doc_id,
        )
        assert len(rows) >= 3 and set(rows) == {("rest", "local")}

        assert (await http.delete(f"/docs/{doc_id}")).status_code == 204
        assert_error(await http.get(f"/docs/{doc_id}"), 404)
        assert_error(await http.patch(f"/docs/{doc_id}", json={"title": "x"}), 404)
        assert_error(await http.delete(f"/docs/{doc_id}"), 404)
        assert (await http.get("/docs")).json()["documents"] == []
        # The id stays taken: its history is still stored.
        assert_error(
            await http.post("/docs", json={"kind": "doc", "title": "x", "id": doc_id}), 409, "id"
        )
        stored = await query(
            server.database_url,
            "SELECT deleted_at IS NOT NULL FROM documents WHERE id = :d",
            d=doc_id,
        )
        assert stored == [(True,)]


async def test_deleting_a_document_closes_its_connections_and_refuses_new_ones(
    database_url: str, make_server: ServerFactory
) -> None:
    server = await make_server(database_url)
    async with api(server) as http:
        gone = (await http.post("/docs", json={"kind": "doc", "title": "草稿"})).json()["id"]
        kept = (await http.post("/docs", json={"kind": "doc", "title": "方案"})).json()["id"]
        async with (
            connect(f"{server.ws_url}/{gone}", open_timeout=10) as open_tab,
            SyncClient(server.ws_url, kept) as neighbour,
        ):
            await open_tab.recv()  # the greeting: this connection is in the room
            await neighbour.wait_synced()
            assert (await http.delete(f"/docs/{gone}")).status_code == 204
            try:
                async with asyncio.timeout(10):
                    async for _ in open_tab:
                        pass
            except ConnectionClosed:
                pass
            assert (open_tab.close_code, open_tab.close_reason) == (4404, "document was deleted")
            # A reconnecting client is refused, and nothing it would send is taken.
            assert await close_of(f"{server.ws_url}/{gone}") == (4404, "document was deleted")
            # The other document's client is untouched and still edits.
            count = "SELECT count(*) FROM updates WHERE doc_id = :d"
            before = await query(server.database_url, count, d=kept)
            neighbour.doc.get("meta", type=Map)["notes"] = "still here"
            async with asyncio.timeout(10):
                while await query(server.database_url, count, d=kept) == before:
                    await asyncio.sleep(0.05)
        rows_before = await query(
            server.database_url, "SELECT count(*) FROM updates WHERE doc_id = :d", d=gone
        )
    # After a restart the deletion is read from the database when the room loads.
    await server.stop()
    await server.start()
    assert await close_of(f"{server.ws_url}/{gone}") == (4404, "document was deleted")
    rows_after = await query(
        server.database_url, "SELECT count(*) FROM updates WHERE doc_id = :d", d=gone
    )
    assert rows_after == rows_before
    async with SyncClient(server.ws_url, kept) as again:
        await again.wait_synced()
        await wait_until(lambda: again.doc.get("meta", type=Map).get("notes") == "still here")


async def test_errors_are_json_with_status_and_field(server: ServerProcess) -> None:
    async with api(server) as http:
        await http.post("/docs", json={"kind": "board", "title": "taken", "id": "taken"})
        cases: list[tuple[httpx.Response, int, str | None]] = [
            (await http.post("/docs", json={"title": "no kind"}), 422, "kind"),
            (await http.post("/docs", json={"kind": "sheet", "title": "x"}), 422, "kind"),
            (await http.post("/docs", json={"kind": "doc", "title": "   "}), 422, "title"),
            (await http.post("/docs", json={"kind": "doc", "title": "x", "id": "-x"}), 422, "id"),
            (await http.post("/docs", json={"kind": "doc", "title": "x", "id": "a/b"}), 422, "id"),
            (
                await http.post("/docs", json={"kind": "doc", "title": "x", "id": "a" * 129}),
                422,
                "id",
            ),
            (
                await http.post("/docs", json={"kind": "doc", "title": "x", "colour": 1}),
                422,
                "colour",
            ),
            (await http.post("/docs", json={"kind": "doc", "title": "x", "tags": "a"}), 422, None),
            (
                await http.post("/docs", json={"kind": "doc", "title": "x", "tags": [1]}),
                422,
                "tags.0",
            ),
            (await http.post("/docs", content=b"{not json"), 422, "body"),
            (await http.post("/docs", content=b""), 422, "body"),
            (await http.post("/docs", json=["a list"]), 422, None),
            (
                await http.post("/docs", json={"kind": "doc", "title": "x", "folder_id": 999}),
                404,
                "folder_id",
            ),
            (
                await http.post("/docs", json={"kind": "doc", "title": "x", "id": "taken"}),
                409,
                "id",
            ),
            (await http.get("/docs", params={"kind": "sheet"}), 422, "kind"),
            (await http.get("/docs", params={"folder": "abc"}), 422, "folder"),
            (await http.get("/docs", params={"limit": "0"}), 422, "limit"),
            (await http.get("/docs", params={"sort": "title"}), 422, "sort"),
            (await http.get("/docs/nope"), 404, None),
            (await http.patch("/docs/nope", json={"title": "x"}), 404, None),
            (await http.patch("/docs/taken", json={"title": None}), 422, "title"),
            (await http.patch("/docs/taken", json={"kind": "doc"}), 422, "kind"),
            (await http.patch("/docs/taken", json={"folder_id": 999}), 404, "folder_id"),
            (await http.delete("/docs/nope"), 404, None),
            (await http.get("/nothing-here"), 404, None),
            (await http.put("/docs"), 405, None),
        ]
        for response, status, field in cases:
            assert_error(response, status, field)


async def test_folders(database_url: str, make_server: ServerFactory) -> None:
    server = await make_server(database_url)
    async with api(server) as http:
        top = await http.post("/folders", json={"name": "双十一", "department": "marketing"})
        assert top.status_code == 201, top.text
        top_id = top.json()["id"]
        assert top.json()["created_by"] == "local" and top.json()["parent_id"] is None
        child = (await http.post("/folders", json={"name": "页面设计", "parent_id": top_id})).json()
        grandchild = (
            await http.post("/folders", json={"name": "首页", "parent_id": child["id"]})
        ).json()
        other = (await http.post("/folders", json={"name": "客服"})).json()

        everything = (await http.get("/folders")).json()["folders"]
        assert {f["name"] for f in everything} == {"双十一", "页面设计", "首页", "客服"}
        inside = (await http.get("/folders", params={"parent_id": top_id})).json()["folders"]
        assert [f["name"] for f in inside] == ["页面设计"]
        tops = (await http.get("/folders", params={"top": "1"})).json()["folders"]
        assert {f["name"] for f in tops} == {"双十一", "客服"}
        by_department = (await http.get("/folders", params={"department": "marketing"})).json()
        assert [f["name"] for f in by_department["folders"]] == ["双十一"]
        assert (await http.get(f"/folders/{child['id']}")).json()["name"] == "页面设计"

        assert_error(await http.post("/folders", json={"name": "双十一"}), 409, "name")
        assert_error(await http.post("/folders", json={"name": "a/b"}), 422, "name")
        assert_error(await http.post("/folders", json={"name": ""}), 422, "name")
        assert_error(
            await http.post("/folders", json={"name": "x", "parent_id": 999}), 404, "parent_id"
        )
        assert_error(await http.get("/folders/999"), 404)
        assert_error(await http.get("/folders/abc"), 404)
        assert_error(
            await http.patch(f"/folders/{top_id}", json={"parent_id": grandchild["id"]}),
            422,
            "parent_id",
        )
        assert_error(await http.patch(f"/folders/{top_id}", json={"parent_id": top_id}), 422)
        assert_error(await http.patch(f"/folders/{other['id']}", json={"name": "双十一"}), 409)
        assert_error(await http.patch(f"/folders/{top_id}", json={"name": None}), 422, "name")

        renamed = await http.patch(f"/folders/{grandchild['id']}", json={"name": "首页 v2"})
        assert renamed.json()["name"] == "首页 v2"
        moved = await http.patch(f"/folders/{grandchild['id']}", json={"parent_id": other["id"]})
        assert moved.json()["parent_id"] == other["id"]
        to_top = await http.patch(f"/folders/{grandchild['id']}", json={"parent_id": None})
        assert to_top.json()["parent_id"] is None

        doc = (
            await http.post("/docs", json={"kind": "doc", "title": "d", "folder_id": child["id"]})
        ).json()
        assert_error(await http.delete(f"/folders/{top_id}"), 409)  # holds a folder
        assert_error(await http.delete(f"/folders/{child['id']}"), 409)  # holds a document
        await http.delete(f"/docs/{doc['id']}")
        assert (await http.delete(f"/folders/{child['id']}")).status_code == 204
        assert (await http.delete(f"/folders/{top_id}")).status_code == 204
        assert_error(await http.get(f"/folders/{top_id}"), 404)
        assert_error(await http.delete(f"/folders/{top_id}"), 404)


async def test_client_created_document_is_listed_and_can_be_named(server: ServerProcess) -> None:
    async with SyncClient(server.ws_url, "campaign-plan") as client:
        await client.wait_synced()
        client.doc.get("text", type=Text).insert(0, "双十一")
        async with api(server) as http:
            await wait_until_status(http, "/docs/campaign-plan", 200)
            bare = (await http.get("/docs/campaign-plan")).json()
            # Registered by its first update: titled with its id; its kind follows from the
            # content (a `text` Text: a doc) once the catalog has read it.
            assert bare["title"] == "campaign-plan" and bare["tags"] == []
            async with asyncio.timeout(10):
                while (await http.get("/docs/campaign-plan")).json()["kind"] != "doc":
                    await asyncio.sleep(0.1)
            assert_error(
                await http.post("/docs", json={"kind": "doc", "title": "x", "id": "campaign-plan"}),
                409,
                "id",
            )
            named = await http.patch("/docs/campaign-plan", json={"title": "活动计划"})
            assert named.json()["title"] == "活动计划"
            await wait_until(lambda: client.doc.get("meta", type=Map).get("title") == "活动计划")
            assert str(client.doc.get("text", type=Text)) == "双十一"


async def wait_until_status(http: httpx.AsyncClient, path: str, status: int) -> None:
    async with asyncio.timeout(10):
        while (await http.get(path)).status_code != status:
            await asyncio.sleep(0.05)


async def test_tokens_limit_what_a_caller_may_do(make_server: ServerFactory) -> None:
    secret = "s3cret"
    server = await make_server(TANDEM_SECRET=secret)
    ana = issue_token(secret, "ana")
    async with api(server) as anonymous:
        assert_error(await anonymous.get("/docs"), 401)
        assert (await anonymous.get("/docs")).headers["www-authenticate"] == "Bearer"
    async with api(server, "not.valid") as forged:
        assert_error(await forged.get("/docs"), 401)
    async with api(server, ana) as http:
        created = await http.post("/docs", json={"kind": "board", "title": "b", "id": "b1"})
        assert created.status_code == 201 and created.json()["created_by"] == "ana"
        await http.post("/docs", json={"kind": "doc", "title": "other", "id": "d2"})
    rows = await query(
        server.database_url, "SELECT origin, author FROM updates WHERE doc_id = 'b1'"
    )
    assert rows == [("rest", "ana")]
    async with api(server, issue_token(secret, "viewer", read_only=True)) as viewer:
        assert (await viewer.get("/docs")).status_code == 200
        assert_error(await viewer.post("/docs", json={"kind": "doc", "title": "x"}), 403)
        assert_error(await viewer.patch("/docs/b1", json={"title": "x"}), 403)
        assert_error(await viewer.delete("/docs/b1"), 403)
    async with api(server, issue_token(secret, "guest", doc="b1")) as guest:
        assert (await guest.get("/docs/b1")).status_code == 200
        assert (await guest.patch("/docs/b1", json={"title": "renamed"})).status_code == 200
        assert_error(await guest.get("/docs/d2"), 403)
        assert_error(await guest.get("/docs"), 403)
        assert_error(await guest.post("/folders", json={"name": "x"}), 403)
    # The token may also come as ?token= (a browser download link cannot send a header).
    async with api(server) as anonymous:
        assert (await anonymous.get("/docs", params={"token": ana})).status_code == 200


def _openapi_path(route_path: str) -> str:
    return "/api" + re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", route_path)


async def test_openapi_describes_every_route(server: ServerProcess) -> None:
    async with api(server) as http:
        response = await http.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"] == "3.1.0"
    assert spec["info"]["title"] and spec["info"]["version"]
    listed = 0
    for route in api_routes:
        path = _openapi_path(route.path)  # type: ignore[attr-defined]
        for method in route.methods - {"HEAD"}:  # type: ignore[attr-defined]
            operation = spec["paths"][path][method.lower()]
            assert operation["summary"] and operation["responses"], (method, path)
            listed += 1
    assert listed == sum(len(item) - ("parameters" in item) for item in spec["paths"].values())
    for path, item in spec["paths"].items():
        for name in re.findall(r"\{(\w+)\}", path):
            assert name in {p["name"] for p in item["parameters"] if p["in"] == "path"}

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [ref for value in node.values() for ref in refs(value)]
        if isinstance(node, list):
            return [ref for value in node for ref in refs(value)]
        return []

    schemas = spec["components"]["schemas"]
    for ref in refs(spec):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas
    create = spec["paths"]["/api/docs"]["post"]["requestBody"]["content"]["application/json"]
    assert create["schema"] == {"$ref": "#/components/schemas/DocCreate"}
    assert set(schemas["DocCreate"]["required"]) == {"kind", "title"}


async def test_migration_0002_keeps_the_update_log(database_url: str) -> None:
    """Adding the workspace columns must not copy `documents`: that would cascade into updates."""
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.upgrade(migrate._config(sync), "0001"))
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO documents (id, created_at, updated_at) "
                    "VALUES ('old', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO updates (doc_id, data, origin, author, created_at) "
                    "VALUES ('old', :data, 'ws', 'ana', CURRENT_TIMESTAMP)"
                ),
                {"data": b"\x00\x00"},
            )
        up, down = (command.upgrade, "head"), (command.downgrade, "0001")
        for move, target in (up, down, up):
            async with engine.begin() as conn:
                await conn.run_sync(lambda sync, m=move, t=target: m(migrate._config(sync), t))
            async with engine.connect() as conn:
                updates = (await conn.execute(text("SELECT doc_id, author FROM updates"))).all()
                assert [tuple(row) for row in updates] == [("old", "ana")]
        assert await migrate.current(engine) == migrate.head()
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT kind, title, folder_id FROM documents"))).one()
            assert tuple(row) == (None, None, None)
    finally:
        await engine.dispose()
