"""Benchmark Tandem side by side with the reference Node servers.

    .venv/bin/python bench/run.py                     # every scenario, every server
    .venv/bin/python bench/run.py --quick             # a short smoke run (about 3 minutes)
    .venv/bin/python bench/run.py --scenarios fanout,rooms --duration 60
    .venv/bin/python bench/run.py --persistence postgres
    .venv/bin/python bench/run.py --servers tandem,tandem-auth --scenarios fanout,stress,rooms \
        --only "fanout,stress,rooms 1000" --duration 15 --repeat 3   # the cost of sign-in
    .venv/bin/python bench/run.py --scenarios idle,storm          # many connections (opt-in)

For every case (one scenario at one size) each server is started fresh on a free port on
127.0.0.1, the load generator (bench/loadgen.mjs, Node) runs against it, and the server is
stopped; the servers take turns case by case, in a rotating order, so a drift in the machine's
load spreads over all of them. Raw results go to bench/results/<timestamp>.jsonl; at the end a
table gives each figure per server and the ratio Tandem / best reference server.

Servers: Tandem (`python -m server serve`, persistence on: SQLite in a scratch folder, or a
scratch PostgreSQL database with --persistence postgres), `@y/websocket-server` and
`@hocuspocus/server` (bench/servers/*.mjs, in memory). Run `npm ci` in bench/ first.

`idle` and `storm` (opt-in scenarios, not in the default list) are about connections rather than
traffic: `idle` holds many synced, silent connections (RSS per connection, CPU while idle,
pings), `storm` opens many at once against documents with long histories (time until all are
synced, socket open -> sync step 2). This process raises its soft descriptor limit to the hard
one, and the servers and the load generator inherit it.

`tandem-auth` (opt-in) is Tandem with sign-in on: a random TANDEM_SECRET, and every client of
the load generator with a token of its own (users bench-0, bench-1, ..., none of them in the
database, so with no access rules every document is open to them). Run beside `tandem`, the
table gets a column auth / no auth, and a summary of each case's headline figure follows it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
LOADGEN = BENCH / "loadgen.mjs"
REFERENCES = ("y-websocket-server", "hocuspocus")
# Not a reference: the least a Python server can do per delivery (bench/servers/floor.py).
# Opt-in, traffic scenarios only; it never counts as the best reference.
FLOOR = "python-floor"
DEFAULT_SERVERS = ("tandem", *REFERENCES)
# Opt-in: Tandem with sign-in on, every client with its own token. Never a reference either.
AUTH = "tandem-auth"
ALL_SERVERS = ("tandem", AUTH, *REFERENCES, FLOOR)
DEFAULT_SCENARIOS = ("fanout", "stress", "rooms", "cold", "persist")
# Opt-in (`--scenarios idle,storm`): thousands of connections each, several minutes a round.
CONNECTION_SCENARIOS = ("idle", "storm")
ALL_SCENARIOS = (*DEFAULT_SCENARIOS, *CONNECTION_SCENARIOS)
# The seconds between two WebSocket pings of each reference server (None: it sends none).
# @y/websocket-server 0.1.1: `pingTimeout = 30000` in src/utils.js, a timer per connection (one
# that has not answered the previous ping is closed). @hocuspocus/server 4.7.0: crossws 0.4's
# node adapter, `idleTimeout` 30 s: one sweep every 30 s pings every socket (and terminates
# those that did not answer the previous one); Hocuspocus itself also closes a connection that
# sent no message for `timeout` (60 s, checked every 60 s per connection).
REFERENCE_PING_S: dict[str, float | None] = {"y-websocket-server": 30.0, "hocuspocus": 30.0}
DEFAULT_PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[run {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# cases


@dataclass
class Case:
    scenario: str  # fanout, stress, rooms, cold, persist-fanout, persist-rooms, idle, storm
    label: str  # how the table names it
    args: dict[str, Any]  # loadgen options
    servers: tuple[str, ...]  # which servers (variants) run it
    timeout: float  # seconds the load generator may take
    env: dict[str, str] = field(default_factory=dict)  # extra environment for Tandem


def plan(opts: argparse.Namespace) -> list[Case]:
    quick = opts.quick
    duration = opts.duration if opts.duration is not None else (6 if quick else 60)
    warmup = opts.warmup if opts.warmup is not None else (3 if quick else 5)
    timing = {"duration": duration, "warmup": min(warmup, duration / 2)}
    budget = duration + 240
    servers = tuple(s for s in ALL_SERVERS if s in opts.servers)
    tandem_db = opts.persistence
    cases: list[Case] = []

    def traffic(
        scenario: str,
        label: str,
        rooms: int,
        writers: int,
        readers: int,
        rate: float,
        variants: tuple[str, ...],
    ) -> Case:
        args = {
            "scenario": scenario,
            "procs": opts.gen_procs,
            "rooms": rooms,
            "writers": writers,
            "readers": readers,
            "rate": rate,
            **timing,
        }
        return Case(scenario, label, args, variants, budget)

    main = tuple(column(s, tandem_db) for s in servers)
    if "fanout" in opts.scenarios:
        for readers in [50] if quick else [50, 200, 500]:
            cases.append(traffic("fanout", f"fanout R={readers} @20/s", 1, 1, readers, 20, main))
    if "stress" in opts.scenarios:
        for rate in [30] if quick else [30, 100]:
            cases.append(traffic("stress", f"stress R=500 @{rate}/s", 1, 1, 500, rate, main))
    if "rooms" in opts.scenarios:
        for rooms in [200] if quick else [200, 1000]:
            cases.append(traffic("rooms", f"rooms {rooms}x2 @2/s", rooms, 2, 0, 2, main))
    if "cold" in opts.scenarios:
        updates = 2000 if quick else 20000
        args = {
            "scenario": "cold",
            "updates": updates,
            "fresh": 2 if quick else 5,
            "unloaded-rounds": 1 if quick else 3,
        }
        cases.append(
            Case(
                "cold",
                f"cold {updates} updates",
                args,
                tuple(s for s in main if s != FLOOR),  # the floor keeps no document
                600,
                # The builder sends its 20,000 updates as fast as it can: Tandem's flood guard
                # (on, at its defaults) paces it to 200 a second, so building takes about
                # 100 s there; the case measures loads, not the build.
                env={"TANDEM_ROOM_GRACE_SECONDS": "1"},
            )
        )
    # The connection scenarios: Tandem (with or without sign-in) and the references; not the
    # floor, which keeps no document.
    conn_servers = tuple(s for s in main if s != FLOOR)
    if "idle" in opts.scenarios:
        clients, docs = opts.idle_size or ((500, 50) if quick else (8000, 1000))
        window = opts.idle_window if opts.idle_window is not None else (6 if quick else 20)
        args = {
            "scenario": "idle",
            "clients": clients,
            "docs": docs,
            "window": window,
            "connect-timeout": 60,
        }
        # A ramp of 50 at a time: a few minutes at most, even for a slow server.
        cases.append(Case("idle", f"idle {clients} over {docs}", args, conn_servers, 900 + window))
    if "storm" in opts.scenarios:
        clients, docs = opts.storm_size or ((200, 20) if quick else (2000, 200))
        long_docs, updates = opts.storm_history or ((2, 1000) if quick else (10, 5000))
        args = {
            "scenario": "storm",
            "clients": clients,
            "docs": docs,
            "long-docs": long_docs,
            "updates": updates,
            "connect-timeout": 60,
        }
        label = f"storm {clients} over {docs} ({long_docs}x{updates})"
        # Tandem's flood guard (on, at its defaults) paces each builder to 200 updates a
        # second after a burst of 2,000: about 15 s for 5,000; the builders run side by side.
        cases.append(Case("storm", label, args, conn_servers, 900))
    if "persist" in opts.scenarios and "tandem" in servers:
        variants = ("tandem-sqlite", "tandem-postgres", "tandem-memory")
        readers = 50 if quick else 500
        rooms = 200 if quick else 1000
        cases.append(
            traffic(
                "persist-fanout", f"persist fanout R={readers} @20/s", 1, 1, readers, 20, variants
            )
        )
        cases.append(
            traffic("persist-rooms", f"persist rooms {rooms}x2 @2/s", rooms, 2, 0, 2, variants)
        )
    return cases


def column(server: str, persistence: str) -> str:
    """The variant (and table column) a --servers name runs as: Tandem's names its database."""
    if server == "tandem":
        return f"tandem-{persistence}"
    if server == AUTH:
        return f"tandem-{persistence}-auth"
    return server


