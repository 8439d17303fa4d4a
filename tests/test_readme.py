"""The client examples of README.md run as written against a live server."""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
from pathlib import Path

import pytest
from conftest import ROOT, ServerProcess
from pycrdt import Text
from yjs_node import JS_DIR, ensure_node_modules, node_executable

from client.sync import SyncClient

README_URL = "ws://127.0.0.1:8000/ws"
RUN_TIMEOUT = 30.0


def example(language: str) -> str:
    """The one ```language block of README.md's "Connecting a client" section."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Connecting a client\n(.*?)(?=^## )", readme, re.M | re.S)
    assert section is not None, "README.md has no 'Connecting a client' section"
    blocks = re.findall(rf"^```{language}\n(.*?)^```", section[1], re.M | re.S)
    assert len(blocks) == 1, f"expected one {language} example, found {len(blocks)}"
    code: str = blocks[0]
    assert README_URL in code, f"the {language} example does not use {README_URL}"
    return code


def inserted(code: str) -> tuple[str, str]:
    """The document id the example opens and the text it inserts."""
    doc_id = re.search(re.escape(README_URL) + r"""["'],\s*["']([^"']+)["']""", code)
    text = re.search(r"""insert\(0,\s*(["'])(.+?)\1\)""", code)
    assert doc_id is not None and text is not None, code
    return doc_id[1], text[2]


async def run(argv: list[str], cwd: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        pytest.fail(f"{argv[0]} did not exit within {RUN_TIMEOUT}s:\n{output.decode()}")
    assert process.returncode == 0, output.decode(errors="replace")


async def stored_text(server: ServerProcess, doc_id: str) -> str:
    async with SyncClient(server.ws_url, doc_id, reconnect=False) as reader:
        await reader.wait_synced()
        return str(reader.doc.get("text", type=Text))


async def test_the_python_example_runs(server: ServerProcess, tmp_path: Path) -> None:
    code = example("python")
    doc_id, text = inserted(code)
    script = tmp_path / "readme_example.py"
    script.write_text(code.replace(README_URL, server.ws_url), encoding="utf-8")
    await run([sys.executable, str(script)], tmp_path)
    assert await stored_text(server, doc_id) == text


@pytest.mark.interop
async def test_the_javascript_example_runs(server: ServerProcess) -> None:
    ensure_node_modules()
    code = example("js")
    doc_id, text = inserted(code)
    # Inside tests/js, so that the bare imports resolve to its node_modules.
    script = JS_DIR / f"readme-example-{secrets.token_hex(4)}.mjs"
    script.write_text(code.replace(README_URL, server.ws_url), encoding="utf-8")
    try:
        await run([node_executable(), script.name], JS_DIR)
    finally:
        script.unlink()
    assert await stored_text(server, doc_id) == text
