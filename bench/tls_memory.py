"""What a TLS connection keeps after moving a body, by how its TLS layer meets the socket.

asyncio (and so the aggregator) runs TLS over two OpenSSL memory BIOs per connection. A
memory BIO keeps the capacity of the largest chunk ever written to it, so after one upload
and one model download a connection holds about a TLS read and a model piece for good. An
`ssl.SSLSocket`, where OpenSSL reads and writes the socket itself, releases its buffers
when idle. Here `--pairs` client/server pairs in this process move `--kb` each way, in
chunks of `--chunk` KiB, and the retained memory per pair (both ends) is read from RSS.

    .venv/bin/python bench/tls_memory.py [--pairs 400] [--kb 160]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

CHUNKS_KIB = (64, 16)


def rss_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    scratch = Path(tempfile.mkdtemp())
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-keyout", str(scratch / "key"), "-out", str(scratch / "cert")),
            *("-subj", "/CN=bench", "-days", "1"),
        ],
        check=True,
        capture_output=True,
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(scratch / "cert", scratch / "key")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    return server, client


WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class MemoryPair:
    """Two TLS ends over memory BIOs, as asyncio's SSLProtocol holds them."""

    def __init__(self, server: ssl.SSLContext, client: ssl.SSLContext) -> None:
        self.bios = [ssl.MemoryBIO() for _ in range(4)]  # server in, out; client in, out
        s_in, s_out, c_in, c_out = self.bios
        self.ends = (server.wrap_bio(s_in, s_out, server_side=True), client.wrap_bio(c_in, c_out))
        for _ in range(10):
            for end in self.ends:
                with contextlib.suppress(WANT):
                    end.do_handshake()
            self._pump()

    def _pump(self) -> None:
        s_in, s_out, c_in, c_out = self.bios
        for source, target in ((s_out, c_in), (c_out, s_in)):
            data = source.read()
            for start in range(0, len(data), self.chunk):
                target.write(data[start : start + self.chunk])

    chunk = 64 << 10

    def move(self, size: int, chunk: int) -> None:
        self.chunk = chunk
        for sender, receiver in (self.ends, self.ends[::-1]):
            payload = b"x" * chunk
            for _ in range(0, size, chunk):
                sender.write(payload)
                self._pump()
                while True:
                    try:
                        if not receiver.read(1 << 16):
                            break
                    except WANT:
                        break


class SocketPair:
    """Two TLS ends where OpenSSL reads and writes a socket pair itself."""

    def __init__(self, server: ssl.SSLContext, client: ssl.SSLContext) -> None:
        a, b = socket.socketpair()
        self.ends = (
            server.wrap_socket(a, server_side=True, do_handshake_on_connect=False),
            client.wrap_socket(b, do_handshake_on_connect=False),
        )
        done = [False, False]
        for end in self.ends:
            end.setblocking(False)
        while not all(done):
            for index, end in enumerate(self.ends):
                if not done[index]:
                    try:
                        end.do_handshake()
                        done[index] = True
                    except WANT:
                        pass

    def move(self, size: int, chunk: int) -> None:
        into = bytearray(1 << 16)
        for sender, receiver in (self.ends, self.ends[::-1]):
            sent = got = 0
            while got < size:
                if sent < size:
                    with contextlib.suppress(WANT):
                        sent += sender.send(b"x" * min(chunk, size - sent))
                with contextlib.suppress(WANT):
                    got += receiver.recv_into(into)


def retained(make: Callable[[], MemoryPair | SocketPair], pairs: int, size: int, chunk: int):
    before = rss_kib()
    made = [make() for _ in range(pairs)]
    connected = rss_kib()
    for pair in made:
        pair.move(size, chunk)
    return (connected - before) / pairs, (rss_kib() - connected) / pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--kb", type=int, default=160, help="body size each way")
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)  # one row, in this process
    args = parser.parse_args()
    server, client = contexts()
    rows = [
        (f"memory BIOs, {kib} KiB chunks", lambda: MemoryPair(server, client), kib << 10)
        for kib in CHUNKS_KIB
    ]
    rows.append(("ssl.SSLSocket, 64 KiB chunks", lambda: SocketPair(server, client), 64 << 10))
    if args.row is not None:
        name, make, chunk = rows[args.row]
        handshake, kept = retained(make, args.pairs, args.kb * 1000, chunk)
        print(f"- {name}: {handshake:.0f} after the handshake, **+{kept:.0f}** after the bodies")
        return
    print(f"{ssl.OPENSSL_VERSION}; {args.pairs} pairs, {args.kb} KB each way; KiB per pair")
    for row in range(len(rows)):  # each in a fresh process: freed memory is not reused
        command = [sys.executable, __file__, "--pairs", str(args.pairs), "--kb", str(args.kb)]
        subprocess.run([*command, "--row", str(row)], check=True)


if __name__ == "__main__":
    main()
