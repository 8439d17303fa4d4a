"""The room's direct writes: what each socket took, and what is handed to the transport."""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import Iterator

import pytest

from server.descriptors import raise_limit
from server.rooms.fanout import Fanout, write_all
from server.rooms.peer import Peer
from server.rooms.room import Room


class Transport:
    """Records what the peer hands to its transport instead of the socket."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.aborted

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.written))

    def abort(self) -> None:
        self.aborted = True


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for ours, theirs in made:
        ours.close()
        theirs.close()


def pair(made: list[tuple[socket.socket, socket.socket]]) -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    made.append((ours, theirs))
    return ours, theirs


def fill(sock: socket.socket) -> None:
    """Write until the socket takes nothing more."""
    chunk = b"\0" * 65536
    while True:
        try:
            sock.send(chunk)
        except BlockingIOError:
            return


def drain(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not data:
            return out
        out += data


_direct_peers: list[Peer] = []


@pytest.fixture(autouse=True)
def release_direct_peers() -> Iterator[None]:
    """Close every descriptor a test's peers still hold (release is idempotent)."""
    yield
    while _direct_peers:
        _direct_peers.pop().release()


def direct_peer(ours: socket.socket) -> tuple[Peer, Transport]:
    transport = Transport()
    peer = Peer(transport, fd=os.dup(ours.fileno()))
    _direct_peers.append(peer)
    return peer, transport


@pytest.mark.parametrize("healthy_after", [1, 8], ids=["few: a loop", "many: map"])
def test_write_all_reports_each_socket_in_order_and_goes_on_after_errors(
    pairs: list[tuple[socket.socket, socket.socket]], healthy_after: int
) -> None:
    ok1, peer1 = pair(pairs)
    full, _ = pair(pairs)
    broken, gone = pair(pairs)
    after = [pair(pairs) for _ in range(healthy_after)]
    fill(full)
    gone.close()
    frame = b"\x82\x03abc"
    fds = (ok1.fileno(), full.fileno(), broken.fileno(), *(ours.fileno() for ours, _ in after))

    written = write_all(fds, frame)

    assert len(written) == len(fds)
    assert written[0] == len(frame) and written[3:] == [len(frame)] * healthy_after
    assert isinstance(written[1], BlockingIOError)
    assert isinstance(written[2], BrokenPipeError)
    assert drain(peer1) == frame
    assert all(drain(theirs) == frame for _, theirs in after)


def test_fanout_writes_to_sockets_and_hands_the_rest_to_transports(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    ours_a, theirs_a = pair(pairs)
    ours_b, _ = pair(pairs)
    ours_c, theirs_c = pair(pairs)
    fill(ours_b)
    a, ta = direct_peer(ours_a)
    b, tb = direct_peer(ours_b)  # its socket is full: the frame goes to its transport
    c, tc = direct_peer(ours_c)
    c.backed_up(True)  # its transport holds bytes already: it gets frames through it
    buffered = Peer(Transport())  # no descriptor: always through its transport
    fanout = Fanout([a, b, c, buffered])
    frame = b"\x82\x02hi"

    fanout.send(frame)

    assert fanout.size == 4
    assert drain(theirs_a) == frame and ta.written == []
    assert tb.written == [frame]
    assert drain(theirs_c) == b"" and tc.written == [frame]
    assert buffered.transport.written == [frame]  # type: ignore[attr-defined]


def test_a_frame_the_socket_took_in_part_continues_in_the_transport(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    ours, theirs = pair(pairs)
    peer, transport = direct_peer(ours)
    frame = bytes(range(256)) * 40_000  # far more than a socket buffer holds

    Fanout([peer]).send(frame)

    took = drain(theirs)
    assert 0 < len(took) < len(frame)
    assert took + b"".join(transport.written) == frame


def test_a_broken_connection_is_cut_and_the_others_still_get_the_frame(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    ours_a, theirs_a = pair(pairs)
    ours_b, theirs_b = pair(pairs)
    theirs_a.close()
    a, ta = direct_peer(ours_a)
    b, _ = direct_peer(ours_b)

    Fanout([a, b]).send(b"\x82\x01x")

    assert a.closed and ta.aborted
    assert drain(theirs_b) == b"\x82\x01x"


def test_closed_peers_are_left_out_and_release_closes_the_descriptor_once(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    ours, _ = pair(pairs)
    peer, _ = direct_peer(ours)
    fd = peer.fd
    assert fd is not None
    peer.closed = True
    assert Fanout([peer]).size == 0

    peer.release()
    peer.release()

    assert peer.fd is None
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_room_writes_to_joined_sockets_and_closes_the_descriptor_on_leave(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    room = Room("fanout-room", lambda *_: None)
    ours_a, theirs_a = pair(pairs)
    ours_b, theirs_b = pair(pairs)
    a, _ = direct_peer(ours_a)
    b, _ = direct_peer(ours_b)
    room.join(a)
    room.join(b)
    drain(theirs_a), drain(theirs_b)  # the greetings

    room.broadcast(b"\x82\x01y", exclude=a)
    room.leave(b)
    room.broadcast(b"\x82\x01z")

    assert drain(theirs_a) == b"\x82\x01z"
    assert drain(theirs_b) == b"\x82\x01y"
    assert b.fd is None and a.fd is not None
    room.leave(a)
    assert a.fd is None


def test_serve_raises_the_soft_descriptor_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard) if hard != resource.RLIM_INFINITY else 256
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        raise_limit()
        raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert raised == hard or (hard == resource.RLIM_INFINITY and raised >= low)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
