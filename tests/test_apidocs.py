"""The browsable API page at /docs: Swagger UI served from the installed package, offline."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import httpx
from conftest import ServerProcess


async def test_root_redirects_to_the_api_page(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.get("/")
    assert response.status_code == 307
    assert response.headers["location"] == "/docs"


async def test_api_page_and_its_assets_are_served_locally(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=30) as http:
        page = await http.get("/docs")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        html = page.text
        # Nothing fetched from elsewhere: the page works without a network.
        assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html), html
        assert not re.search(r"https?://", html), html
        assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
        assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
        for asset in assets:
            url = urljoin(f"{server.http_url}/docs", asset)
            assert url.startswith(server.http_url), asset
            response = await http.get(url)
            assert response.status_code == 200, (asset, response.status_code)
            assert response.content, asset
        # The page describes this server's API.
        assert "/api/openapi.json" in html
        spec = await http.get("/api/openapi.json")
        assert spec.status_code == 200 and spec.json()["openapi"] == "3.1.0"
        # The JSON documents collection keeps its path.
        docs = await http.get("/api/docs")
        assert docs.status_code == 200 and docs.headers["content-type"] == "application/json"


async def test_unknown_asset_is_404(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.get("/docs/assets/no-such-file.js")
    assert response.status_code == 404
