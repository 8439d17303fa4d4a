"""`tandem serve --workers N`: N server processes answering on one port.

The parent binds the listening socket once and starts N children, each a whole `tandem serve`
(its own event loop, rooms, broker, writer) that takes the socket over (`uvicorn.Server.run
(sockets=[...])`) instead of binding one. The processes share documents through Redis
(server/rooms/broker.py), so more than one needs TANDEM_REDIS_URL.

One socket shared by all, not SO_REUSEPORT with a socket per child, because on Linux:

- A SO_REUSEPORT group gives each socket its own accept queue and hashes every new
  connection to one of them. A connection queued at a child that is busy (a long merge on its
  event loop) waits for that child while others idle, and the connections queued at a child
  that dies, or is restarted, are reset. With one queue, whichever child is free takes the
  next connection, and a child going away loses none: the queue belongs to the socket, which
  the parent and the other children keep open.
- Any process of the same user may join a SO_REUSEPORT group on the port and silently take
  a share of the connections; a socket bound once cannot be joined.
- Binding happens once, in the parent, before any child starts: a port in use is one error
  and exit code, and port 0 means one port for all.

The price is that every idle child wakes for each new connection and the quickest accepts
it; with one child per core that is a handful of wake-ups, and a busy child, slower to wake,
takes fewer connections than idle ones, which is the balance wanted.

The children are new interpreters (`python -m server serve`), not forks: the parent starts
no event loop, thread or pool to leave half-copied. The parent's resolved settings reach them
as TANDEM_* variables (with `workers=1` and the bound port), and two descriptors through
`pass_fds`: the listening socket and one end of a socket pair to the parent. A child writes
one byte on it once its server has started (so the parent tells a failed start-up from a
later crash); when the parent is gone, even by SIGKILL, the child reads end-of-file and stops
itself (SIGTERM), so no child is left orphaned. Each child runs in its own process group:
Ctrl-C in a terminal reaches the parent alone, which passes it on once (two SIGINTs would
make a child skip its graceful shutdown).

The first child starts alone, and the others once it is serving: start-up migrates a SQLite
schema and seeds the demo workspace, and two processes doing that at once would collide.
"""

from __future__ import annotations

import json
import logging
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from server.settings import Settings

log = logging.getLogger("tandem")

# Set by the parent in each child's environment: "LISTEN_FD,CONTROL_FD".
FDS_VARIABLE = "TANDEM_WORKER_FDS"
# What a child writes on its control socket once its server has started.
READY = b"r"
# uvicorn's default listen backlog.
BACKLOG = 2048
# A child that exits unexpectedly is restarted after 1, 2, 4, ... seconds (at most
# RESTART_DELAY_MAX); one that exits more than RESTART_LIMIT times within RESTART_WINDOW
# seconds is a crash loop: the parent stops every child and exits 1.
RESTART_DELAY_MAX = 16.0
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0