def case_clients(case: Case) -> int:
    """How many clients the load generator opens in `case` (one token each with sign-in on)."""
    args = case.args
    if case.scenario == "cold":  # builder, watcher, one warm-up client, fresh ones, unloaded
        return 3 + int(args["fresh"]) + int(args.get("unloaded-rounds", 0))
    if case.scenario == "idle":
        return int(args["clients"])
    if case.scenario == "storm":  # a builder and a checker per long document, then the storm
        return 2 * int(args["long-docs"]) + int(args["clients"])
    return int(args["rooms"]) * (int(args["writers"]) + int(args["readers"]))


# ------------------------------------------------------------------------------------------------
# servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class PostgresScratch:
    """A scratch database on the PostgreSQL server at `admin` (dropped afterwards)."""

    def __init__(self, admin: str, name: str) -> None:
        self.admin = admin
        self.name = name
        host = admin.split("@", 1)[-1].rsplit("/", 1)[0]
        user = admin.split("://", 1)[1].split("@", 1)[0] if "@" in admin else "postgres"
        self.url = f"postgresql+asyncpg://{user}@{host}/{name}"

    async def _admin(self, sql: str) -> Any:
        import asyncpg  # the project's own dependency

        conn = await asyncpg.connect(self.admin, timeout=10)
        try:
            return await conn.fetch(sql)
        finally:
            await conn.close()

    def create(self) -> None:
        asyncio.run(self._admin(f'CREATE DATABASE "{self.name}"'))
        out = subprocess.run(
            [sys.executable, "-m", "server", "db", "upgrade", "--database-url", self.url],
            cwd=tempfile.gettempdir(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"db upgrade failed: {out.stderr[-2000:]}")

    def drop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))

    def backend_cpu_seconds(self) -> float | None:
        """CPU seconds used so far by the server processes serving this database."""
        try:
            rows = asyncio.run(
                self._admin(f"SELECT pid FROM pg_stat_activity WHERE datname = '{self.name}'")
            )
        except Exception:
            return None
        total = 0.0
        for row in rows:
            cpu = proc_cpu_seconds(row["pid"])
            if cpu is not None:
                total += cpu
        return round(total, 3)


