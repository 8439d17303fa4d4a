"""Every `/api/docs/{doc_id}...` route refuses a malformed document id with 422, as the
WebSocket endpoint does with 4400, and a well-formed unknown one with 404."""

from __future__ import annotations

import re

from conftest import ServerFactory, ServerProcess
from helpers import api, assert_error

from server.api import routes as api_routes
from server.api.fields import DOC_ID_RULE

# Each breaks the rule differently: a leading dot, a space, a slash-free but too long id.
MALFORMED = [".hidden", "a%20b", "x" * 129, "-dash", "%E2%80%8B"]


def _doc_routes() -> list[tuple[str, str]]:
    """(method, path with {doc_id} left in and other parameters filled) of every route."""
    found = []
    for route in api_routes:
        path: str = route.path  # type: ignore[attr-defined]
        if "{doc_id}" not in path:
            continue
        filled = re.sub(r"\{(?!doc_id\})\w+(:\w+)?\}", "1", path)
        for method in sorted(route.methods - {"HEAD"}):  # type: ignore[attr-defined]
            found.append((method, filled))
    return found


async def test_malformed_ids_are_422_on_every_document_route(server: ServerProcess) -> None:
    routes = _doc_routes()
    assert len(routes) >= 10  # docs, content, updates, text, messages, tasks, versions...
    async with api(server) as http:
        for method, path in routes:
            for doc_id in MALFORMED:
                url = path.replace("{doc_id}", doc_id)
                response = await http.request(method, url, json={})
                assert_error(response, 422, field="doc_id")
                message = response.json()["error"]["message"]
                assert DOC_ID_RULE in message, (method, url, message)


async def test_well_formed_unknown_ids_stay_404(server: ServerProcess) -> None:
    async with api(server) as http:
        for doc_id in ("nothing-here", "plan.2026", "双十一"):
            assert_error(await http.get(f"/docs/{doc_id}"), 404)
            assert_error(await http.get(f"/docs/{doc_id}/content"), 404)


async def test_malformed_id_is_422_before_authentication(make_server: ServerFactory) -> None:
    server = await make_server(TANDEM_SECRET="doc-id-secret")
    async with api(server) as http:
        assert_error(await http.get("/docs/.hidden"), 422, field="doc_id")
        assert_error(await http.get("/docs/fine-id"), 401)


async def test_openapi_documents_the_rule(server: ServerProcess) -> None:
    async with api(server) as http:
        spec = (await http.get("/openapi.json")).json()
    for path, item in spec["paths"].items():
        if "{doc_id}" not in path:
            continue
        (parameter,) = [p for p in item["parameters"] if p["name"] == "doc_id"]
        assert parameter["description"] == DOC_ID_RULE
        for method, operation in item.items():
            if method != "parameters":
                assert "422" in operation["responses"], (method, path)
