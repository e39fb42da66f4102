"""`Expect: 100-continue` for `http.client`, which sends a request's body right after its
headers and has no way to wait for the server's word.

An update's body leaves only when the aggregator asks for it: it answers `100 Continue`
once the upload holds a receive buffer there, so a site waiting its turn holds its body
back instead of parking it in the aggregator's buffers (aggregator/http_continue.py). A
refusal (a closed round, a site not sampled) comes before any body byte crossed the link.
A server that never answers (a proxy that drops the expectation) is given `patience`
seconds, then sent the body anyway, as RFC 9110 section 10.1.1 lets a client do.
"""

from __future__ import annotations

import http.client
import io
import selectors
import socket
import ssl
from typing import Any

_MAX_LINE = 65536  # http.client's own bounds on a status or header line
_MAX_HEADERS = 100  # and on header lines


def expect_continue(
    conn: http.client.HTTPConnection, *, method: str, patience: float
) -> http.client.HTTPResponse | None:
    """After `conn.request(...)` sent the headers (with `Expect: 100-continue`) and no
    body: None once the server asked for the body (or kept silent for `patience`
    seconds), so the caller sends it; otherwise the server's final answer, which leaves
    the connection unusable for another request (the body was never sent)."""
    sock = conn.sock
    if sock is None:
        raise http.client.NotConnected()
    pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
    if not pending and not _readable(sock, patience):
        return None
    # Unbuffered, so nothing past the interim answer is read: the final answer that
    # follows the body is read by http.client, from the socket.
    reader = sock.makefile("rb", buffering=0)
    status = reader.readline(_MAX_LINE + 1)
    if _is_continue(status):
        for _ in range(_MAX_HEADERS + 1):  # the interim answer's headers, if any
            if reader.readline(_MAX_LINE + 1) in (b"\r\n", b"\n", b""):
                break
        else:
            raise http.client.HTTPException(f"the 100 Continue had over {_MAX_HEADERS} headers")
        reader.close()  # the file only: the socket stays open
        return None
    response = http.client.HTTPResponse(_Replaying(status, reader), method=method)  # type: ignore[arg-type]
    response.begin()
    return response


def _readable(sock: socket.socket, timeout: float) -> bool:
    # A selector, not select.select, which refuses descriptors past 1023 (a client with
    # many files open: data loaders, caches).
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(timeout))


def _is_continue(status: bytes) -> bool:
    parts = status.split(None, 2)
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1] == b"100"


class _Replaying:
    """A socket stand-in for `HTTPResponse`: its file gives the status line already read,
    then the rest of the answer from the socket."""

    def __init__(self, first: bytes, rest: Any) -> None:
        self._raw = _ChainedRaw(first, rest)

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(self._raw)


class _ChainedRaw(io.RawIOBase):
    def __init__(self, first: bytes, rest: socket.SocketIO) -> None:
        self._first = first
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._first:
            count = min(len(buffer), len(self._first))
            buffer[:count] = self._first[:count]
            self._first = self._first[count:]
            return count
        return self._rest.readinto(buffer) or 0

    def close(self) -> None:
        self._rest.close()
        super().close()