class Server:
    """One server process, started fresh for one case and stopped after it."""

    def __init__(
        self,
        variant: str,
        opts: argparse.Namespace,
        env: dict[str, str],
        tag: str,
        clients: int = 0,
    ):
        self.variant = variant
        # "tandem-sqlite-auth": Tandem on SQLite with sign-in on, a token for each of `clients`.
        self.auth = variant.startswith("tandem") and variant.endswith("-auth")
        self.storage = variant.removesuffix("-auth")
        self.clients = clients
        self.tokens: Path | None = None  # the JSON list of tokens, with sign-in on
        self.opts = opts
        self.extra_env = env
        self.tag = tag
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="tandem-bench-"))
        self.pg: PostgresScratch | None = None
        self.dialect = "hocuspocus" if variant == "hocuspocus" else "y-websocket"
        self.is_tandem = variant.startswith("tandem")
        # Seconds between two WebSocket pings to each client (None: none), as started.
        self.ping_interval_s = REFERENCE_PING_S.get(variant)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
        if self.is_tandem:
            if self.storage == "tandem-postgres":
                self.pg = PostgresScratch(self.opts.pg_admin, f"tandem_bench_{self.tag}")
                self.pg.create()
                url = self.pg.url
            elif self.storage == "tandem-memory":
                url = "memory://"  # Tandem without persistence: documents in memory only
            else:
                url = f"sqlite+aiosqlite:///{self.workdir / 'tandem.db'}"
            env.update({"TANDEM_DATABASE_URL": url, "TANDEM_LOG_LEVEL": "warning"})
            env.update(self.extra_env)
            env.update(self.opts.tandem_env)
            if self.auth:
                env["TANDEM_SECRET"] = self.issue_tokens()
            self.ping_interval_s = tandem_ping_interval(env)
            cmd = [
                sys.executable,
                "-m",
                "server",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ]
            ready = f"{self.http_url}/readyz"
        elif self.variant == FLOOR:
            cmd = [sys.executable, str(BENCH / "servers" / "floor.py"), str(self.port)]
            ready = f"{self.http_url}/"
        else:
            script = BENCH / "servers" / f"{self.variant}.mjs"
            cmd = [self.opts.node, str(script), str(self.port)]
            ready = f"{self.http_url}/"
        self.log = open(self.workdir / "server.log", "wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.workdir if self.is_tandem else BENCH,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.variant} exited at start: {self.log_tail()}")
            with contextlib.suppress(OSError):
                if http_get(ready, timeout=1.0)[0] == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.variant} not ready within 60 s: {self.log_tail()}")

    def issue_tokens(self) -> str:
        """A fresh random secret, and a token signed with it for each client (users bench-0,
        bench-1, ...), written to tokens.json in the work dir; returns the secret."""
        from server.auth import issue_token  # the project's own; only this variant needs it

        secret = secrets.token_urlsafe(48)  # 64 characters, 48 random bytes
        # Long enough for any case (a case's budget is its duration plus 240 s).
        ttl = 24 * 3600
        tokens = [issue_token(secret, f"bench-{i}", ttl=ttl) for i in range(max(1, self.clients))]
        self.tokens = self.workdir / "tokens.json"
        self.tokens.write_text(json.dumps(tokens))
        return secret

    def log_tail(self, n: int = 1500) -> str:
        try:
            return (self.workdir / "server.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def tandem_state(self) -> dict[str, Any]:
        """Tandem's own view after a case: pending writes, dropped peers, persistence."""
        state: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            state["readyz"] = json.loads(http_get(f"{self.http_url}/readyz")[1])
        with contextlib.suppress(Exception):
            text = http_get(f"{self.http_url}/metrics")[1].decode()
            wanted = (
                "tandem_slow_peers_dropped_total",
                "tandem_rejected_frames_total",
                "tandem_persist_failures_total",
                "tandem_updates_applied_total",
                "tandem_compactions_total",
                "tandem_persist_batch_updates_count",
                "tandem_persist_batch_updates_sum",
                "tandem_persist_seconds_sum",
            )
            for line in text.splitlines():
                name = line.split("{", 1)[0].split(" ", 1)[0]
                if name in wanted:
                    state[name] = state.get(name, 0) + float(line.rsplit(" ", 1)[1])
        if self.pg:
            state["db_backend_cpu_s"] = self.pg.backend_cpu_seconds()
        return state

    def stop(self) -> float | None:
        """Stop the server (SIGTERM, then SIGKILL); return its shutdown time in seconds."""
        took = None
        if self.proc and self.proc.poll() is None:
            started = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=45)
                took = round(time.monotonic() - started, 2)
            except subprocess.TimeoutExpired:
                log(f"{self.variant} did not stop within 45 s; killing it")
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        if self.pg:
            self.pg.drop()
        return took

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def tandem_ping_interval(env: dict[str, str]) -> float | None:
    """The ping interval a Tandem server started with `env` uses (None: no pings)."""
    value = env.get("TANDEM_PING_INTERVAL_SECONDS")
    if value is None:
        from server.settings import Settings  # the project's own: its default

        seconds = float(Settings.model_fields["ping_interval_seconds"].default)
    else:
        seconds = float(value)
    return seconds or None


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (the servers and the load
    generator inherit it: Node cannot raise its own); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


