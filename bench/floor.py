"""The floor a round cannot beat: its bytes over loopback, and folding its deltas in memory.

Both are measured on this machine in the same run as the rounds they are compared with.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import torch


def loopback_bandwidth(size: int = 256 << 20, repeats: int = 3) -> float:
    """Bytes per second through a TCP socket on 127.0.0.1, received into a reused buffer:
    the best of `repeats` transfers (one transfer varied 3.4-4.3 GB/s between runs, and
    a floor is the fastest the bytes can go)."""
    return max(_one_transfer(size) for _ in range(repeats))


def _one_transfer(size: int) -> float:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    payload = memoryview(bytearray(os.urandom(1 << 20)) * (size >> 20))

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(payload)

    sender = threading.Thread(target=send)
    started = time.perf_counter()
    sender.start()
    connection, _ = server.accept()
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
