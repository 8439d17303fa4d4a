"""The `tandem` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from server import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tandem", description="Tandem collaboration server")
    parser.add_argument("--version", action="version", version=f"tandem {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="listen address (TANDEM_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (TANDEM_PORT, default 8000)")
    serve.add_argument("--database-url", help="SQLAlchemy async URL (TANDEM_DATABASE_URL)")
    serve.add_argument("--log-level", help="debug, info, warning (TANDEM_LOG_LEVEL)")

    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="migrate the schema to the newest revision")
    upgrade.add_argument("--database-url", help="SQLAlchemy async URL (TANDEM_DATABASE_URL)")

    token = commands.add_parser("token", help="issue an access token (needs TANDEM_SECRET)")
    token.add_argument("--user", required=True)
    token.add_argument("--doc", help="limit the token to one document")
    token.add_argument("--read-only", action="store_true")
    token.add_argument("--ttl", type=float, help="seconds until the token expires")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "db":
        return _db_upgrade(args)
    return _token(args)


def _settings(args: argparse.Namespace) -> object:
    from server.settings import Settings

    overrides = {
        key: value
        for key in ("host", "port", "database_url", "log_level")
        if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server import logs
    from server.app import create_app
    from server.rooms.wire import WireProtocol
    from server.settings import Settings

    settings = _settings(args)
    assert isinstance(settings, Settings)
    logs.configure(settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ws=WireProtocol,
        ws_max_size=settings.max_message_bytes,
        # Compression costs more CPU per frame than it saves on loopback and LANs.
        ws_per_message_deflate=False,
        log_config=None,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    logs.install_redaction()
    server.run()
    # uvicorn returns normally when startup fails (the lifespan raised); say so in the code.
    return 0 if server.started else 1


def _db_upgrade(args: argparse.Namespace) -> int:
    from server.persistence import migrate
    from server.persistence.sql import create_engine
    from server.settings import Settings

    settings = _settings(args)
    assert isinstance(settings, Settings)

    async def run() -> str | None:
        engine = create_engine(settings.database_url)
        try:
            await migrate.upgrade(engine)
            return await migrate.current(engine)
        finally:
            await engine.dispose()

    revision = asyncio.run(run())
    print(f"database at revision {revision}")
    return 0


def _token(args: argparse.Namespace) -> int:
    from server.auth import issue_token
    from server.settings import Settings

    secret = Settings().secret
    if not secret:
        print(
            "tandem token: set TANDEM_SECRET first (the server must use the same one)",
            file=sys.stderr,
        )
        return 2
    print(issue_token(secret, args.user, doc=args.doc, read_only=args.read_only, ttl=args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
