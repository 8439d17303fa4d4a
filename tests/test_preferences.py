"""Notification preferences and watches over REST (server/api/preferences.py, watches.py).

A real server with sign-in and the demo workspace: marketing (市场部) owns the campaign
plan, customer service (客服部) reads it through a grant on marketing's folder.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import ServerFactory, ServerProcess
from helpers import api, assert_error

from server.auth import issue_token
from server.notifications import KINDS

SECRET = "preferences-tests-secret-with-32-bytes-or-more"
MARKETING_LEAD = "王晓雯"
SERVICE_MEMBER = "周婷"
ADMIN = "吴浩"
PLAN = "d11-plan"
BOARD = "d11-board"
PREFS = "/me/notification-preferences"
DEFAULTS = {"muted": [], "off": [], "email": "off"}


def token(user: str, **kwargs: Any) -> str:
    return issue_token(SECRET, user, ttl=3600, **kwargs)


@pytest.fixture
async def demo(make_server: ServerFactory, database_url: str) -> ServerProcess:
    return await make_server(database_url, TANDEM_SECRET=SECRET, TANDEM_DEMO="1")


async def test_preferences_default_round_trip_and_validation(demo: ServerProcess) -> None:
    async with api(demo, token(MARKETING_LEAD)) as http:
        got = await http.get(PREFS)
        assert got.status_code == 200, got.text
        assert got.json() == DEFAULTS

        wanted = {
            "muted": [BOARD, "d11-chat", BOARD],
            "off": ["message", "assigned"],
            "email": "digest",
        }
        put = await http.put(PREFS, json=wanted)
        assert put.status_code == 200, put.text
        stored = {"muted": ["d11-board", "d11-chat"], "off": ["assigned", "message"]}
        assert put.json() == {**stored, "email": "digest"}
        assert (await http.get(PREFS)).json() == {**stored, "email": "digest"}

        # PUT replaces the whole: what is left out is back to its default.
        put = await http.put(PREFS, json={"email": "each", "off": list(KINDS)})
        assert put.status_code == 200, put.text
        assert (await http.get(PREFS)).json() == {
            "muted": [],
            "off": sorted(KINDS),
            "email": "each",
        }

        for body, field in [
            ({"off": ["assigned", "weather"]}, "off.1"),
            ({"muted": ["../etc"]}, "muted.0"),
            ({"muted": [""]}, "muted.0"),
            ({"email": "weekly"}, "email"),
            ({"email": "each", "sms": True}, "sms"),
        ]:
            assert_error(await http.put(PREFS, json=body), 422, field)
        assert_error(await http.put(PREFS, content=b"not json"), 422)
        # A refused PUT changed nothing.
        assert (await http.get(PREFS)).json()["email"] == "each"

    # Everyone has their own.
    async with api(demo, token(SERVICE_MEMBER)) as other:
        assert (await other.get(PREFS)).json() == DEFAULTS

    # Neither a share link nor a token for one document has preferences; nor may a
    # read-only token change them.
    async with api(demo, token(MARKETING_LEAD)) as http:
        link = await http.post(f"/docs/{PLAN}/share", json={})
        assert link.status_code == 201, link.text
    for scoped in (link.json()["token"], token(MARKETING_LEAD, doc=PLAN)):
        async with api(demo, scoped) as http:
            assert_error(await http.get(PREFS), 403)
            assert_error(await http.put(PREFS, json=DEFAULTS), 403)
    async with api(demo, token(MARKETING_LEAD, read_only=True)) as http:
        assert (await http.get(PREFS)).json()["email"] == "each"
        assert_error(await http.put(PREFS, json=DEFAULTS), 403)
    async with api(demo) as anonymous:
        assert_error(await anonymous.get(PREFS), 401)


async def test_watch_list_and_stop_watching(demo: ServerProcess) -> None:
    async with api(demo, token(SERVICE_MEMBER)) as http:
        assert (await http.get("/me/watches")).json() == {"watches": []}
        for _ in range(2):  # idempotent
            put = await http.put(f"/docs/{BOARD}/watch")
            assert put.status_code == 204, put.text
        assert (await http.put(f"/docs/{PLAN}/watch")).status_code == 204  # read via a grant
        watches = (await http.get("/me/watches")).json()["watches"]
        assert [w["doc_id"] for w in watches] == [BOARD, PLAN]
        assert all(w["created_at"].endswith("Z") for w in watches)

        assert_error(await http.put("/docs/no-such-doc/watch"), 404)
        assert_error(await http.put("/docs/bad%20id/watch"), 422, "doc_id")

        assert (await http.delete(f"/docs/{BOARD}/watch")).status_code == 204
        assert (await http.delete(f"/docs/{BOARD}/watch")).status_code == 204
        assert [w["doc_id"] for w in (await http.get("/me/watches")).json()["watches"]] == [PLAN]

    async with api(demo, token(MARKETING_LEAD)) as lead:
        assert (await lead.get("/me/watches")).json() == {"watches": []}  # their own only
        link = (await lead.post(f"/docs/{PLAN}/share", json={})).json()["token"]
    async with api(demo, link) as shared:
        assert_error(await shared.put(f"/docs/{PLAN}/watch"), 403)
        assert_error(await shared.get("/me/watches"), 403)

    # A watch on a document the watcher may no longer read is not listed.
    async with api(demo, token(ADMIN)) as admin:
        folders = (await admin.get("/folders")).json()["folders"]
        marketing = next(f["id"] for f in folders if f["name"] == "市场部")
        grants = (await admin.get(f"/folders/{marketing}/access")).json()["grants"]
        kept = [g for g in grants if g.get("department") != "客服部"]
        changed = await admin.put(f"/folders/{marketing}/access", json={"grants": kept})
        assert changed.status_code == 200, changed.text
    async with api(demo, token(SERVICE_MEMBER)) as http:
        assert (await http.get("/me/watches")).json() == {"watches": []}
        assert_error(await http.put(f"/docs/{PLAN}/watch"), 403)
        # ... but can still stop watching it.
        assert (await http.delete(f"/docs/{PLAN}/watch")).status_code == 204


async def test_watching_a_private_document_of_another_department_is_refused(
    demo: ServerProcess,
) -> None:
    async with api(demo, token(MARKETING_LEAD)) as lead:
        folder = await lead.post("/folders", json={"name": "市场部内部", "department": "市场部"})
        assert folder.status_code == 201, folder.text
        doc = await lead.post(
            "/docs",
            json={
                "kind": "doc",
                "title": "预算 机密",
                "id": "mk-budget",
                "folder_id": folder.json()["id"],
            },
        )
        assert doc.status_code == 201, doc.text
        assert (await lead.put("/docs/mk-budget/watch")).status_code == 204
        assert [w["doc_id"] for w in (await lead.get("/me/watches")).json()["watches"]] == [
            "mk-budget"
        ]
    async with api(demo, token(SERVICE_MEMBER)) as other:
        assert_error(await other.put("/docs/mk-budget/watch"), 403)
        assert (await other.get("/me/watches")).json() == {"watches": []}
        spec = (await other.get("/openapi.json")).json()
    assert set(spec["paths"][f"/api{PREFS}"]) == {"get", "put"}
    assert {"put", "delete"} <= set(spec["paths"]["/api/docs/{doc_id}/watch"])
    assert "get" in spec["paths"]["/api/me/watches"]
    assert spec["components"]["schemas"]["NotificationPreferences"]["properties"]["off"]["items"][
        "enum"
    ] == list(KINDS)
