"""How much of a model download each client connection may hold at the aggregator, sized
for the fleet.

Large pieces move a big model with fewer wake-ups: on 50M x 8, 64 KiB pieces cost the
aggregator ~7% more CPU a round than 1 MiB on plain HTTP (bench/README.md, "Waiting
uploads hold nothing"). Small ones keep a fleet's memory in bounds: a download blocked on
a slow reader holds its piece in its transport. So a piece is as large as its share of a
fixed budget allows, between a floor and 1 MiB: a handful of sites gets 1 MiB, 1,000 sites
64 KiB each. (TLS reads are no connection's own any more: tls_transport.py reads every
connection into one shared buffer.)
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1 << 10
SEND_PIECE_BUDGET = 64 << 20  # all connections together, at most (or each at the floor)
SEND_PIECE_RANGE = (64 * KIB, 1024 * KIB)


@dataclass(frozen=True)
class ConnectionBuffers:
    send_piece: int  # bytes of a model download handed to the transport at a time

    @classmethod
    def for_fleet(cls, sites: int) -> ConnectionBuffers:
        return cls(send_piece=_share(SEND_PIECE_BUDGET, sites, SEND_PIECE_RANGE))


class FleetSizedBuffers:
    """The buffers in force, resized as sites join and leave."""

    def __init__(self, sites: int) -> None:
        self.resize(sites)

    def resize(self, sites: int) -> None:
        self.current = ConnectionBuffers.for_fleet(sites)


def _share(budget: int, sites: int, bounds: tuple[int, int]) -> int:
    low, high = bounds
    share = budget // max(sites, 1)
    return max(low, min(high, share - share % KIB))
