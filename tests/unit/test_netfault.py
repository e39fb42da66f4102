"""The network fault proxy (tests/netfault.py) against plain sockets: rates, delays, resets."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from flotilla.fl.tls import client_context
from flotilla.local.tls import write_local_tls
from tests.netfault import Direction, Link, NetFault, RandomResets, ResetAt

Handler = Callable[[socket.socket], None]


@contextmanager
def serving(handler: Handler, *, tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """A TCP server on 127.0.0.1 running `handler` per connection in a thread; its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            if tls is not None:
                conn = tls.wrap_socket(conn, server_side=True)
            threading.Thread(target=_run, args=(handler, conn), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


def _run(handler: Handler, conn: socket.socket) -> None:
    with conn, suppress(OSError):
        handler(conn)


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


class Sink:
    """Reads a connection to its end: bytes, first and last arrival, how it ended."""

    def __init__(self) -> None:
        self.got = 0
        self.first = self.last = 0.0
        self.error: OSError | None = None
        self.ended = threading.Event()

    def __call__(self, conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                self.last = time.monotonic()
                self.first = self.first or self.last
                self.got += len(data)
        except OSError as error:
            self.error = error
        finally:
            self.ended.set()


def source(size: int) -> Handler:
    def send(conn: socket.socket) -> None:
        conn.sendall(b"d" * size)

    return send


def read_all(conn: socket.socket) -> tuple[int, float, float, OSError | None]:
    """(bytes, first arrival, last arrival, the error that ended it or None at EOF)."""
    got, first, last = 0, 0.0, 0.0
    try:
        while data := conn.recv(65536):
            last = time.monotonic()
            first = first or last
            got += len(data)
    except OSError as error:
        return got, first, last, error
    return got, first, last, None


def dial(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


SIZE = 400_000


def test_an_upload_arrives_at_the_capped_rate() -> None:
    sink = Sink()
    with serving(sink) as port, NetFault(port, up=Link(rate=200_000)) as proxy:
        with dial(proxy.port) as conn:
            conn.sendall(b"u" * SIZE)
        assert sink.ended.wait(10)

    rate = sink.got / (sink.last - sink.first)
    assert sink.got == SIZE
    assert 0.8 * 200_000 <= rate <= 1.2 * 200_000


def test_a_download_arrives_at_the_capped_rate_while_the_other_way_is_free() -> None:
    with (
        serving(source(SIZE)) as port,
        NetFault(port, up=Link(rate=1000), down=Link(rate=400_000)) as proxy,
        dial(proxy.port) as conn,
    ):
        got, first, last, error = read_all(conn)

    assert (got, error) == (SIZE, None)
    assert 0.8 * 400_000 <= got / (last - first) <= 1.2 * 400_000


def test_each_direction_adds_its_delay_to_a_round_trip() -> None:
    with (
        serving(echo) as port,
        NetFault(port, up=Link(delay=0.05), down=Link(delay=0.1)) as proxy,
        dial(proxy.port) as conn,
    ):
        trips = []
        for _ in range(3):
            started = time.monotonic()
            conn.sendall(b"ping")
            assert conn.recv(16) == b"ping"
            trips.append(time.monotonic() - started)

    assert 0.15 <= min(trips) < 0.25


def test_link_of_speaks_in_mbit_and_round_trips() -> None:
    assert Link.of(mbit=20, rtt_ms=100) == Link(rate=2_500_000, delay=0.05)


@pytest.mark.parametrize("direction", ["up", "down"])
def test_a_reset_at_an_offset_delivers_exactly_that_many_bytes_then_a_reset(
    direction: str,
) -> None:
    sink = Sink()
    handler = sink if direction == "up" else source(100_000)
    plan = ResetAt(offset=12_345, direction="up" if direction == "up" else "down")
    with serving(handler) as port, NetFault(port, resets=plan) as proxy:
        with dial(proxy.port) as conn:
            if direction == "up":
                with pytest.raises(ConnectionResetError):
                    conn.sendall(b"u" * 100_000)
                    conn.recv(1)  # the reset reaches the sender too
                assert sink.ended.wait(10)
                got, error = sink.got, sink.error
            else:
                got, _, _, error = read_all(conn)
        stats = proxy.stats()

    assert got == 12_345
    assert isinstance(error, ConnectionResetError)
    assert (stats.resets, stats.peer_resets) == (1, 0)
    assert stats.reset_at == [(0, direction, 12_345)]


def test_a_reset_of_one_connection_leaves_the_others_whole() -> None:
    with (
        serving(source(50_000)) as port,
        NetFault(port, resets=ResetAt(offset=1000, direction="down", connection=1)) as proxy,
    ):
        outcomes = []
        for _ in range(3):
            with dial(proxy.port) as conn:
                got, _, _, error = read_all(conn)
                outcomes.append((got, type(error).__name__))
        stats = proxy.stats()

    assert outcomes == [(50_000, "NoneType"), (1000, "ConnectionResetError"), (50_000, "NoneType")]
    assert (stats.connections, stats.down) == (3, 101_000)


def _random_run(seed: int) -> list[tuple[int, Direction, int]]:
    resets = RandomResets(seed=seed, probability=0.5, max_offset=50_000)
    with serving(echo) as port, NetFault(port, resets=resets) as proxy:
        for _ in range(8):
            with dial(proxy.port) as conn:
                sender = threading.Thread(target=_send_quietly, args=(conn, 60_000))
                sender.start()
                read_all_until(conn, 60_000)
                sender.join(10)
        return proxy.stats().reset_at


def _send_quietly(conn: socket.socket, size: int) -> None:
    with suppress(OSError):
        conn.sendall(b"e" * size)


def read_all_until(conn: socket.socket, size: int) -> None:
    got = 0
    with suppress(OSError):
        while got < size and (data := conn.recv(65536)):
            got += len(data)


def test_seeded_random_resets_hit_the_same_connections_at_the_same_offsets() -> None:
    first, again, other = _random_run(7), _random_run(7), _random_run(8)

    planned = RandomResets(seed=7, probability=0.5, max_offset=50_000)
    expected = [(n, *plan) for n in range(8) if (plan := planned.plan(n))]
    assert 0 < len(first) < 8
    assert sorted(first) == sorted(again) == expected
    assert sorted(other) != sorted(first)


def test_tls_passes_through_untouched(tmp_path: Path) -> None:
    files = write_local_tls(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.cert, files.key)
    with (
        serving(echo, tls=server) as port,
        NetFault(port, up=Link(rate=100_000, delay=0.01)) as proxy,
        client_context(ca_file=files.ca).wrap_socket(
            dial(proxy.port), server_hostname="127.0.0.1"
        ) as conn,
    ):
        conn.sendall(b"secret" * 1000)
        got = b""
        while len(got) < 6000:
            got += conn.recv(65536)
        stats = proxy.stats()

    assert got == b"secret" * 1000
    assert stats.up > 6000 and stats.down > 6000  # handshake and records, opaque


def test_a_cut_resets_live_and_new_connections_until_healed() -> None:
    with serving(echo) as port, NetFault(port) as proxy:
        live = dial(proxy.port)
        live.sendall(b"a")
        assert live.recv(1) == b"a"

        proxy.cut("reset")

        with pytest.raises(ConnectionResetError):
            live.recv(1)
        # reset at connect (loopback is that fast) or at once after
        with pytest.raises(ConnectionResetError), dial(proxy.port) as fresh:
            fresh.recv(1)
        proxy.heal()
        with dial(proxy.port) as healed:
            healed.sendall(b"b")
            assert healed.recv(1) == b"b"
        assert proxy.stats().resets == 2
        live.close()


def test_a_blackhole_answers_nothing_and_healing_resets_what_it_swallowed() -> None:
    with serving(echo) as port, NetFault(port) as proxy:
        conn = dial(proxy.port)
        proxy.cut("blackhole")
        conn.sendall(b"lost")
        conn.settimeout(0.3)
        with pytest.raises(TimeoutError):
            conn.recv(1)

        proxy.heal()

        conn.settimeout(10)
        with pytest.raises(ConnectionResetError):
            conn.recv(1)
        conn.close()


def test_close_resets_open_connections_and_returns_at_once() -> None:
    with serving(echo) as port:
        proxy = NetFault(port, down=Link(rate=1000)).start()
        conn = dial(proxy.port)
        conn.sendall(b"x" * 100_000)  # the slow way back holds it open
        started = time.monotonic()

        proxy.close()

        assert time.monotonic() - started < 3
        *_, error = read_all(conn)
        assert isinstance(error, ConnectionResetError)
        conn.close()


def test_a_link_changed_while_connections_run_applies_to_them() -> None:
    with (
        serving(source(SIZE)) as port,
        NetFault(port, down=Link(rate=50_000)) as proxy,
        dial(proxy.port) as conn,
    ):
        got = 0
        while got < 50_000:
            got += len(conn.recv(65536))
        proxy.set_links(down=Link())
        started = time.monotonic()
        rest, *_ = read_all(conn)

    assert got + rest == SIZE
    assert time.monotonic() - started < 1  # 350 KB more: 7 s at the old rate
