"""The `tandem` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

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
    serve.add_argument(
        "--ssl-certfile",
        metavar="FILE",
        help="TLS certificate chain, PEM; with --ssl-keyfile: https and wss (TANDEM_SSL_CERTFILE)",
    )
    serve.add_argument(
        "--ssl-keyfile", metavar="FILE", help="its private key, PEM (TANDEM_SSL_KEYFILE)"
    )
    serve.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        help="event loop: auto is uvloop when installed (TANDEM_LOOP, default auto)",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="server processes sharing the port, about one per core; more than 1 needs "
        "TANDEM_REDIS_URL (TANDEM_WORKERS, default 1)",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        default=None,
        help="seed the Double-11 example workspace if it is not there yet (TANDEM_DEMO=1)",
    )

    serve.add_argument(
        "--no-sidecar",
        dest="sidecar",
        action="store_false",
        default=None,
        help="do not run the sidecar (notifications, reminders, webhooks) in this process; "
        "run `tandem sidecar` beside it instead (TANDEM_SIDECAR=0)",
    )

    sidecar = commands.add_parser(
        "sidecar",
        help="run the sidecar alone: notifications, reminders, task list, webhooks, e-mail",
    )
    sidecar.add_argument("--database-url", help="SQLAlchemy async URL (TANDEM_DATABASE_URL)")
    sidecar.add_argument("--log-level", help="debug, info, warning (TANDEM_LOG_LEVEL)")

    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="migrate the schema to the newest revision")
    upgrade.add_argument("--database-url", help="SQLAlchemy async URL (TANDEM_DATABASE_URL)")

    token = commands.add_parser(
        "token",
        help="issue an access token (needs TANDEM_SECRET)",
        description="Print an access token on stdout (its expiry goes to stderr). The server "
        "must run with the same TANDEM_SECRET.",
    )
    token.add_argument(
        "--user", required=True, type=_user, help="the user name the token signs in as"
    )
    token.add_argument(
        "--doc", type=_doc_id, help="limit the token to this one document (default: every one)"
    )
    token.add_argument("--read-only", action="store_true", help="grant read access only (no edits)")
    token.add_argument(
        "--ttl",
        type=_ttl,
        metavar="SECONDS",
        help="seconds until the token expires; 0: never "
        "(default TANDEM_TOKEN_TTL_SECONDS, 30 days)",
    )

    export = commands.add_parser(
        "export",
        help="export a document, or every document of a folder, read-only",
        description="Export from the database directly (the server may be running or not): "
        "`tandem export DOC --format md|html|json [--version N] [-o FILE]`, or "
        "`tandem export --folder F --out DIR [--format md|html|json]` for a folder "
        "(id or name) and its subfolders, one file per document.",
    )
    export.add_argument("doc", nargs="?", metavar="DOC", help="the document id")
    export.add_argument("--format", choices=("md", "html", "json"), default="md")
    export.add_argument("--version", type=int, help="a stored version: its number in the document")
    export.add_argument("-o", "--output", metavar="FILE", help="write here, not to stdout")
    export.add_argument("--folder", metavar="F", help="export a folder (id or name)")
    export.add_argument("--out", metavar="DIR", help="with --folder: the output directory")
    export.add_argument("--database-url", help="SQLAlchemy async URL (TANDEM_DATABASE_URL)")

    from server import usercli

    usercli.add_parsers(commands)

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "user":
        return usercli.run(args)
    if args.command == "db":
        return _db_upgrade(args)
    if args.command == "sidecar":
        from server.settings import Settings
        from server.sidecar import command

        settings = _settings(args)
        assert isinstance(settings, Settings)
        return command.run(settings)
    if args.command == "export":
        if (args.doc is None) == (args.folder is None):
            export.error("give either DOC or --folder F")
        if args.folder is not None and (args.out is None or args.output or args.version):
            export.error("--folder needs --out DIR and takes neither -o nor --version")
        if args.doc is not None and args.out is not None:
            export.error("--out is for --folder; use -o FILE for one document")
        return _export(args)
    return _token(args)


def _settings(args: argparse.Namespace) -> object:
    from server.settings import Settings

    overrides = {
        key: value
        for key in (
            "host",
            "port",
            "database_url",
            "log_level",
            "demo",
            "ssl_certfile",
            "ssl_keyfile",
            "loop",
            "sidecar",
            "workers",
        )
        if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


def _serve(args: argparse.Namespace) -> int:
    from server.settings import Settings
    from server.tls import TLSConfigError, check_tls_files

    settings = _settings(args)
    assert isinstance(settings, Settings)
    try:
        tls = check_tls_files(settings.ssl_certfile, settings.ssl_keyfile)
    except TLSConfigError as exc:
        print(f"tandem serve: {exc}", file=sys.stderr)
        return 2
    from server.idp import IdentityProviderConfigError, check_settings

    try:
        check_settings(settings)
    except IdentityProviderConfigError as exc:
        print(f"tandem serve: {exc}", file=sys.stderr)
        return 2
    from server import workers

    if settings.workers > 1:
        return workers.supervise(settings)

    import uvicorn

    from server import descriptors, logs
    from server.app import create_app
    from server.rooms.upgrade import UpgradingHttpProtocol
    from server.rooms.wire import WireProtocol
    from server.workers import FDS_VARIABLE

    logs.configure(settings.log_level, pid=FDS_VARIABLE in os.environ)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http=UpgradingHttpProtocol,
        ws=WireProtocol,
        ws_max_size=settings.max_message_bytes,
        # Compression costs more CPU per frame than it saves on loopback and LANs.
        ws_per_message_deflate=False,
        ws_ping_interval=settings.ping_interval_seconds or None,
        ws_ping_timeout=settings.ping_interval_seconds or None,
        log_config=None,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
        loop=settings.loop,
        ssl_certfile=settings.ssl_certfile if tls else None,
        ssl_keyfile=settings.ssl_keyfile if tls else None,
    )
    server = _quiet_server(config)
    logs.install_redaction()
    _settle_heap()
    descriptors.raise_limit()
    run_on_deep_stack(server, workers.attach(server))
    # uvicorn returns normally when startup fails (the lifespan raised); say so in the code.
    return 0 if server.started else 1


def _quiet_server(config: Any) -> Any:
    """A uvicorn server whose main loop wakes once a second, or at once on a signal.

    uvicorn's own polls for the exit flag ten times a second. On a VM each wake-up of an
    idle event loop costs about 0.25 ms of CPU, so that poll alone was 2.5 ms of CPU a
    second, idle or busy. Once a second is what refreshing the Date header needs; a signal
    wakes the loop through `wake`, from the main thread.
    """
    import uvicorn

    class QuietServer(uvicorn.Server):
        _loop: asyncio.AbstractEventLoop | None = None
        _exit: asyncio.Event | None = None

        async def main_loop(self) -> None:
            self._loop = asyncio.get_running_loop()
            self._exit = asyncio.Event()
            _log_serving(self.config, self._loop)
            counter = 0
            # `on_tick` refreshes the Date header when counter % 10 == 0 (its 0.1 s steps).
            while not await self.on_tick(counter):
                counter = (counter + 10) % 864000
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._exit.wait(), 1.0)

        def wake(self) -> None:
            """Called from another thread once `should_exit` is set."""
            loop, event = self._loop, self._exit
            if loop is not None and event is not None:
                with contextlib.suppress(RuntimeError):  # the loop has closed already
                    loop.call_soon_threadsafe(event.set)

    return QuietServer(config)


def _log_serving(config: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Say where the server answers, with the scheme TLS gives it, and on which event loop
    (the running one's: `auto` picks uvloop only when it is installed)."""
    import logging

    host = f"[{config.host}]" if ":" in config.host else config.host
    secure = "s" if config.is_ssl else ""
    logging.getLogger("tandem").info(
        "tandem serving http%s://%s:%d, WebSockets at ws%s://%s:%d/ws/{doc_id}; event loop %s",
        secure,
        host,
        config.port,
        secure,
        host,
        config.port,
        type(loop).__module__.partition(".")[0],
    )


