"""The HTTP protocol that hands a connection over to the WebSocket protocol, and then lets go.

uvicorn's httptools protocol and its parser refer to each other; once a connection is
upgraded neither is used again, but the cycle keeps both (about 0.8 KB) alive until the
garbage collector's next full pass, which with thousands of connections comes rarely. Letting
go of the parser at the upgrade breaks the cycle, so reference counting frees the old
protocol at once (bench/idle_profile.py itemises what an idle connection holds).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class UpgradingHttpProtocol(HttpToolsProtocol):
    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        # Only data_received uses the parser, and the transport now feeds the WebSocket.
        parser: Any = None
        self.parser = parser
