"""The aggregator's HTTPS server: TLS over non-blocking `ssl.SSLSocket`s, not asyncio's.

asyncio runs TLS over two OpenSSL memory BIOs per connection plus a read buffer of its
own, and a memory BIO keeps the capacity of the largest chunk ever written to it. After
one upload and one model download a connection held ~130 KiB at the aggregator for good:
at 1,000 sites most of its memory (bench/README.md, "Where the memory per site goes").
Here OpenSSL reads and writes the socket itself and releases its buffers when idle
(CPython sets SSL_MODE_RELEASE_BUFFERS): 1,000 sites of the CNN went from 1.53x to 0.25x
the memory target, and every byte is copied once less. Records are gathered into one read
buffer that all connections share (the loop reads one socket at a time), so a body still
reaches the HTTP layer in large pieces.

Only the server side, and only what aiohttp's server needs of a transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

READ_SIZE = 256 << 10  # asyncio's own TLS read size
# Bytes a connection may queue before its writer is paused (asyncio's default), and the
# level it is resumed at.
WRITE_HIGH, WRITE_LOW = 64 << 10, 16 << 10
# A client that has not finished its handshake by then is cut (asyncio's default): a
# connection that says nothing must not hold a descriptor for ever.
HANDSHAKE_SECONDS = 60.0
# accept() failing for want of descriptors or memory: retry after this, as asyncio does.
ACCEPT_RETRY_SECONDS = 1.0

_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
_READ_VIEW = memoryview(bytearray(READ_SIZE))  # the loop's one read buffer (see above)


class TlsSocketTransport(asyncio.Transport):
    """One client connection. The protocol is told of it once its handshake is done."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: ssl.SSLSocket,
        protocol: asyncio.Protocol,
        *,
        handshake_seconds: float = HANDSHAKE_SECONDS,
    ) -> None:
        super().__init__()
        self._loop, self._sock, self._protocol = loop, sock, protocol
        self._fd = sock.fileno()
        self._pending = bytearray()  # written, not yet taken by SSL_write
        self._inflight: memoryview | None = None  # SSL_write would block: retry with these
        self._closing = self._closed = self._made = False
        self._reading_paused = self._writer_paused = False
        self._high, self._low = WRITE_HIGH, WRITE_LOW
        self._extra: dict[str, Any] = {
            "peername": sock.getpeername(),
            "sockname": sock.getsockname(),
            "socket": sock,
            "sslcontext": sock.context,
            "ssl_object": sock,
        }
        self._deadline: asyncio.TimerHandle | None = loop.call_later(
            handshake_seconds, self._handshake_late
        )
        loop.add_reader(self._fd, self._handshake)

    # --- the handshake
    def _handshake(self) -> None:
        try:
            self._sock.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLWantWriteError:
            self._loop.remove_reader(self._fd)
            self._loop.add_writer(self._fd, self._handshake_writable)
            return
        except (OSError, ssl.SSLError) as error:  # not TLS, a bad client hello, a reset
            log.debug("TLS handshake with %s failed: %s", self._extra["peername"], error)
            # What the client sent is read first: a socket closed with unread bytes is
            # reset, and a plain-HTTP client would see "connection reset", not the empty
            # answer that tells it to dial https:// (client/transport.py's hint).
            with contextlib.suppress(OSError):
                for _ in range(16):  # bounded: a client streaming junk gets a reset
                    if not os.read(self._fd, 1 << 16):
                        break
            self._force_close(None)
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._extra |= {"peercert": self._sock.getpeercert(), "cipher": self._sock.cipher()}
        self._made = True
        self._protocol.connection_made(self)
        if not self._closing:
            self._loop.remove_reader(self._fd)
            self._loop.add_reader(self._fd, self._read_ready)
            self._read_ready()  # the client's first request may have come with its Finished

    def _handshake_writable(self) -> None:
        self._loop.remove_writer(self._fd)
        self._loop.add_reader(self._fd, self._handshake)
        self._handshake()

    def _handshake_late(self) -> None:
        self._deadline = None
        log.debug("TLS handshake with %s timed out", self._extra["peername"])
        self._force_close(None)

    # --- reading
    def _read_ready(self) -> None:
        # SSL_read gives one TLS record (16 KiB at most) a call: records are gathered and
        # handed to the protocol together, as asyncio's layer does.
        while not self._reading_paused and not self._closing:
            filled, eof = 0, False
            while filled < READ_SIZE:
                try:
                    got = self._sock.recv_into(_READ_VIEW[filled:], READ_SIZE - filled)
                except _WANT:
                    break
                except (OSError, ssl.SSLError) as error:
                    self._force_close(error)
                    return
                if not got:
                    eof = True
                    break
                filled += got
            if filled:
                self._protocol.data_received(bytes(_READ_VIEW[:filled]))
            if eof:
                if not self._closing and not self._protocol.eof_received():
                    self.close()
                return
            if filled < READ_SIZE:
                return  # drained: the selector says when there is more

    def pause_reading(self) -> None:
        if not self._reading_paused and not self._closing:
            self._reading_paused = True
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if self._reading_paused and not self._closing:
            self._reading_paused = False
            self._loop.add_reader(self._fd, self._read_ready)
            self._loop.call_soon(self._read_ready)  # decrypted bytes may wait in OpenSSL

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    # --- writing
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if self._inflight is not None or self._pending:
            self._pending += data
        else:
            view = memoryview(data).cast("B")
            sent = self._send(view)
            if sent is None or sent == len(view):
                return
            if self._inflight is view:  # the caller may reuse its buffer once this returns
                self._inflight = memoryview(bytes(view))
            elif self._inflight is None:
                self._pending += view[sent:]
            self._loop.add_writer(self._fd, self._write_ready)
        self._maybe_pause_writer()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def _send(self, view: memoryview) -> int | None:
        """The bytes SSL took (None: the connection failed). When SSL_write would block,
        OpenSSL must be offered the same bytes again: they become `_inflight`."""
        try:
            return self._sock.send(view)
        except _WANT:
            self._inflight = view
            return 0
        except (OSError, ssl.SSLError) as error:
            self._force_close(error)
            return None

    def _write_ready(self) -> None:
        while self._inflight is not None or self._pending:
            if self._inflight is not None:
                view, self._inflight = self._inflight, None
            else:
                view = memoryview(bytes(self._pending[:READ_SIZE]))
                del self._pending[: len(view)]
            sent = self._send(view)
            if sent is None or self._inflight is not None:
                return
            if sent < len(view):
                self._pending[:0] = view[sent:]
        self._loop.remove_writer(self._fd)
        self._maybe_resume_writer()
        if self._closing:
            self._shut()

    def get_write_buffer_size(self) -> int:
        return len(self._pending) + (len(self._inflight) if self._inflight is not None else 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = WRITE_HIGH if high is None else high
        self._low = self._high // 4 if low is None else low
        self._maybe_pause_writer()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def _maybe_pause_writer(self) -> None:
        if not self._writer_paused and self.get_write_buffer_size() > self._high:
            self._writer_paused = True
            self._protocol.pause_writing()

    def _maybe_resume_writer(self) -> None:
        if self._writer_paused and self.get_write_buffer_size() <= self._low:
            self._writer_paused = False
            self._protocol.resume_writing()

    def can_write_eof(self) -> bool:
        return False

    # --- closing
    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Once what is queued is sent: close_notify, then the socket."""
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if not self.get_write_buffer_size():
            self._shut()

    def abort(self) -> None:
        self._force_close(None)

    def _shut(self) -> None:
        # close_notify, best effort: the client's own is not waited for.
        with contextlib.suppress(OSError, ValueError):  # ssl.SSLError is an OSError
            self._sock.unwrap()
        self._force_close(None)

    def _force_close(self, error: Exception | None) -> None:
        if self._closed:
            return
        self._closed = self._closing = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._sock.close()
        self._pending.clear()
        self._inflight = None
        if self._made:
            self._loop.call_soon(self._protocol.connection_lost, error)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol


class TlsServer:
    """Accepts on one address; every connection a `TlsSocketTransport` for a new protocol."""

    def __init__(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        listener: socket.socket,
        *,
        handshake_seconds: float = HANDSHAKE_SECONDS,
    ) -> None:
        self._factory, self._context, self._listener = protocol_factory, context, listener
        self._handshake_seconds = handshake_seconds
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(listener.fileno(), self._accept)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    def _accept(self) -> None:
        for _ in range(128):  # a burst at a time, then the loop's other work
            try:
                raw, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:
                if error.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                log.error("accepting connections failed (%s): retrying in 1s", error)
                self._loop.remove_reader(self._listener.fileno())
                self._loop.call_later(ACCEPT_RETRY_SECONDS, self._resume_accepting)
                return
            raw.setblocking(False)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock: socket.socket = raw
            try:
                sock = self._context.wrap_socket(
                    raw, server_side=True, do_handshake_on_connect=False
                )
                TlsSocketTransport(
                    self._loop, sock, self._factory(), handshake_seconds=self._handshake_seconds
                )
            except OSError as error:  # the client reset before we looked at it
                log.debug("a connection closed as it was accepted: %s", error)
                sock.close()

    def _resume_accepting(self) -> None:
        if self._listener.fileno() != -1:
            self._loop.add_reader(self._listener.fileno(), self._accept)

    def close(self) -> None:
        """Accept no more; connections already made are their protocols' to close."""
        if self._listener.fileno() != -1:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()


def serve_tls(
    protocol_factory: Callable[[], asyncio.Protocol],
    context: ssl.SSLContext,
    host: str,
    port: int,
    *,
    handshake_seconds: float = HANDSHAKE_SECONDS,
) -> TlsServer:
    """Listen on (host, port) (0: a free port, `TlsServer.address` says which)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(4096)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return TlsServer(protocol_factory, context, listener, handshake_seconds=handshake_seconds)