# ------------------------------------------------------------------------------------------------
# running


def run_loadgen(server: Server, case: Case, tag: str, opts: argparse.Namespace) -> dict[str, Any]:
    assert server.proc is not None
    args = {
        **case.args,
        "url": server.ws_url,
        "dialect": server.dialect,
        "pid": server.proc.pid,
        "clk-tck": CLK_TCK,
        "tag": tag,
    }
    if server.tokens is not None:  # each client takes the next token of the list
        args["tokens"] = server.tokens
    if case.scenario == "cold":
        if server.is_tandem:  # Tandem unloads idle rooms: also measure a load from storage
            args["readyz"] = f"{server.http_url}/readyz"
        else:
            args.pop("unloaded-rounds", None)
    if case.scenario == "storm" and server.is_tandem:  # wait for the history to be stored
        args["readyz"] = f"{server.http_url}/readyz"
    cmd = [opts.node, str(LOADGEN)]
    for key, value in args.items():
        cmd += [f"--{key}", str(value)]
    try:
        out = subprocess.run(cmd, cwd=BENCH, capture_output=True, text=True, timeout=case.timeout)
    except subprocess.TimeoutExpired as exc:
        return {
            "ok": False,
            "error": f"load generator timed out after {case.timeout:.0f} s",
            "stderr": (exc.stderr or b"")[-2000:].decode(errors="replace")
            if isinstance(exc.stderr, bytes)
            else str(exc.stderr)[-2000:],
        }
    if opts.verbose:
        sys.stderr.write(out.stderr)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {
            "ok": False,
            "error": f"no result (exit {out.returncode})",
            "stderr": out.stderr[-2000:],
        }
    result: dict[str, Any] = json.loads(lines[-1])
    if not result.get("ok"):
        result["stderr"] = out.stderr[-2000:]
    return result


def rotate(items: tuple[str, ...], k: int) -> list[str]:
    k %= max(1, len(items))
    return list(items[k:] + items[:k])


