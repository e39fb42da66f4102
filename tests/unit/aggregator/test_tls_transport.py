"""The aggregator's HTTPS server over non-blocking ssl.SSLSockets (tls_transport.py): a real
aiohttp app on 127.0.0.1, real TLS clients in threads."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from flotilla.fl.aggregator.tls_transport import TlsServer, serve_tls
from flotilla.fl.tls import client_context, server_context
from flotilla.local.tls import write_local_tls

BIG = bytes(range(256)) * (32 << 10)  # 8 MiB


def _app(made: list[object]) -> web.Application:
    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(BIG)
        await response.prepare(request)
        for start in range(0, len(BIG), 1 << 20):
            await response.write(BIG[start : start + (1 << 20)])
        await response.write_eof()
        return response

    async def digest(request: web.Request) -> web.Response:
        sha = hashlib.sha256()
        slow = "slow" in request.query
        async for piece in request.content.iter_any():
            sha.update(piece)
            if slow:  # the body backs up: aiohttp pauses reading, then resumes
                await asyncio.sleep(0.002)
        return web.Response(text=sha.hexdigest())

    async def connections(request: web.Request) -> web.Response:
        return web.Response(text=str(len(made)))

    app = web.Application(client_max_size=1 << 30)
    app.router.add_get("/big", big)
    app.router.add_put("/digest", digest)
    app.router.add_get("/connections", connections)
    return app


class Served:
    def __init__(self, server: TlsServer, trust: ssl.SSLContext) -> None:
        self.server, self.trust = server, trust
        self.port = server.address[1]

    def https(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.trust, timeout=20)


async def _serving(tmp_path: Path, *, handshake_seconds: float = 60.0) -> AsyncIterator[Served]:
    pki = write_local_tls(tmp_path / "tls")
    made: list[object] = []
    runner = web.AppRunner(_app(made), access_log=None)
    await runner.setup()
    assert runner.server is not None
    factory = runner.server

    def protocol() -> Any:
        made.append(None)
        return factory()

    server = serve_tls(
        protocol,
        server_context(pki.cert, pki.key),
        "127.0.0.1",
        0,
        handshake_seconds=handshake_seconds,
    )
    try:
        yield Served(server, client_context(ca_file=pki.ca))
    finally:
        server.close()
        await runner.cleanup()


def _run(tmp_path: Path, play: Callable[[Served], Any], **kwargs: float) -> Any:
    async def main() -> Any:
        async for served in _serving(tmp_path, **kwargs):
            return await asyncio.to_thread(play, served)
        return None

    return asyncio.run(main())


def test_bodies_cross_both_ways_on_one_kept_alive_connection(tmp_path: Path) -> None:
    def play(served: Served) -> tuple[bytes, str, str, str]:
        connection = served.https()
        connection.request("GET", "/big")
        down = connection.getresponse().read()
        connection.request("PUT", "/digest", body=BIG)
        up = connection.getresponse().read().decode()
        connection.request("PUT", "/digest?slow=1", body=BIG[: 2 << 20])
        slow = connection.getresponse().read().decode()
        connection.request("GET", "/connections")
        count = connection.getresponse().read().decode()
        return down, up, slow, count

    down, up, slow, count = _run(tmp_path, play)

    assert down == BIG
    assert up == hashlib.sha256(BIG).hexdigest()
    assert slow == hashlib.sha256(BIG[: 2 << 20]).hexdigest()
    assert count == "1"


def test_a_client_that_never_finishes_its_handshake_is_cut(tmp_path: Path) -> None:
    def play(served: Served) -> bytes:
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as raw:
            return raw.recv(1024)  # b"" once the server closes it

    assert _run(tmp_path, play, handshake_seconds=0.2) == b""


def test_plain_http_gets_an_empty_answer_not_a_reset(tmp_path: Path) -> None:
    def play(served: Served) -> tuple[bytes, int]:
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as raw:
            raw.sendall(b"GET /connections HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := raw.recv(1024):
                answer += chunk
        connection = served.https()  # the server serves on
        connection.request("GET", "/connections")
        return answer, connection.getresponse().status

    answer, status = _run(tmp_path, play)

    assert not answer.startswith(b"HTTP")  # at most a TLS alert, then the close
    assert status == 200


def test_a_client_gone_mid_download_leaves_the_others_served(tmp_path: Path) -> None:
    def play(served: Served) -> tuple[int, bytes]:
        gone = served.https()
        gone.request("GET", "/big")
        response = gone.getresponse()
        response.read(1 << 16)
        gone.sock.close()  # type: ignore[union-attr]
        connection = served.https()
        connection.request("GET", "/big")
        answer = connection.getresponse()
        return answer.status, answer.read()

    status, body = _run(tmp_path, play)

    assert status == 200 and body == BIG


def test_a_taken_port_is_refused_and_nothing_is_left_listening(tmp_path: Path) -> None:
    async def main() -> None:
        async for served in _serving(tmp_path):
            pki = write_local_tls(tmp_path / "other")
            with pytest.raises(OSError):
                serve_tls(
                    lambda: asyncio.Protocol(),
                    server_context(pki.cert, pki.key),
                    "127.0.0.1",
                    served.port,
                )

    asyncio.run(main())