def _settle_heap() -> None:
    """Keep the cyclic garbage collector's work in proportion to the garbage.

    What is loaded by now (about 100,000 modules, classes and functions) lives as long as
    the process: frozen, the collector never walks it again. And with thousands of
    connections open, a full collection walks them all (about 90 ms with 2000 open): a
    larger first threshold lets short-lived objects die by reference count instead of being
    promoted, so full collections come about half as often (measured on 1000 rooms x 2:
    GC time 0.76 s -> 0.50 s per run, full collections 5 -> 2).
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def run_on_deep_stack(server: Any, sockets: list[Any] | None = None) -> None:
    """Run the uvicorn server on a big-stack thread; this (main) thread handles signals.

    pycrdt decodes nested values recursively in Rust: an update nesting plain values a few
    ten thousand levels deep (a 60 KB frame) overflows a default 8 MiB stack and kills the
    process with a segfault, which no exception handler can catch. The event loop, where
    rooms apply untrusted updates, therefore runs on a thread with a stack large enough for
    any frame under the message size limit (reserved address space, not memory).
    `sockets`: listening sockets already bound (a worker's, from server/workers.py).
    """
    import signal

    from shared.documents import start_deep_thread

    thread = start_deep_thread(lambda: server.run(sockets=sockets), "tandem-loop")

    def stop(signum: int, _frame: Any) -> None:
        if server.should_exit and signum == signal.SIGINT:
            server.force_exit = True
        server.should_exit = True
        server.wake()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while thread.is_alive():
        thread.join(0.25)


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


def _export(args: argparse.Namespace) -> int:
    from server.export.offline import ExportError
    from shared.documents import call_with_deep_stack

    run = _export_folder if args.folder else _export_doc
    try:
        # On a big stack: loading merges stored updates, which pycrdt decodes recursively.
        return call_with_deep_stack(lambda: asyncio.run(run(args)))
    except (ExportError, OSError) as exc:
        print(f"tandem export: {exc}", file=sys.stderr)
        return 1


async def _export_doc(args: argparse.Namespace) -> int:
    from pathlib import Path

    from server.export.offline import export_one, open_database, write_file
    from server.settings import Settings

    settings = _settings(args)
    assert isinstance(settings, Settings)
    engine = await open_database(settings.database_url)
    try:
        exported = await export_one(engine, args.doc, args.format, version=args.version)
    finally:
        await engine.dispose()
    if args.output:
        write_file(Path(args.output), exported.body)
    else:
        sys.stdout.buffer.write(exported.body)
        sys.stdout.flush()
    return 0


async def _export_folder(args: argparse.Namespace) -> int:
    from pathlib import Path

    from server.export.offline import (
        ExportError,
        Progress,
        export_one,
        folder_documents,
        open_database,
        relative_paths,
        write_file,
    )
    from server.settings import Settings

    settings = _settings(args)
    assert isinstance(settings, Settings)
    out = Path(args.out)
    engine = await open_database(settings.database_url)
    failed: list[str] = []
    written = 0
    try:
        entries = await folder_documents(engine, args.folder)
        progress = Progress(len(entries))
        try:
            for entry, path in zip(entries, relative_paths(entries, args.format), strict=True):
                try:
                    exported = await export_one(engine, entry.doc_id, args.format)
                except ExportError as exc:
                    failed.append(f"{entry.doc_id}: {exc}")
                else:
                    write_file(out / path, exported.body)
                    written += 1
                progress.advance(str(path))
        finally:
            progress.close()
    finally:
        await engine.dispose()
    for problem in failed:
        print(f"tandem export: skipped {problem}", file=sys.stderr)
    print(f"exported {written} documents ({args.format}) to {out}", file=sys.stderr)
    return 1 if failed else 0


def _user(text: str) -> str:
    """`--user`: a name a token can carry (not empty; text, not undecodable bytes)."""
    from server.auth import is_text

    if not is_text(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a user name")
    return text


def _doc_id(text: str) -> str:
    """`--doc`: a document id by the rule the WebSocket endpoint applies."""
    from server.api.fields import DOC_ID_RULE
    from server.rooms.session import DOC_ID

    if not DOC_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid document id {text!r}: {DOC_ID_RULE}")
    return text


def _workers(text: str) -> int:
    """`--workers`: a whole number of processes, 1 or more."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes (1 or more)")
    return int(text)


def _ttl(text: str) -> float:
    """`--ttl`: a finite number of seconds, 0 or more."""
    import math

    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a lifetime: give seconds, 0 or more (0: never expires)"
        )
    return seconds


def _token(args: argparse.Namespace) -> int:
    import time

    from server.auth import issue_token
    from server.settings import Settings

    settings = Settings()
    if not settings.secret:
        print(
            "tandem token: set TANDEM_SECRET first (the server must use the same one)",
            file=sys.stderr,
        )
        return 2
    ttl = settings.token_ttl_seconds if args.ttl is None else args.ttl
    expires = int(time.time() + ttl) if ttl > 0 else None
    token = issue_token(
        settings.secret, args.user, doc=args.doc, read_only=args.read_only, expires=expires
    )
    if expires is None:
        print(
            "tandem token: this token never expires; it is valid until TANDEM_SECRET changes",
            file=sys.stderr,
        )
    else:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        print(f"tandem token: expires {when} (in {_duration(ttl)})", file=sys.stderr)
    print(token)
    return 0


def _duration(seconds: float) -> str:
    """A lifetime as people say it: the largest whole unit, or seconds."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} seconds"


if __name__ == "__main__":
    sys.exit(main())
