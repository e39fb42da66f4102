"""Per-connection buffers sized for the fleet (connection_buffers.py)."""

from __future__ import annotations

import asyncio.sslproto

import pytest

from flotilla.fl.aggregator.connection_buffers import ConnectionBuffers, FleetSizedBuffers

KIB = 1 << 10


@pytest.mark.parametrize(
    ("sites", "tls_read", "send_piece"),
    [
        (0, 256 * KIB, 1024 * KIB),
        (8, 256 * KIB, 1024 * KIB),  # a handful: asyncio's read size, 1 MiB pieces
        (64, 256 * KIB, 1024 * KIB),
        (128, 128 * KIB, 512 * KIB),  # their share of the budget
        (300, 64 * KIB, 218 * KIB),
        (1000, 64 * KIB, 65 * KIB),
        (100_000, 64 * KIB, 64 * KIB),  # never below the floor
    ],
)
def test_each_buffer_is_its_share_of_the_budget_within_its_bounds(
    sites: int, tls_read: int, send_piece: int
) -> None:
    assert ConnectionBuffers.for_fleet(sites) == ConnectionBuffers(tls_read, send_piece)


def test_the_aggregator_sets_asyncios_tls_read_size_as_the_fleet_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(asyncio.sslproto.SSLProtocol, "max_size", 256 * KIB)
    buffers = FleetSizedBuffers(1000, sets_tls_reads=True)
    assert asyncio.sslproto.SSLProtocol.max_size == 64 * KIB
    buffers.resize(4)
    assert asyncio.sslproto.SSLProtocol.max_size == 256 * KIB
    assert buffers.current.send_piece == 1024 * KIB


def test_only_the_aggregators_process_sets_the_tls_read_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(asyncio.sslproto.SSLProtocol, "max_size", 256 * KIB)
    FleetSizedBuffers(1000).resize(2000)
    assert asyncio.sslproto.SSLProtocol.max_size == 256 * KIB
