"""How much each client connection may hold at the aggregator, sized for the fleet.

Two buffers per connection trade CPU against memory. Large pieces move a big model with
fewer wake-ups: on 50M x 8, 64 KiB TLS reads cost the aggregator ~25% more CPU a round
than asyncio's 256 KiB, and 64 KiB model pieces ~7% more than 1 MiB on plain HTTP
(bench/README.md, "Waiting uploads hold nothing").
Small ones keep a fleet's memory in bounds: asyncio gives every TLS connection its read
buffer when it connects (256 MiB at 1,000 idle sites), and a model download blocked on a
slow reader holds its piece, encrypted, in its transport. So each buffer is as large as
its share of a fixed budget allows, between a floor and asyncio's or our default: a
handful of sites gets the large ones, 1,000 sites 64 KiB each.
"""

from __future__ import annotations

import asyncio.sslproto
from dataclasses import dataclass

KIB = 1 << 10
# All connections together, at most (or each at its floor).
TLS_READ_BUDGET, SEND_PIECE_BUDGET = 16 << 20, 64 << 20
TLS_READ_RANGE = (64 * KIB, 256 * KIB)  # 256 KiB: asyncio's own SSLProtocol.max_size
SEND_PIECE_RANGE = (64 * KIB, 1024 * KIB)


@dataclass(frozen=True)
class ConnectionBuffers:
    tls_read: int  # bytes a TLS connection reads per wake-up, and its read buffer
    send_piece: int  # bytes of a model download handed to the transport at a time

    @classmethod
    def for_fleet(cls, sites: int) -> ConnectionBuffers:
        return cls(
            tls_read=_share(TLS_READ_BUDGET, sites, TLS_READ_RANGE),
            send_piece=_share(SEND_PIECE_BUDGET, sites, SEND_PIECE_RANGE),
        )


class FleetSizedBuffers:
    """The buffers in force, resized as sites join and leave. With `sets_tls_reads` (the
    aggregator's process, whose only TLS server it is) the TLS read size is set where
    asyncio keeps it, process-wide, for connections made from then on."""

    def __init__(self, sites: int, *, sets_tls_reads: bool = False) -> None:
        self._sets_tls_reads = sets_tls_reads
        self.resize(sites)

    def resize(self, sites: int) -> None:
        self.current = ConnectionBuffers.for_fleet(sites)
        if self._sets_tls_reads:
            asyncio.sslproto.SSLProtocol.max_size = self.current.tls_read


def _share(budget: int, sites: int, bounds: tuple[int, int]) -> int:
    low, high = bounds
    share = budget // max(sites, 1)
    return max(low, min(high, share - share % KIB))
