"""A Python client with a store and a stock Yjs client (Node) edit one board, both offline
for part of the time, and converge once both are back."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ServerProcess
from helpers import wait_until
from yjs_node import NodeYClient

from client.documents import BoardClient
from client.sync import SyncClient

pytestmark = pytest.mark.interop


async def test_python_and_yjs_clients_edit_a_board_offline_and_converge(
    server: ServerProcess, tmp_path: Path
) -> None:
    py = SyncClient(server.ws_url, "shared-board", store=tmp_path / "py.db", backoff_max=0.5)
    node = await NodeYClient.start(server.ws_url, "shared-board")
    try:
        py.start()
        await py.wait_synced()
        await node.wait_synced()
        board = BoardClient(py)
        board.add("在线任务", task_id="online")
        await node.wait_for(lambda s: "online" in s["map"]["tasks"], maps=["tasks"])
        py.set_presence({"user": {"name": "Python"}})

        await py.disconnect()
        await node.call("disconnect")
        board.add("Python 离线", task_id="py-offline", assignee="刘洋")
        board.complete("online")
        await node.call(
            "map_set_deep",
            name="tasks",
            path=[],
            key="node-offline",
            value={"title": "Node 离线", "status": "todo", "priority": "high"},
        )
        await node.call("map_set_deep", name="tasks", path=["online"], key="assignee", value="王芳")

        await node.call("connect")
        await node.wait_synced()
        py.start()
        await py.wait_synced(timeout=15)
        await py.wait_stored(timeout=15)

        await wait_until(lambda: board.task("node-offline") is not None, timeout=15)
        state = await node.wait_for(
            lambda s: (
                {"py-offline", "node-offline", "online"} <= set(s["map"]["tasks"])
                and s["map"]["tasks"]["online"]["status"] == "done"
            ),
            maps=["tasks"],
            timeout=15,
        )
        online = board.task("online")
        assert online is not None
        assert online.status == "done" and online.assignee == "王芳"
        assert board.task("node-offline") is not None
        tasks = state["map"]["tasks"]
        assert tasks["py-offline"]["assignee"] == "刘洋"
        assert tasks["online"]["assignee"] == "王芳"
        # Python's presence came back with the reconnect, and the stock client sees it.
        await node.wait_for(
            lambda s: any(
                (v or {}).get("user", {}).get("name") == "Python" for v in s["states"].values()
            ),
            op="awareness_states",
        )
    finally:
        await node.close()
        await py.close()
