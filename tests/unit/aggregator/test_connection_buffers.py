"""Model-download pieces sized for the fleet (connection_buffers.py)."""

from __future__ import annotations

import pytest

from flotilla.fl.aggregator.connection_buffers import ConnectionBuffers, FleetSizedBuffers

KIB = 1 << 10


@pytest.mark.parametrize(
    ("sites", "send_piece"),
    [
        (0, 1024 * KIB),
        (8, 1024 * KIB),  # a handful: 1 MiB pieces
        (64, 1024 * KIB),
        (128, 512 * KIB),  # their share of the budget
        (300, 218 * KIB),
        (1000, 65 * KIB),
        (100_000, 64 * KIB),  # never below the floor
    ],
)
def test_each_piece_is_its_share_of_the_budget_within_its_bounds(
    sites: int, send_piece: int
) -> None:
    assert ConnectionBuffers.for_fleet(sites) == ConnectionBuffers(send_piece)


def test_the_pieces_follow_the_fleet_as_it_changes() -> None:
    buffers = FleetSizedBuffers(1000)
    assert buffers.current.send_piece == 65 * KIB
    buffers.resize(4)
    assert buffers.current.send_piece == 1024 * KIB
