"""What aiohttp's server costs a request, against the least any Python HTTP path could cost.

The aggregator answers ~2 requests a site a round (its task, its update), and at 1,000
sites the question is how much of its CPU a round an HTTP path of its own could save.
This measures the server process's CPU per keep-alive request for a task long-poll's
"wait" answer (a small JSON body) from:

- aiohttp: a one-route `web.Application` with no middleware and no access log, on its C
  parser (what the aggregator runs for small models, fewer layers than its own app);
- bare: an `asyncio.Protocol` that splits the head from the header block, reads its
  headers into a dict and answers the same bytes from a task, as a lean path of our own
  would at the least.

The difference bounds what replacing aiohttp could save a request; multiplied by the
requests a round (bench/load_sites.py), it bounds the saving a round. Plain HTTP: TLS
adds the same cost to both. The client is a separate process with one request in flight
per connection.

    .venv/bin/python bench/http_request_cost.py [--requests 20000] [--connections 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import selectors
import socket
import time
from multiprocessing.queues import Queue
from typing import Any

from aiohttp import web

REQUEST = (
    b"GET /v1/task?wait=30 HTTP/1.1\r\nHost: aggregator\r\n"
    b"Authorization: Bearer 0123456789abcdef0123456789abcdef\r\n"
    b"X-Flotilla-Site: site-0001\r\nX-Flotilla-Model-Held: 2\r\n\r\n"
)
TASK = {"action": "wait", "round": 3, "modelVersion": 2, "deadlineSeconds": 12.5}
TASK_BYTES = json.dumps(TASK).encode()  # what aiohttp's json_response sends
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: %d\r\n\r\n" % len(TASK_BYTES) + TASK_BYTES
)


def run_client(port: int, requests: int, connections: int, queue: Queue[str]) -> None:
    """Keep one request in flight on each connection until `requests` are answered."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    queue.put("connected")
    queue.get()  # the server has started its clock
    selector = selectors.DefaultSelector()
    left = dict.fromkeys(socks, requests // connections)
    received = dict.fromkeys(socks, b"")
    for sock in socks:
        sock.sendall(REQUEST)
        selector.register(sock, selectors.EVENT_READ)
    while left:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError("the server closed a connection with requests left")
            received[sock] += data
            while sock in left and b"\r\n\r\n" in received[sock]:
                head, rest = received[sock].split(b"\r\n\r\n", 1)
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                if len(rest) < length:
                    break
                received[sock] = rest[length:]
                left[sock] -= 1
                if left[sock]:
                    sock.sendall(REQUEST)
                else:
                    selector.unregister(sock)
                    del left[sock]
    queue.put("done")


async def _task(request: web.Request) -> web.Response:
    request.headers.get("Authorization")
    request.query.get("wait")
    return web.json_response(TASK)


class BareProtocol(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.received = b""

    def data_received(self, data: bytes) -> None:
        self.received += data
        while b"\r\n\r\n" in self.received:
            head, self.received = self.received.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            asyncio.get_running_loop().create_task(self._answer(headers))

    async def _answer(self, headers: dict[bytes, bytes]) -> None:
        self.transport.write(ANSWER)


async def _listen(server: str) -> tuple[int, Any]:
    if server == "aiohttp":
        app = web.Application()
        app.router.add_get("/v1/task", _task)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1], runner.cleanup  # type: ignore[union-attr]
    bare = await asyncio.get_running_loop().create_server(BareProtocol, "127.0.0.1", 0)

    async def close() -> None:
        bare.close()
        await bare.wait_closed()

    return bare.sockets[0].getsockname()[1], close


async def cpu_per_request(server: str, requests: int, connections: int) -> float:
    """Microseconds of this (the server's) process's CPU per request answered."""
    port, close = await _listen(server)
    queue: Queue[str] = multiprocessing.Queue()
    client = multiprocessing.Process(target=run_client, args=(port, requests, connections, queue))
    client.start()
    await asyncio.to_thread(queue.get)
    start = time.process_time()
    queue.put("go")
    await asyncio.to_thread(queue.get)
    cpu = time.process_time() - start
    client.join()
    await close()
    answered = requests // connections * connections
    return cpu / answered * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    best = {"aiohttp": float("inf"), "bare": float("inf")}
    for _ in range(args.repeats):
        for server in best:  # interleaved: the host's speed drifts
            cost = asyncio.run(cpu_per_request(server, args.requests, args.connections))
            best[server] = min(best[server], cost)
    print(
        f"{args.requests} keep-alive requests over {args.connections} connections, plain "
        f"HTTP; server CPU per request, best of {args.repeats}:"
    )
    print(f"  aiohttp (one route, C parser): {best['aiohttp']:.1f} us")
    print(f"  bare asyncio.Protocol:         {best['bare']:.1f} us")
    print(
        f"  aiohttp's machinery: {best['aiohttp'] - best['bare']:.1f} us a request "
        f"({best['aiohttp'] / best['bare']:.1f}x the bare path)"
    )


if __name__ == "__main__":
    main()
