"""Which clients are there: connected now, or heard from a moment ago.

A client keeps one HTTP connection open across rounds (an idle keep-alive while
it trains). Its close is how the aggregator learns at once that a client process
died, with no heartbeat traffic; a short grace covers a client re-dialling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

RECONNECT_GRACE_SECONDS = 3.0


class Presence:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last_seen: dict[str, float] = {}
        self._links: dict[str, Callable[[], bool]] = {}

    def touch(self, site: str, alive: Callable[[], bool]) -> bool:
        """Note a request from `site`; True when the site was absent until now."""
        was_present = self.is_present(site)
        self._last_seen[site] = self._clock()
        self._links[site] = alive
        return not was_present

    def is_present(self, site: str) -> bool:
        seen = self._last_seen.get(site)
        if seen is not None and self._clock() - seen < RECONNECT_GRACE_SECONDS:
            return True
        alive = self._links.get(site)
        return alive is not None and alive()

    def present(self, sites: Iterable[str]) -> list[str]:
        return [site for site in sites if self.is_present(site)]
