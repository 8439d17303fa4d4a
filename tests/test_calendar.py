"""GET /api/me/calendar.ics against real servers: the feed parses back with icalendar and
lists the caller's due dates on readable boards (the workspace of tests/test_task_list.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
from conftest import ServerProcess
from helpers import api, assert_error
from icalendar import Calendar
from test_task_list import ALICE, LIU, token, workspace

__all__ = ["workspace"]  # the fixture, imported for the tests below


def events(body: bytes) -> dict[str, Any]:
    """The VEVENTs of a feed by UID, after checking the calendar's own properties."""
    cal = Calendar.from_ical(body)
    assert str(cal["VERSION"]) == "2.0" and str(cal["PRODID"]).startswith("-//Tandem//")
    return {str(event["UID"]): event for event in cal.walk("VEVENT")}


async def feed(http: httpx.AsyncClient, **params: Any) -> httpx.Response:
    response = await http.get("/me/calendar.ics", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/calendar; charset=utf-8"
    return response


async def test_my_due_dates(workspace: ServerProcess) -> None:
    async with api(workspace, token(ALICE)) as http:
        response = await feed(http)
    cal = Calendar.from_ical(response.content)
    assert str(cal["X-WR-CALNAME"]) == f"Tandem: {ALICE}"
    found = events(response.content)
    # Open tasks with a due date on boards alice may read: not s3 (done), not o1 (ops
    # board), not g1 (deleted board).
    assert set(found) == {
        "sales-board/s1@tandem",
        "sales-board/s2@tandem",
        "open-board/p1@tandem",
    }
    s1 = found["sales-board/s1@tandem"]
    assert str(s1["SUMMARY"]) == "准备双十一海报"  # Chinese survives
    # A date-only due is an all-day event: a DATE, ending the next day.
    assert s1["DTSTART"].dt == date(2099, 11, 11) and not isinstance(s1["DTSTART"].dt, datetime)
    assert s1["DTSTART"].params.get("VALUE") == "DATE"
    assert s1["DTEND"].dt == date(2099, 11, 12)
    assert str(s1["URL"]) == f"{workspace.http_url}/api/docs/sales-board/tasks/s1"
    assert "Board: 销售看板" in str(s1["DESCRIPTION"])
    assert "Priority: high" in str(s1["DESCRIPTION"])
    assert str(s1["STATUS"]) == "CONFIRMED"
    assert s1["DTSTAMP"].dt == datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
    # A due with a time is at that moment, in UTC.
    s2 = found["sales-board/s2@tandem"]
    assert s2["DTSTART"].dt == datetime(2020, 1, 5, 1, 0, tzinfo=UTC)
    assert s2["DTSTART"].dt.utcoffset() == timedelta(0)
    assert "DTEND" not in s2
    assert found["open-board/p1@tandem"]["DTSTART"].dt == date(2099, 6, 1)
    assert "Status: in_progress" in str(s2["DESCRIPTION"])


async def test_done_tasks_on_request(workspace: ServerProcess) -> None:
    async with api(workspace, token(ALICE)) as http:
        found = events((await feed(http, done="1")).content)
    assert set(found) == {
        "sales-board/s1@tandem",
        "sales-board/s2@tandem",
        "sales-board/s3@tandem",
        "open-board/p1@tandem",
    }
    s3 = found["sales-board/s3@tandem"]
    assert str(s3["SUMMARY"]) == "Done thing (done)"
    assert s3["DTSTART"].dt == date(2020, 1, 1)


async def test_subscription_by_query_token(workspace: ServerProcess) -> None:
    """A calendar application sends no header: the token comes as ?token=. Each person's
    feed is their own."""
    async with api(workspace) as http:
        assert_error(await http.get("/me/calendar.ics"), 401)
        mine = await feed(http, token=token(LIU))
        found = events(mine.content)
        # 刘洋's only open dated task is none (p2 is done, o2 has no due date).
        assert found == {}
        assert str(Calendar.from_ical(mine.content)["X-WR-CALNAME"]) == f"Tandem: {LIU}"
        found = events((await feed(http, token=token(LIU), done="true")).content)
        assert set(found) == {"open-board/p2@tandem"}
        assert str(found["open-board/p2@tandem"]["SUMMARY"]) == "Sales on the open board (done)"

        # The same feed twice is the same bytes; If-None-Match with its ETag is 304.
        first = await feed(http, token=token(ALICE))
        second = await feed(http, token=token(ALICE))
        assert first.content == second.content and first.headers["etag"]
        assert first.headers["last-modified"] == "Tue, 01 Dec 2026 08:30:00 GMT"
        unchanged = await http.get(
            "/me/calendar.ics",
            params={"token": token(ALICE)},
            headers={"If-None-Match": first.headers["etag"]},
        )
        assert unchanged.status_code == 304 and unchanged.content == b""

        # A token limited to one document, and a share link, get no calendar.
        assert_error(
            await http.get("/me/calendar.ics", params={"token": token(ALICE, doc="open-board")}),
            403,
        )
        unknown = await http.get("/me/calendar.ics", params={"token": token(ALICE), "x": "1"})
        assert_error(unknown, 422, "x")
