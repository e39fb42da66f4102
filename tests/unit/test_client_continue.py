"""The client's uploads with `Expect: 100-continue` (client/continued.py), against a server
double on a real socket that records every byte it is sent: the body leaves only when it
is asked for; a refusal before it is read and raised; a server that never asks is sent the
body once the client's patience runs out. The real aggregator's side is
tests/unit/test_upload_continue.py."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flotilla.fl.certs import make_tls
from flotilla.fl.client.transport import (
    AggregatorConnection,
    AggregatorRefused,
    AggregatorUnavailable,
    Backoff,
)
from flotilla.fl.tls import client_context, server_context

BODY = memoryview(bytes(range(256)) * 64)  # 16 KiB


@dataclass
class Seen:
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    connections: int = 0


def _answer(status: int, payload: dict[str, object]) -> bytes:
    data = json.dumps(payload).encode()
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def _read_head(conn: socket.socket) -> bytes:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = conn.recv(1)
        if not byte:
            break
        head += byte
    return head


def _read_body(conn: socket.socket, size: int) -> bytes:
    body = b""
    while len(body) < size:
        piece = conn.recv(size - len(body))
        if not piece:
            break
        body += piece
    return body


Behaviour = Callable[[socket.socket, bytes, Seen], None]


TLS = make_tls(common_name="aggregator", ip_addresses=["127.0.0.1"])


def _server_tls(tmp: Path) -> ssl.SSLContext:
    (tmp / "tls.crt").write_text(TLS.cert)
    (tmp / "tls.key").write_text(TLS.key)
    return server_context(tmp / "tls.crt", tmp / "tls.key")


@contextmanager
def double(behaviour: Behaviour, *, tls: bool = False) -> Iterator[tuple[str, Seen]]:
    """A server on 127.0.0.1 that reads each request's head and hands it to `behaviour`;
    with `tls`, over TLS with a certificate of the `TLS` CA."""
    seen = Seen()
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    with tempfile.TemporaryDirectory() as tmp:
        context = _server_tls(Path(tmp)) if tls else None

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
                if context is not None:
                    conn = context.wrap_socket(conn, server_side=True)
            except OSError:
                return
            seen.connections += 1
            with conn, contextlib.suppress(OSError):  # a client that hung up mid-answer
                conn.settimeout(10)
                while head := _read_head(conn):
                    seen.heads.append(head)
                    behaviour(conn, head, seen)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.getsockname()[1]}", seen
    finally:
        server.shutdown(socket.SHUT_RDWR)  # wakes the accept; the thread ends its connection
        server.close()
        thread.join(timeout=10)


def _size(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def _asks_then_accepts(conn: socket.socket, head: bytes, seen: Seen) -> None:
    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    seen.bodies.append(_read_body(conn, _size(head)))
    conn.sendall(_answer(200, {"accepted": True}))


def _connection(url: str, *, timeout: float = 10.0) -> AggregatorConnection:
    trust = client_context(ca_data=TLS.ca) if url.startswith("https") else None
    return AggregatorConnection(
        url, "t0ken", timeout=timeout, backoff=Backoff(give_up_after=5), ssl_context=trust
    )


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_the_body_leaves_once_asked_for_and_the_connection_is_kept(tls: bool) -> None:
    with double(_asks_then_accepts, tls=tls) as (url, seen):
        connection = _connection(url)
        first = connection.upload("/v1/rounds/1/update", BODY, {"X-Flotilla-Examples": "1"})
        second = connection.upload("/v1/rounds/2/update", BODY, {"X-Flotilla-Examples": "1"})
        connection.close()
    assert first == second == {"accepted": True}
    assert all(b"expect: 100-continue" in head.lower() for head in seen.heads)
    assert seen.bodies == [bytes(BODY), bytes(BODY)]
    assert seen.connections == 1


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_refusal_before_the_body_is_raised_and_no_body_is_sent(tls: bool) -> None:
    def refuses(conn: socket.socket, head: bytes, seen: Seen) -> None:
        conn.sendall(_answer(409, {"error": "round 7 is not open", "reason": "round_closed"}))
        conn.settimeout(0.5)  # the client hangs up; anything it sent first is recorded
        try:
            seen.bodies.append(conn.recv(1 << 20))
        except TimeoutError:
            seen.bodies.append(b"(timed out)")

    with double(refuses, tls=tls) as (url, seen):
        connection = _connection(url)
        with pytest.raises(AggregatorRefused) as refused:
            connection.upload("/v1/rounds/7/update", BODY, {})
        connection.close()
    assert (refused.value.status, refused.value.reason) == (409, "round_closed")
    assert seen.bodies == [b""], "the client sent body bytes, or kept the connection open"


def test_the_connection_after_an_early_refusal_carries_the_next_request() -> None:
    answers = iter([_answer(409, {"error": "no", "reason": "round_closed"})])

    def refuses_once(conn: socket.socket, head: bytes, seen: Seen) -> None:
        early = next(answers, None)
        if early is None:
            _asks_then_accepts(conn, head, seen)
        else:
            conn.sendall(early)

    with double(refuses_once) as (url, seen):
        connection = _connection(url)
        with pytest.raises(AggregatorRefused):
            connection.upload("/v1/rounds/7/update", BODY, {})
        accepted = connection.upload("/v1/rounds/1/update", BODY, {})
        connection.close()
    assert accepted == {"accepted": True}
    assert seen.bodies == [bytes(BODY)]
    assert seen.connections == 2


def test_a_server_that_never_asks_is_sent_the_body_after_the_patience() -> None:
    """A proxy that drops the expectation: the body goes after the client's timeout, and
    the final answer is read as usual."""

    def silent(conn: socket.socket, head: bytes, seen: Seen) -> None:
        started = time.monotonic()
        seen.bodies.append(_read_body(conn, _size(head)))
        seen.heads.append(f"waited {time.monotonic() - started:.2f}".encode())
        conn.sendall(_answer(200, {"accepted": True}))

    with double(silent) as (url, seen):
        connection = _connection(url, timeout=0.3)
        accepted = connection.upload("/v1/rounds/1/update", BODY, {})
        connection.close()
    assert accepted == {"accepted": True}
    assert seen.bodies == [bytes(BODY)]
    waited = float(seen.heads[-1].split()[1])
    assert waited >= 0.25, f"the body came {waited:.2f}s after the head, before the patience"


def test_interim_headers_and_a_late_100_after_the_body_are_skipped() -> None:
    """A 100 with headers of its own is read to its end; a final answer preceded by
    another 100 (a server that asks late) is read as usual."""

    def chatty(conn: socket.socket, head: bytes, seen: Seen) -> None:
        conn.sendall(b"HTTP/1.1 100 Continue\r\nX-Note: go\r\n\r\n")
        seen.bodies.append(_read_body(conn, _size(head)))
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" + _answer(200, {"accepted": True}))

    with double(chatty) as (url, seen):
        connection = _connection(url)
        accepted = connection.upload("/v1/rounds/1/update", BODY, {})
        connection.close()
    assert accepted == {"accepted": True}
    assert seen.bodies == [bytes(BODY)]


def test_a_client_with_over_a_thousand_files_open_still_waits_for_the_100() -> None:
    """select.select refuses descriptors past 1023; the wait must not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"this machine's hard open-files limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    held = []
    try:
        with double(_asks_then_accepts) as (url, seen):
            while not held or held[-1] < 1100:
                held.append(os.dup(0))
            connection = _connection(url)
            accepted = connection.upload("/v1/rounds/1/update", BODY, {})
            connection.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert accepted == {"accepted": True}
    assert seen.bodies == [bytes(BODY)]


def test_an_interim_answer_with_endless_headers_is_refused_not_read_for_ever() -> None:
    def endless(conn: socket.socket, head: bytes, seen: Seen) -> None:
        conn.sendall(b"HTTP/1.1 100 Continue\r\n" + b"X-More: yes\r\n" * 200)
        seen.bodies.append(b"")

    with double(endless) as (url, _):
        connection = AggregatorConnection(
            url,
            "t0ken",
            timeout=5,
            backoff=Backoff(give_up_after=1e-6),  # its first error
        )
        with pytest.raises(AggregatorUnavailable, match="over 100 headers"):
            connection.upload("/v1/rounds/1/update", BODY, {})
        connection.close()