def supervise(settings: Settings) -> int:
    """Run `settings.workers` server processes on one listening socket until a signal stops
    them. The exit code: 2 without Redis, 1 when the port cannot be bound, a child failed at
    start-up, kept crashing, or did not stop cleanly; 0 otherwise."""
    from server import logs

    if not settings.redis_url:
        print(
            f"tandem serve: --workers {settings.workers} needs TANDEM_REDIS_URL: "
            "processes share documents through Redis",
            file=sys.stderr,
        )
        return 2
    if settings.in_memory:
        print(
            f"tandem serve: --workers {settings.workers} needs a database the processes share; "
            "memory:// keeps each process's documents to itself",
            file=sys.stderr,
        )
        return 2
    logs.configure(settings.log_level, pid=True)
    try:
        listener = bind(settings.host, settings.port)
    except OSError as exc:
        print(
            f"tandem serve: cannot listen on {settings.host}:{settings.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    with listener:
        return Supervisor(settings, listener).run()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, as uvicorn would bind it itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def child_environment(settings: Settings, port: int) -> dict[str, str]:
    """This process's environment with every setting as resolved here (flags included), for
    one worker on `port`."""
    values: dict[str, Any] = {**settings.model_dump(), "workers": 1, "port": port}
    overrides: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            text = json.dumps(value)
        overrides[f"TANDEM_{name.upper()}"] = text
    # Settings match names case-insensitively: drop other spellings of the ones set here.
    env = {key: value for key, value in os.environ.items() if key.upper() not in overrides}
    env.pop(FDS_VARIABLE, None)
    return {**env, **overrides}


@dataclass
class Worker:
    """One child slot: the process in it now, and its history of unexpected exits."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    control: socket.socket | None = None
    ready: bool = False
    # Whether a process in this slot has ever started serving.
    served: bool = False
    restart_at: float | None = None
    exits: deque[float] = field(default_factory=deque)

    @property
    def running(self) -> bool:
        return self.proc is not None


class Supervisor:
    """Starts, watches, restarts and stops the children; single-threaded, woken by its
    children's control sockets and by signals (through `signal.set_wakeup_fd`)."""

    def __init__(self, settings: Settings, listener: socket.socket) -> None:
        self.listener: socket.socket | None = listener
        self.port: int = listener.getsockname()[1]
        self.env = child_environment(settings, self.port)
        self.workers = [Worker(index) for index in range(settings.workers)]
        self.selector = selectors.DefaultSelector()
        self.signals: list[int] = []
        self.stopping = False
        self.failed = False

    def run(self) -> int:
        wake_in, wake_out = socket.socketpair()
        wake_in.setblocking(False)
        wake_out.setblocking(False)
        self.selector.register(wake_in, selectors.EVENT_READ)
        previous_wakeup = signal.set_wakeup_fd(wake_out.fileno())
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            log.info(
                "tandem starting %d worker processes on port %d",
                len(self.workers),
                self.port,
            )
            self._spawn(self.workers[0])
            self._loop(wake_in)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_wakeup)
            self.selector.close()
            wake_in.close()
            wake_out.close()
            for worker in self.workers:  # only after an unexpected error in the loop
                if worker.proc is not None and worker.proc.poll() is None:
                    worker.proc.kill()
                    worker.proc.wait()
        log.info("tandem workers stopped")
        return 1 if self.failed else 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals.append(signum)

    def _loop(self, wake: socket.socket) -> None:
        while True:
            while self.signals:
                self._stop(self.signals.pop(0))
            if self.stopping and not any(worker.running for worker in self.workers):
                return
            if not self.stopping:
                self._start_due()
            for key, _events in self.selector.select(self._timeout()):
                if key.fileobj is wake:
                    try:
                        while wake.recv(64):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    self._on_control(key.data)
            for worker in self.workers:  # in case an end-of-file went unseen
                if worker.proc is not None and worker.proc.poll() is not None:
                    self._exited(worker)

    def _timeout(self) -> float:
        due = [w.restart_at for w in self.workers if w.restart_at is not None]
        if not due or self.stopping:
            return 1.0
        return max(0.0, min(1.0, min(due) - time.monotonic()))

    def _start_due(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.restart_at is not None and worker.restart_at <= now:
                worker.restart_at = None
                self._spawn(worker)

    def _spawn(self, worker: Worker) -> None:
        assert self.listener is not None
        mine, theirs = socket.socketpair()
        env = {**self.env, FDS_VARIABLE: f"{self.listener.fileno()},{theirs.fileno()}"}
        try:
            worker.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(self.listener.fileno(), theirs.fileno()),
                process_group=0,
            )
        finally:
            theirs.close()
        worker.control = mine
        worker.ready = False
        self.selector.register(mine, selectors.EVENT_READ, worker)
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    def _on_control(self, worker: Worker) -> None:
        assert worker.control is not None and worker.proc is not None
        try:
            data = worker.control.recv(64)
        except OSError:
            data = b""
        if data:
            if READY in data and not worker.ready:
                worker.ready = worker.served = True
                log.info("worker %d serving (pid %d)", worker.index, worker.proc.pid)
                if worker.index == 0 and not self.stopping:
                    for other in self.workers[1:]:
                        if not other.running and other.restart_at is None:
                            self._spawn(other)
            return
        # End of file: the child has exited, or is about to.
        try:
            worker.proc.wait(10)
        except subprocess.TimeoutExpired:
            log.error(
                "worker %d (pid %d) closed its control socket; killing it",
                worker.index,
                worker.proc.pid,
            )
            worker.proc.kill()
            worker.proc.wait()
        self._exited(worker)

    def _exited(self, worker: Worker) -> None:
        assert worker.proc is not None
        proc, ready = worker.proc, worker.ready
        code = proc.returncode
        if worker.control is not None:
            self.selector.unregister(worker.control)
            worker.control.close()
        worker.proc, worker.control, worker.ready = None, None, False
        if self.stopping:
            if code != 0:
                self.failed = True
                log.error("worker %d (pid %d) %s", worker.index, proc.pid, _describe(code))
            return
        if not ready and not worker.served and not worker.exits:
            # The slot's first start-up failed: so will the next ones, most likely.
            log.error(
                "worker %d (pid %d) %s at start-up; stopping",
                worker.index,
                proc.pid,
                _describe(code),
            )
            self.failed = True
            self._stop(signal.SIGTERM)
            return
        now = time.monotonic()
        worker.exits.append(now)
        while worker.exits and worker.exits[0] < now - RESTART_WINDOW:
            worker.exits.popleft()
        if len(worker.exits) > RESTART_LIMIT:
            log.error(
                "worker %d (pid %d) %s, the %d. time in %d s; giving up and stopping",
                worker.index,
                proc.pid,
                _describe(code),
                len(worker.exits),
                RESTART_WINDOW,
            )
            self.failed = True
            self._stop(signal.SIGTERM)
            return
        delay = min(RESTART_DELAY_MAX, 2.0 ** (len(worker.exits) - 1))
        worker.restart_at = now + delay
        log.warning(
            "worker %d (pid %d) %s unexpectedly; restarting it in %g s",
            worker.index,
            proc.pid,
            _describe(code),
            delay,
        )

    def _stop(self, signum: int) -> None:
        """Pass a SIGTERM or SIGINT on to every child (again on each signal: a second SIGINT
        makes them skip the graceful shutdown)."""
        if not self.stopping:
            self.stopping = True
            log.info("tandem workers stopping (%s)", signal.Signals(signum).name)
            for worker in self.workers:
                worker.restart_at = None
            # The children keep serving what they hold; new connections are nobody's now.
            if self.listener is not None:
                self.listener.close()
                self.listener = None
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signum)


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def attach(server: Any) -> list[socket.socket] | None:
    """In a worker: the listening socket its parent bound, and a thread that tells the
    parent once `server` has started and stops this process when the parent is gone.
    None in a process that is not a worker (it binds its own socket)."""
    value = os.environ.pop(FDS_VARIABLE, None)
    if not value:
        return None
    listen_fd, control_fd = (int(part) for part in value.split(","))
    listener = socket.socket(fileno=listen_fd)
    control = socket.socket(fileno=control_fd)
    for sock in (listener, control):
        sock.set_inheritable(False)
    threading.Thread(
        target=_watch_parent, args=(server, control), name="tandem-worker", daemon=True
    ).start()
    return [listener]


def _watch_parent(server: Any, control: socket.socket) -> None:
    while not server.started:
        readable, _, _ = select.select([control], [], [], 0.05)
        if readable and not control.recv(64):
            break
    else:
        control.sendall(READY)
        while control.recv(64):
            pass
    # End of file: the parent has exited.
    log.warning("the parent process is gone; stopping")
    os.kill(os.getpid(), signal.SIGTERM)