def versions(opts: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(Exception):
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    with contextlib.suppress(Exception):
        pages = os.sysconf("SC_PHYS_PAGES")
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * pages / 2**30, 1)
    with contextlib.suppress(Exception):
        info["node"] = subprocess.run(
            [opts.node, "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    from importlib.metadata import PackageNotFoundError, version

    py: dict[str, str] = {}
    for name in (
        "pycrdt",
        "uvicorn",
        "starlette",
        "websockets",
        "uvloop",
        "httptools",
        "sqlalchemy",
        "aiosqlite",
        "asyncpg",
    ):
        with contextlib.suppress(PackageNotFoundError):
            py[name] = version(name)
    info["python_packages"] = py
    node: dict[str, str] = {}
    for name in (
        "@y/websocket-server",
        "@hocuspocus/server",
        "yjs",
        "y-protocols",
        "lib0",
        "ws",
        "crossws",
    ):
        with contextlib.suppress(Exception):
            pkg = json.loads((BENCH / "node_modules" / name / "package.json").read_text())
            node[name] = pkg["version"]
    with contextlib.suppress(Exception):
        pkg = json.loads(
            (
                BENCH
                / "node_modules"
                / "@y"
                / "websocket-server"
                / "node_modules"
                / "ws"
                / "package.json"
            ).read_text()
        )
        node["ws (of @y/websocket-server)"] = pkg["version"]
    info["node_packages"] = node
    return info


# ------------------------------------------------------------------------------------------------
# the table

# (figure, path in the result, lower is better?)
FIGURES: dict[str, list[tuple[str, str, bool | None]]] = {
    "traffic": [
        ("p50 ms", "latency.p50_ms", True),
        ("p99 ms", "latency.p99_ms", True),
        ("max ms", "latency.max_ms", True),
        ("lost", "lost", None),
        ("delivered/s", "delivered_per_s", False),
        ("server CPU s", "server_cpu_s", True),
        ("server CPU s in the kernel", "server_sys_s", None),
        ("server peak RSS MB", "server_rss_peak_mb", True),
        ("PostgreSQL CPU s (whole run)", "db_cpu_s", None),
        ("uncommitted updates at the end", "uncommitted_at_end", None),
        ("generator CPU s", "gen_cpu_s", None),
        ("other CPU s (noise)", "other_cpu_s", None),
    ],
    "cold": [
        ("step 2 arrived ms (median)", "loaded.median_step2_ms", True),
        ("whole document ms (median)", "loaded.median_complete_ms", True),
        ("step 2 bytes", "loaded.step2_bytes", None),
        ("unloaded: step 2 ms (median)", "unloaded.median_step2_ms", True),
        ("unloaded: whole document ms (median)", "unloaded.median_complete_ms", True),
    ],
    "idle": [
        ("connections accepted", "accepted", None),
        ("refused / failed / timed out", "not_accepted", None),
        ("server RSS before connecting MB", "rss_before_mb", None),
        ("server RSS all connected MB", "rss_connected_mb", True),
        ("RSS per connection KB", "rss_per_conn_kb", True),
        ("server CPU s in the idle window", "server_cpu_s", True),
        ("server CPU s in the kernel", "server_sys_s", None),
        ("ping interval s", "ping_interval_s", None),
        ("pings answered in the window", "pings_in_window", None),
        ("closed in the window", "unexpected_closes_in_window", None),
        ("ramp-up s", "ramp_s", True),
        ("other CPU s (noise)", "other_cpu_s", None),
    ],
    "storm": [
        ("clients synced", "synced", None),
        ("refused", "refused", None),
        ("timed out", "timed_out", None),
        ("time until all synced s", "all_synced_s", True),
        ("open -> step 2 p50 ms", "open_to_step2.p50_ms", True),
        ("open -> step 2 p95 ms", "open_to_step2.p95_ms", True),
        ("open -> step 2 p50 ms, long documents", "open_to_step2_long_docs.p50_ms", True),
        ("start -> socket open p95 ms", "start_to_open.p95_ms", True),
        ("server CPU s in the storm", "server_cpu_s", True),
        ("server peak RSS MB", "server_rss_peak_mb", True),
        ("long document bytes", "long_doc_bytes", None),
        ("generator CPU s", "gen_cpu_s", None),
        ("other CPU s (noise)", "other_cpu_s", None),
    ],
}


def dig(result: dict[str, Any], path: str) -> Any:
    value: Any = result
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


# The figure the sign-in comparison judges each traffic case by (the one docs/PERFORMANCE.md
# sets its targets on): fan-out by p99 latency; stress and rooms by server CPU seconds, since
# delivered/s there is the offered load unless something saturates, and latency near saturation
# flips between two states from run to run.
HEADLINE = {"fanout": "p99 ms", "stress": "server CPU s", "rooms": "server CPU s"}
# What the summary shows of each case: (figure, path in the result).
AUTH_SUMMARY: list[tuple[str, str]] = [
    ("p99 ms", "latency.p99_ms"),
    ("delivered/s", "delivered_per_s"),
    ("server CPU s", "server_cpu_s"),
    ("ramp-up s", "ramp_s"),  # every client connects (and signs in) before the window
]
AUTH_LIMIT = 1.05


def auth_summary(records: list[dict[str, Any]], plain: str, signed: str) -> str:
    """Tandem with sign-in against without it, case by case: medians, their ratio, and the
    ratio of each round (the two ran back to back in it); the headline figure marked `*`."""
    header = ["case", "figure", plain, signed, "auth / no auth", "per round", "within 1.05x"]
    rows = [header, ["---"] * len(header)]
    cases: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    scenario_of: dict[str, str] = {}
    for rec in records:
        if rec["server"] in (plain, signed):
            cases.setdefault(rec["label"], {}).setdefault(rec["server"], {})[rec["round"]] = rec
            scenario_of[rec["label"]] = rec["scenario"]
    for label, by_server in cases.items():
        if not (by_server.get(plain) and by_server.get(signed)):
            continue
        headline = HEADLINE.get(scenario_of[label])
        for name, path in AUTH_SUMMARY:
            a = [dig(r["result"], path) for r in by_server[plain].values()]
            b = [dig(r["result"], path) for r in by_server[signed].values()]
            ma, mb = median_of(a), median_of(b)
            if ma is None and mb is None:
                continue
            ratio = mb / ma if isinstance(ma, (int, float)) and ma and mb is not None else None
            per_round = []
            for r in sorted(set(by_server[plain]) & set(by_server[signed])):
                x = dig(by_server[plain][r]["result"], path)
                y = dig(by_server[signed][r]["result"], path)
                per_round.append(f"{y / x:.2f}" if x and y is not None else "—")
            verdict = ""
            if name == headline and ratio is not None:
                # Lower is better for every headline figure: auth may cost at most 5 % more.
                verdict = "yes" if ratio <= AUTH_LIMIT else "NO"
            marks = {s: mark_of([r["result"] for r in by_server[s].values()]) for s in by_server}
            rows.append(
                [
                    label,
                    name + (" *" if name == headline else ""),
                    fmt(ma) + marks[plain],
                    fmt(mb) + marks[signed],
                    "—" if ratio is None else f"{ratio:.2f}",
                    " ".join(per_round),
                    verdict,
                ]
            )
    return markdown(rows)


def mark(result: dict[str, Any]) -> str:
    """The table's mark: (!) not ok (lost updates, errors), (g) the load generator was the limit."""
    if not result.get("ok", True):
        return " (!)"
    if result.get("generator_limited"):
        return " (g)"
    return ""


def median_of(values: list[Any]) -> Any:
    """The median of the rounds' numbers (the lower middle one: a value that was measured)."""
    numbers = sorted(v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))
    if not numbers:
        return None
    return numbers[(len(numbers) - 1) // 2]


def mark_of(results: list[dict[str, Any]]) -> str:
    """(!) if any round was not ok; (g) if the generator was the limit in most rounds."""
    marks = [mark(r) for r in results]
    if " (!)" in marks:
        return " (!)"
    return " (g)" if marks and marks.count(" (g)") * 2 > len(marks) else ""


def table(
    records: list[dict[str, Any]],
    columns: list[str],
    ratio_of: str | None,
    references: list[str],
    auth_pair: tuple[str, str] | None = None,
) -> str:
    """A markdown table: one row per (case, figure), one column per server; with `auth_pair`
    (Tandem without and with sign-in) a last column divides the second by the first."""
    header = ["case", "figure", *columns]
    if ratio_of:
        header.append(f"{ratio_of} / best ref")
    if auth_pair:
        header.append("auth / no auth")
    rows = [header, ["---"] * len(header)]
    cases: dict[str, dict[str, list[dict[str, Any]]]] = {}
    kinds: dict[str, str] = {}
    for rec in records:
        cases.setdefault(rec["label"], {}).setdefault(rec["server"], []).append(rec)
        kinds[rec["label"]] = rec["scenario"] if rec["scenario"] in FIGURES else "traffic"
    for label, by_server in cases.items():
        kind = kinds[label]
        for name, path, lower in FIGURES[kind]:
            values = {
                s: median_of([dig(r["result"], path) for r in by_server.get(s, [])])
                for s in columns
            }
            if all(v is None for v in values.values()):
                continue
            marks = {s: mark_of([r["result"] for r in by_server.get(s, [])]) for s in columns}
            row = [label, name, *(fmt(values[s]) + marks[s] for s in columns)]
            if ratio_of:
                ratio = "—"
                mine = values.get(ratio_of)
                refs: list[float] = [
                    float(v) for r in references if isinstance(v := values.get(r), (int, float))
                ]
                if lower is not None and isinstance(mine, (int, float)) and refs:
                    best = min(refs) if lower else max(refs)
                    if best:
                        ratio = f"{mine / best:.2f}"
                row.append(ratio)
            if auth_pair:
                plain, signed = (values.get(c) for c in auth_pair)
                both = isinstance(plain, (int, float)) and isinstance(signed, (int, float))
                row.append(f"{signed / plain:.2f}" if lower is not None and both and plain else "—")
            rows.append(row)
    return markdown(rows)


def markdown(rows: list[list[str]]) -> str:
    """Rows (the first the header, the second "---" cells) as an aligned markdown table."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [
            ("-" * widths[i]) if r[i] == "---" else r[i].ljust(widths[i]) for i in range(len(r))
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------


def pair(text: str) -> tuple[int, int]:
    """Two positive whole numbers written "A,B" (an argparse type)."""
    try:
        a, b = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not two numbers A,B: {text!r}") from None
    if a < 1 or b < 1:
        raise argparse.ArgumentTypeError(f"both must be at least 1: {text!r}")
    return a, b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma separated, from {','.join(ALL_SCENARIOS)} (default "
        f"{','.join(DEFAULT_SCENARIOS)}; {' and '.join(CONNECTION_SCENARIOS)} are opt-in)",
    )
    parser.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help=f"comma separated, from {','.join(ALL_SERVERS)} (default "
        f"{','.join(DEFAULT_SERVERS)}). {AUTH}: Tandem with sign-in on (a random "
        "TANDEM_SECRET, every load generator client with its own token); beside tandem it adds "
        "an auth / no auth column and a summary, e.g. --servers tandem,tandem-auth "
        '--scenarios fanout,stress,rooms --only "fanout,stress,rooms 1000"',
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, short runs")
    parser.add_argument("--duration", type=float, help="seconds of traffic per case (60; quick 6)")
    parser.add_argument(
        "--warmup", type=float, help="seconds at the start of each case not measured (5; quick 2)"
    )
    parser.add_argument(
        "--persistence",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="Tandem's database in the main scenarios",
    )
    parser.add_argument(
        "--pg-admin",
        default=os.environ.get("BENCH_PG_ADMIN", DEFAULT_PG_ADMIN),
        help="libpq URL of a PostgreSQL server where scratch databases may be created and dropped",
    )
    parser.add_argument(
        "--tandem-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra TANDEM_* setting for every Tandem server (repeatable)",
    )
    parser.add_argument(
        "--gen-procs",
        type=int,
        default=1,
        help="load generator processes for the traffic scenarios (default 1: at most one core)",
    )
    parser.add_argument(
        "--only",
        default="",
        metavar="LABELS",
        help='comma separated starts of case labels to run, e.g. "fanout R=500,stress R=500 @30"',
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of every case (each server again, in a new order); tables show medians",
    )
    parser.add_argument(
        "--idle-size",
        type=pair,
        metavar="N,D",
        help="idle: N clients over D documents (8000,1000; quick 500,50)",
    )
    parser.add_argument(
        "--idle-window",
        type=float,
        help="idle: seconds measured with everyone connected and silent (20; quick 6)",
    )
    parser.add_argument(
        "--storm-size",
        type=pair,
        metavar="C,D",
        help="storm: C clients over D documents (2000,200; quick 200,20)",
    )
    parser.add_argument(
        "--storm-history",
        type=pair,
        metavar="L,U",
        help="storm: L of the documents built from U updates each first (10,5000; quick 2,1000)",
    )
    parser.add_argument("--node", default=shutil.which("node") or "node")
    parser.add_argument("--verbose", action="store_true", help="show the load generator's log")
    opts = parser.parse_args(argv)
    opts.scenarios = [s.strip() for s in opts.scenarios.split(",") if s.strip()]
    opts.servers = [s.strip() for s in opts.servers.split(",") if s.strip()]
    try:
        opts.tandem_env = dict(item.split("=", 1) for item in opts.tandem_env)
    except ValueError:
        parser.error("--tandem-env takes NAME=VALUE")
    unknown = set(opts.scenarios) - set(ALL_SCENARIOS) | set(opts.servers) - set(ALL_SERVERS)
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    if not (BENCH / "node_modules" / "yjs").is_dir():
        parser.error("run `npm ci` in bench/ first")

    soft, hard = raise_descriptor_limit()
    cases = plan(opts)
    for case in cases:
        # The generator holds a socket per client; Tandem takes two descriptors per WebSocket.
        need = 2 * case_clients(case) + 64
        if case.scenario in CONNECTION_SCENARIOS and need > soft:
            log(
                f"{case.label}: descriptor limit {soft} (hard {hard}) is below the ~{need} "
                "a server needs: expect refused connections (raise it with ulimit -Hn/-n)"
            )
    if opts.only:
        wanted = [w.strip() for w in opts.only.split(",") if w.strip()]
        cases = [c for c in cases if any(c.label.startswith(w) for w in wanted)]
        if not cases:
            parser.error(f"--only matches no case: {opts.only}")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{stamp}.jsonl"
    meta = {
        "type": "meta",
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "quick": opts.quick,
        "persistence": opts.persistence,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "descriptor_limit": {"soft": soft, "hard": hard},
        **versions(opts),
    }
    records: list[dict[str, Any]] = []
    started = time.monotonic()
    with path.open("w") as out:
        out.write(json.dumps(meta) + "\n")
        out.flush()
        rounds = [(i, r) for i in range(len(cases)) for r in range(max(1, opts.repeat))]
        for i, r in rounds:
            case = cases[i]
            for variant in rotate(case.servers, i + r):
                tag = f"{stamp.replace('-', '')}c{i}r{r}{variant.replace('-', '')}"
                log(f"{case.label}: {variant}" + (f" (round {r + 1})" if opts.repeat > 1 else ""))
                record = run_case(case, variant, tag, opts)
                record["round"] = r
                records.append(record)
                out.write(json.dumps(record) + "\n")
                out.flush()
                res = record["result"]
                summary = case_summary(case, res)
                log(
                    f"  {'ok' if res.get('ok') else 'NOT OK'}: {summary}"
                    + ("" if res.get("ok") else f" — {res.get('error', '')}")
                )
    elapsed = time.monotonic() - started

    main_cols = [column(s, opts.persistence) for s in ALL_SERVERS if s in opts.servers]
    plain, signed = column("tandem", opts.persistence), column(AUTH, opts.persistence)
    auth_pair = (plain, signed) if plain in main_cols and signed in main_cols else None
    main_records = [r for r in records if not r["scenario"].startswith("persist")]
    persist_records = [r for r in records if r["scenario"].startswith("persist")]
    print(
        f"\nResults: {path.relative_to(ROOT)} ({elapsed:.0f} s; load average at start "
        f"{' '.join(meta['loadavg_at_start'])})"
        + (f"; every figure is the median of {opts.repeat} rounds" if opts.repeat > 1 else "")
        + "\n"
    )
    if main_records:
        tandem_col = main_cols[0] if main_cols[0].startswith("tandem") else None
        refs = [c for c in main_cols if c in REFERENCES]
        print(table(main_records, main_cols, tandem_col if refs else None, refs, auth_pair))
        if auth_pair:
            print(
                f"\nSign-in: {signed} (TANDEM_SECRET set, every client with its own token) "
                f"against {plain}; * marks the figure each case is judged by (auth / no auth "
                f"at most {AUTH_LIMIT}); per round: the ratio in each round\n"
            )
            print(auth_summary(main_records, plain, signed))
    if persist_records:
        print(
            "\nPersistence: the same traffic, Tandem on SQLite, on PostgreSQL, and with its "
            "in memory only (memory://); beside them the reference servers (memory only) "
            "from the same traffic in the main scenarios, where it ran\n"
        )
        labels = {r["label"] for r in persist_records}
        same_traffic = [
            {**r, "label": f"persist {r['label']}"}
            for r in main_records
            if r["server"] in REFERENCES and f"persist {r['label']}" in labels
        ]
        refs = [c for c in REFERENCES if any(r["server"] == c for r in same_traffic)]
        columns = ["tandem-sqlite", "tandem-postgres", "tandem-memory", *refs]
        ratio = "tandem-memory" if refs else None
        print(table(persist_records + same_traffic, columns, ratio, refs))
    print(
        "\n(!) not ok: lost updates, dropped connections or errors; (g) the load generator could "
        "not keep its send rate or was busy > 90 % of the window (its figures are a lower bound)"
    )
    if any(r["scenario"] in CONNECTION_SCENARIOS for r in records):
        print(
            "idle: RSS per connection = (RSS all connected - RSS before) / accepted, documents "
            "included (Hocuspocus also closes a connection that sent no message for 60-120 s). "
            "storm: open -> step 2 = from a socket's open "
            "event to its first sync step 2, in the generator (its own work included); "
            f"descriptor limit {soft} (hard {hard}) for servers and generator"
        )
    failed = [r for r in records if not r["result"].get("ok")]
    if failed:
        print("\nNot ok (lost updates, dropped connections or errors):")
        for rec in failed:
            res = rec["result"]
            print(
                f"  {rec['label']} on {rec['server']}: lost={res.get('lost')} "
                f"closes={res.get('unexpected_closes')} {res.get('close_codes', '')} "
                f"{res.get('error', '')}"
            )
    return 1 if failed else 0


def case_summary(case: Case, res: dict[str, Any]) -> str:
    """One line on how a case went, for the log."""
    if case.scenario == "cold":
        return (
            f"whole document {fmt(dig(res, 'loaded.median_complete_ms'))} ms"
            f" (unloaded {fmt(dig(res, 'unloaded.median_complete_ms'))} ms)"
        )
    if case.scenario == "idle":
        return (
            f"{res.get('accepted')} accepted, {res.get('not_accepted')} not, "
            f"{fmt(res.get('rss_per_conn_kb'))} KB per connection, server CPU "
            f"{fmt(res.get('server_cpu_s'))} s idle, {res.get('pings_in_window')} pings"
        )
    if case.scenario == "storm":
        return (
            f"{res.get('synced')} synced, {res.get('refused')} refused, "
            f"{res.get('timed_out')} timed out; all synced in {fmt(res.get('all_synced_s'))} s, "
            f"open -> step 2 p50 {fmt(dig(res, 'open_to_step2.p50_ms'))} ms p95 "
            f"{fmt(dig(res, 'open_to_step2.p95_ms'))} ms, server CPU "
            f"{fmt(res.get('server_cpu_s'))} s"
        )
    return (
        f"p50 {fmt(dig(res, 'latency.p50_ms'))} ms, p99 "
        f"{fmt(dig(res, 'latency.p99_ms'))} ms, lost {res.get('lost')}, "
        f"server CPU {fmt(res.get('server_cpu_s'))} s, generator CPU "
        f"{fmt(res.get('gen_cpu_s'))} s"
    )


def run_case(case: Case, variant: str, tag: str, opts: argparse.Namespace) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "case",
        "scenario": case.scenario,
        "label": case.label,
        "server": variant,
        "params": case.args,
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
    }
    env = case.env if variant.startswith("tandem") else {}
    server = Server(variant, opts, env, tag, clients=case_clients(case))
    try:
        server.start()
        record["result"] = run_loadgen(server, case, tag, opts)
        if case.scenario in CONNECTION_SCENARIOS:
            record["result"]["ping_interval_s"] = server.ping_interval_s
        if server.is_tandem:
            state = server.tandem_state()
            record["tandem"] = state
            record["result"]["db_cpu_s"] = state.get("db_backend_cpu_s")
            record["result"]["uncommitted_at_end"] = state.get("readyz", {}).get("pending_updates")
    except Exception as exc:  # a failed start or database: record it and go on
        record["result"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        record["shutdown_s"] = server.stop()
        if not record["result"].get("ok"):
            record["server_log_tail"] = server.log_tail()
        server.cleanup()
    return record


if __name__ == "__main__":
    sys.exit(main())
