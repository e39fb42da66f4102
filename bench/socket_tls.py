"""A prototype TLS server transport for asyncio over non-blocking `ssl.SSLSocket`s, for
bench/tls_paths.py's `sslsocket` lever. Not the product's (yet).

asyncio runs TLS over two OpenSSL memory BIOs per connection, with a read buffer of its
own: every byte is copied socket -> buffer -> BIO -> plaintext, and each BIO keeps the
capacity of the largest chunk ever written to it (bench/tls_memory.py). Here OpenSSL reads
and writes the socket itself: one copy fewer each way, and a connection releases its
buffers when idle. What it leaves out of a product transport: TLS close_notify on close,
a handshake deadline, write-EOF.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any

READ_SIZE = 256 << 10
# One read buffer for every connection: the loop reads one socket at a time, and what it
# read is copied out before the next.
_READ_VIEW = memoryview(bytearray(READ_SIZE))
_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class SocketTlsTransport(asyncio.Transport):
    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket, protocol: asyncio.Protocol
    ) -> None:
        super().__init__()
        self._loop, self._sock, self._protocol = loop, sock, protocol
        self._fd = sock.fileno()
        self._pending = bytearray()  # plaintext not yet taken by SSL_write
        self._inflight: memoryview | None = None  # what SSL_write must be retried with
        self._closing = self._reading_paused = self._protocol_paused = False
        self._high, self._low = 64 << 10, 16 << 10
        self._extra = {"peername": sock.getpeername(), "sockname": sock.getsockname()}
        self._extra |= {"socket": sock, "ssl_object": sock}
        loop.add_reader(self._fd, self._handshake)

    # --- handshake, then reading
    def _handshake(self) -> None:
        try:
            self._sock.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLWantWriteError:
            self._loop.remove_reader(self._fd)
            self._loop.add_writer(self._fd, self._handshake_writable)
            return
        except (OSError, ssl.SSLError):
            self._force_close(None)
            return
        self._loop.remove_reader(self._fd)
        self._protocol.connection_made(self)
        if not self._closing:
            self._loop.add_reader(self._fd, self._read_ready)
            self._read_ready()

    def _handshake_writable(self) -> None:
        self._loop.remove_writer(self._fd)
        self._loop.add_reader(self._fd, self._handshake)
        self._handshake()

    def _read_ready(self) -> None:
        # SSL_read gives one TLS record (16 KiB at most) a call: records are gathered into
        # the loop's one read buffer and handed on together.
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
            if eof and not self._closing:
                if not self._protocol.eof_received():
                    self.close()
                return
            if filled < READ_SIZE:
                return  # drained: the selector says when the socket has more

    def pause_reading(self) -> None:
        if not self._reading_paused and not self._closing:
            self._reading_paused = True
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if self._reading_paused and not self._closing:
            self._reading_paused = False
            self._loop.add_reader(self._fd, self._read_ready)
            self._loop.call_soon(self._read_ready)  # SSL may hold decrypted bytes already

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    # --- writing
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if self._inflight is None and not self._pending:
            view = memoryview(data).cast("B")
            sent = self._send(view)
            if sent is None:
                return
            if sent == len(view):
                return
            if self._inflight is view:  # the caller may reuse its buffer once this returns
                self._inflight = memoryview(bytes(view))
            if self._inflight is None:
                self._pending += view[sent:]
            self._loop.add_writer(self._fd, self._write_ready)
        else:
            self._pending += data
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def _send(self, view: memoryview) -> int | None:
        """Bytes SSL took; on a would-block the same bytes must be offered again."""
        try:
            return self._sock.send(view)
        except _WANT:
            self._inflight = view
            return 0
        except (OSError, ssl.SSLError) as error:
            self._force_close(error)
            return None

    def _write_ready(self) -> None:
        while True:
            if self._inflight is not None:
                view, self._inflight = self._inflight, None
                sent = self._send(view)
                if sent is None or self._inflight is not None:
                    return
                if sent < len(view):
                    self._pending[:0] = view[sent:]
            if not self._pending:
                break
            view = memoryview(bytes(self._pending[:READ_SIZE]))
            del self._pending[: len(view)]
            sent = self._send(view)
            if sent is None or self._inflight is not None:
                return
            if sent < len(view):
                self._pending[:0] = view[sent:]
                return
        self._loop.remove_writer(self._fd)
        self._maybe_resume_protocol()
        if self._closing:
            self._force_close(None)

    def get_write_buffer_size(self) -> int:
        return len(self._pending) + (len(self._inflight) if self._inflight is not None else 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 << 10 if high is None else high
        self._low = self._high // 4 if low is None else low
        self._maybe_pause_protocol()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def _maybe_pause_protocol(self) -> None:
        if not self._protocol_paused and self.get_write_buffer_size() > self._high:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self.get_write_buffer_size() <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()

    def can_write_eof(self) -> bool:
        return False

    # --- closing
    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if not self.get_write_buffer_size():
            self._force_close(None)

    def abort(self) -> None:
        self._closing = True
        self._force_close(None)

    def _force_close(self, error: BaseException | None) -> None:
        if self._sock.fileno() == -1:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, error)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]


def serve(
    protocol_factory: Callable[[], asyncio.Protocol],
    context: ssl.SSLContext,
    host: str = "127.0.0.1",
    port: int = 0,
) -> socket.socket:
    """Accept on (host, port), each connection a `SocketTlsTransport`; returns the
    listening socket (its port: `getsockname()[1]`)."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server((host, port), backlog=4096)
    listener.setblocking(False)

    def accept() -> None:
        for _ in range(64):
            try:
                raw, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            raw.setblocking(False)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            wrapped = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            SocketTlsTransport(loop, wrapped, protocol_factory())

    loop.add_reader(listener.fileno(), accept)
    return listener
