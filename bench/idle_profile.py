"""What one idle WebSocket costs Tandem: RSS and Python allocations, itemised.

    .venv/bin/python bench/idle_profile.py [--clients 1000] [--docs 100]

Starts `tandem serve` (in memory, so no database work) with tracemalloc on, connects the
clients from a second process (each sends sync step 1 and reads the greeting, as a stock
client does, then idles), and compares the server's memory before and after: RSS per
connection, Python's traced allocations per connection, and the allocation sites that hold
them (grouped by file and line), so that a reader sees where the bytes go.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SYNC_STEP_1_EMPTY = bytes([0, 0, 1, 0])  # sync, step 1, an empty state vector


def serve(port: int, dump_dir: str) -> None:
    """The server process: tracemalloc on; SIGUSR1 dumps a snapshot to dump_dir/N.snap."""
    tracing = os.environ.get("IDLE_PROFILE_TRACE", "1") == "1"
    if tracing:
        tracemalloc.start(int(os.environ.get("IDLE_PROFILE_FRAMES", "12")))
    count = 0

    def dump(_signum: int, _frame: object) -> None:
        nonlocal count
        count += 1
        if os.environ.get("IDLE_PROFILE_COLLECT"):
            import gc

            gc.collect()
        if tracing:
            tracemalloc.take_snapshot().dump(os.path.join(dump_dir, f"{count}.snap"))
        Path(dump_dir, f"{count}.done").touch()

    signal.signal(signal.SIGUSR1, dump)
    sys.path.insert(0, str(ROOT))
    from server.cli import main

    sys.exit(main(["serve", "--port", str(port), "--database-url", "memory://"]))


async def clients(port: int, count: int, docs: int, hold: float) -> None:
    """The client process: `count` idle connections, opened 100 at a time."""
    import websockets

    opened = []
    for start in range(0, count, 100):
        batch = [
            websockets.connect(
                f"ws://127.0.0.1:{port}/ws/idle-{i % docs}",
                ping_interval=None,
                max_size=None,
            )
            for i in range(start, min(start + 100, count))
        ]
        for ws in await asyncio.gather(*batch):
            await ws.send(SYNC_STEP_1_EMPTY)
            opened.append(ws)
        await asyncio.sleep(0.05)
    for ws in opened:
        await ws.recv()  # the greeting: sync step 1 (and step 2 answers come after)
    if count > 1:
        print(f"{len(opened)} connected", flush=True)
    await asyncio.sleep(hold)
    for ws in opened:
        await ws.close()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def snapshot(pid: int, dump_dir: str, n: int) -> tracemalloc.Snapshot | None:
    os.kill(pid, signal.SIGUSR1)
    done = Path(dump_dir, f"{n}.done")
    while not done.exists():
        time.sleep(0.05)
    path = os.path.join(dump_dir, f"{n}.snap")
    return tracemalloc.Snapshot.load(path) if os.path.exists(path) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--rss-only",
        action="store_true",
        help="no tracemalloc: RSS as in production, without the itemised allocations",
    )
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--connect", type=int, metavar="PORT", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve:
        serve(int(opts.serve[0]), opts.serve[1])
        return
    if opts.connect:
        asyncio.run(clients(opts.connect, opts.clients, opts.docs, hold=3600))
        return

    port = free_port()
    with tempfile.TemporaryDirectory() as dump_dir:
        env = {
            **os.environ,
            "TANDEM_LOG_LEVEL": "warning",
            "IDLE_PROFILE_TRACE": "0" if opts.rss_only else "1",
        }
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port), dump_dir], env=env
        )
        try:
            deadline = time.monotonic() + 180  # tracemalloc makes imports slow
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            # A first connection and its room, so that what is loaded once is not counted.
            asyncio.run(clients(port, 1, 1, hold=0.5))
            time.sleep(1.0)
            before = snapshot(server.pid, dump_dir, 1)
            rss_before = rss_kb(server.pid)
            client = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--connect",
                    str(port),
                    "--clients",
                    str(opts.clients),
                    "--docs",
                    str(opts.docs),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert client.stdout is not None
            print(client.stdout.readline().strip())
            time.sleep(3.0)  # greetings answered, rooms settled
            after = snapshot(server.pid, dump_dir, 2)
            rss_after = rss_kb(server.pid)
            client.terminate()
            report(before, after, rss_before, rss_after, opts.clients, opts.docs, opts.top)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)


def report(
    before: tracemalloc.Snapshot | None,
    after: tracemalloc.Snapshot | None,
    rss_before: int,
    rss_after: int,
    n: int,
    docs: int,
    top: int,
) -> None:
    print(
        f"\n{n} idle connections over {docs} documents"
        + ("" if after is None else " (tracemalloc on: RSS includes its own bookkeeping)")
        + f"\nRSS: {rss_before / 1024:.1f} MiB -> {rss_after / 1024:.1f} MiB, "
        f"{(rss_after - rss_before) / n:.2f} KB per connection"
    )
    if before is None or after is None:
        return
    stats = after.compare_to(before, "lineno")
    traced = sum(s.size_diff for s in stats)
    print(f"Python allocations (traced): {traced / 1024 / n:.2f} KB per connection\n")
    print(f"{'bytes/conn':>10} {'blocks/conn':>11}  where")
    for stat in sorted(stats, key=lambda s: s.size_diff, reverse=True)[:top]:
        frame = stat.traceback[0]
        where = f"{os.path.relpath(frame.filename, ROOT)}:{frame.lineno}"
        if where.startswith(".venv/lib/python3.11/site-packages/"):
            where = where[len(".venv/lib/python3.11/site-packages/") :]
        print(f"{stat.size_diff / n:10.0f} {stat.count_diff / n:11.1f}  {where}")


if __name__ == "__main__":
    main()
