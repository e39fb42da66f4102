"""How fast an upload's body must arrive while it holds a receive buffer: pure timing rules.

A body must keep moving: at most `idle_seconds` between pieces and, after `grace_seconds`,
at least `min_bytes_per_second` on average. No upload outlives the round it is for. While
other uploads wait for a buffer, a holder must also be on pace to arrive before its round
closes (its share of the body at least its share of the time left): one that is not would
hold the buffer in vain, so it yields. Nothing here reads a clock; callers pass the time.
"""

from __future__ import annotations

from dataclasses import dataclass

from flotilla.fl.aggregator.errors import Refused, RoundClosed, TooSlow, Yielded


@dataclass(frozen=True)
class UploadPace:
    # A stalled body: no real link is silent this long mid-upload (TCP retransmits are
    # seconds).
    idle_seconds: float = 30.0
    # Before the rate floor applies: TCP slow start, a link busy with the model download.
    grace_seconds: float = 10.0
    # 2 KiB/s (16 kbit/s): below any link worth training on (2G GPRS carries 5 KB/s), far
    # above the 0.5 B/s of a trickle. A 1 MB int8 update takes under 9 minutes at the floor.
    min_bytes_per_second: float = 2048.0
    # A holder below 100 Mbit/s over at least two seconds is held up by its own link, not
    # by the aggregator's: a second receive buffer lets another body arrive alongside it
    # (pool.py). A cluster's aggregator has 1 Gbit/s or more. Two seconds: a body done
    # sooner is not worth a model of memory to overlap (and a sender briefly starved of
    # CPU is not judged a slow link), while a slow link's upload takes tens of seconds.
    slow_link_bytes_per_second: float = 12.5e6
    slow_link_after_seconds: float = 2.0


class Progress:
    """One upload's progress: when it must have made more, and why it is cut if not."""

    def __init__(
        self,
        pace: UploadPace,
        *,
        size: int,
        started: float,
        until: float,
        received: int = 0,
        now: float | None = None,
    ) -> None:
        """A resumed upload carries its pace over: `started` is when it first began and
        `received` what it kept, so breaking off and reconnecting buys no new grace."""
        self.pace = pace
        self.size = max(size, 1)  # the body's expected bytes
        self.started = started
        self.until = until  # its round's end
        self.received = received
        self._last = started if now is None else now
        self._held_since = self._last  # this connection's, for `slow_link`
        self._held_from = received

    def got(self, count: int, *, now: float) -> None:
        self.received += count
        self._last = now

    def waited(self, seconds: float) -> None:
        """The server held the body back this long (its buffer was still being read): the
        time is not the body's, so every rule moves on by it."""
        self.started += seconds
        self._last += seconds
        self._held_since += seconds

    def slow_link(self, *, now: float) -> bool:
        """Its link is what holds it up: below the slow-link rate since this connection
        took its buffer, judged after `slow_link_after_seconds`."""
        held = now - self._held_since
        got = self.received - self._held_from
        pace = self.pace
        return held >= pace.slow_link_after_seconds and got < pace.slow_link_bytes_per_second * held

    def due_on_pace(self) -> float:
        """When it falls behind the pace that lands its last byte as the round closes."""
        window = max(self.until - self.started, 0.0)
        return self.started + self.pace.grace_seconds + self.received * window / self.size

    def due(self, *, contended: bool) -> tuple[float, str]:
        """The moment the first rule fails if no byte arrives meanwhile, and that rule."""
        pace = self.pace
        rules = [
            (self._last + pace.idle_seconds, "idle"),
            (self.started + pace.grace_seconds + self.received / pace.min_bytes_per_second, "rate"),
            (self.until, "round"),
        ]
        if contended:
            rules.append((self.due_on_pace(), "pace"))
        return min(rules)

    def cut(self, rule: str, *, site: str, now: float) -> Refused:
        """Why the upload is cut off by `rule`: the refusal to answer it with."""
        elapsed = now - self.started
        got = f"{self.received} of {self.size} bytes in {elapsed:.1f}s"
        if rule == "idle":
            idle = self.pace.idle_seconds
            return TooSlow(f"site {site!r}: no body bytes for {idle:g}s ({got})", cut=True)
        if rule == "rate":
            floor = self.pace.min_bytes_per_second
            return TooSlow(f"site {site!r}: {got} is below {floor:g} bytes/s", cut=True)
        if rule == "round":
            return RoundClosed(f"site {site!r}: the round closed with {got}", cut=True)
        return Yielded(
            f"site {site!r}: {got} would not arrive before the round closes while other "
            "uploads wait for a receive buffer; retry when the link is faster",
            cut=True,
        )
