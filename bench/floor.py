"""The floor a round cannot beat: its bytes over loopback, and folding its deltas in memory.

Both are measured on this machine in the same run as the rounds they are compared with.
Over TLS the bytes' floor is one TLS connection on loopback (the product's own server and
client contexts, a throwaway CA as `flotilla run` makes): blocking sockets, the sender's
one `sendall` and the receiver's `recv_into` a reused buffer, so what it costs beyond plain
TCP is OpenSSL's record encryption and decryption, not Python.
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch


def loopback_bandwidth(size: int = 256 << 20, repeats: int = 3) -> float:
    """Bytes per second through a TCP socket on 127.0.0.1, received into a reused buffer:
    the best of `repeats` transfers (one transfer varied 3.4-4.3 GB/s between runs, and
    a floor is the fastest the bytes can go)."""
    return max(_one_transfer(size) for _ in range(repeats))


def tls_loopback_bandwidth(size: int = 256 << 20, repeats: int = 3) -> tuple[float, str]:
    """(bytes per second, cipher) through one TLS connection on 127.0.0.1, as
    `loopback_bandwidth` measures plain TCP: the same bytes, the best of `repeats`."""
    from flotilla.fl.certs import make_tls
    from flotilla.fl.tls import client_context, server_context

    material = make_tls(common_name="bench", ip_addresses=["127.0.0.1"])
    with tempfile.TemporaryDirectory(prefix="flotilla-floor-") as folder:
        cert, key = Path(folder) / "tls.crt", Path(folder) / "tls.key"
        cert.write_text(material.cert)
        key.write_text(material.key)
        served = server_context(cert, key)
    trust = client_context(ca_data=material.ca)
    ciphers: list[str] = []

    def wrap_server(sock: socket.socket) -> socket.socket:
        wrapped = served.wrap_socket(sock, server_side=True)
        ciphers.append(f"{wrapped.version()} {(wrapped.cipher() or ('?',))[0]}")
        return wrapped

    best = max(
        _one_transfer(
            size,
            wrap_client=lambda sock: trust.wrap_socket(sock, server_hostname="127.0.0.1"),
            wrap_server=wrap_server,
        )
        for _ in range(repeats)
    )
    return best, ciphers[0]


Wrap = Callable[[socket.socket], socket.socket]


def _same(sock: socket.socket) -> socket.socket:
    return sock


def _one_transfer(size: int, *, wrap_client: Wrap = _same, wrap_server: Wrap = _same) -> float:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    payload = memoryview(bytearray(os.urandom(1 << 20)) * (size >> 20))

    def send() -> None:
        with wrap_client(socket.create_connection(("127.0.0.1", port))) as sock:
            sock.sendall(payload)
            # TLS 1.3: the server's session tickets lie unread here; closing now would reset
            # the connection and drop records the receiver has not read yet. Wait for its close.
            if isinstance(sock, ssl.SSLSocket):
                sock.recv(1)

    sender = threading.Thread(target=send)
    started = time.perf_counter()  # a TLS handshake counts: a few ms beside 256 MiB
    sender.start()
    raw, _ = server.accept()
    connection = wrap_server(raw)
    buffer = memoryview(bytearray(1 << 20))
    got = 0
    with connection:
        while got < size:
            n = connection.recv_into(buffer)
            if not n:
                break
            got += n
        elapsed = time.perf_counter() - started
    sender.join()
    server.close()
    return got / elapsed


def fold_seconds(params: int, clients: int, repeats: int = 3) -> float:
    """Time to fold `clients` float32 deltas of `params` values into one sum, in place
    (the best of `repeats`: a first call also pays for torch's thread pool)."""
    total = torch.zeros(params)
    delta = torch.randn(params)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(clients):
            total.add_(delta, alpha=0.5)
        best = min(best, time.perf_counter() - started)
    return best


def floor_seconds(*, params: int, clients: int, bandwidth: float) -> tuple[float, float]:
    """(wire, fold): the model down and the update up for every client, and the fold."""
    return 2 * clients * params * 4 / bandwidth, fold_seconds(params, clients)
