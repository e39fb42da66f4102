"""The sites of the job: which are in force, which are connected, and what each said of its data.

A site counts for the rounds once it is connected and said its data is ready: a client
whose CVAT refuses it is connected, but the rounds go on without it, and it counts again
the moment it reports ready. Whether a site is connected is the presence's answer
(presence.py); who a request comes from is the HTTP layer's (its token), never this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flotilla.fl.aggregator.changes import Changes, Clock
from flotilla.fl.aggregator.presence import Presence

log = logging.getLogger(__name__)


class Roster:
    def __init__(self, sites: Sequence[str], *, changes: Changes, clock: Clock) -> None:
        self._sites = tuple(sorted(sites))
        self._changes = changes
        self._presence = Presence(clock)
        # What each client said of its data: {"ready": True, "data": ...} or an error.
        self._reports: dict[str, dict[str, Any]] = {}
        self._released: set[str] = set()  # told that the job ended

    @property
    def sites(self) -> tuple[str, ...]:
        """The sites in force now, sorted."""
        return self._sites

    @property
    def site_reports(self) -> Mapping[str, Mapping[str, Any]]:
        return self._reports

    def set_sites(self, sites: Sequence[str]) -> set[str]:
        """The sites in force now (a node joined or left, tokens rotated); returns the sites
        that left. What a site that left said of its data goes with it."""
        new = tuple(sorted(set(sites)))
        gone = set(self._sites) - set(new)
        self._sites = new
        for site in gone:
            self._reports.pop(site, None)
        self._changes.bump()
        return gone

    def seen(self, site: str, alive: Callable[[], bool]) -> None:
        """`site` asked something; `alive` tells later whether its link still is."""
        if self._presence.touch(site, alive):
            self._changes.bump()

    def connected(self) -> list[str]:
        """Every site with a live link, ready or not (a site whose data fails stays connected)."""
        return self._presence.present(self._sites)

    def present(self) -> list[str]:
        """Connected sites whose data is ready: the ones rounds may sample."""
        return [site for site in self.connected() if self.is_ready(site)]

    def is_ready(self, site: str) -> bool:
        return bool(self._reports.get(site, {}).get("ready"))

    def has_reported(self, site: str) -> bool:
        return site in self._reports

    def awaited(self) -> set[str]:
        """The sites a round waits for: all but those that said their data fails. The grace
        is for sites on their way; a broken one would cost every round the whole grace."""
        return set(self._sites) - set(self.site_problems())

    def take_report(self, site: str, report: Mapping[str, Any]) -> None:
        """A client says its data is ready (with its label report) or why it is not."""
        before = self._reports.get(site)
        self._reports[site] = dict(report)
        if report.get("ready"):
            if before is not None and not before.get("ready"):
                log.info("site %s: its data is ready now; it joins the next round", site)
            ignored = (report.get("data") or {}).get("ignoredLabels")
            if ignored:
                log.warning("site %s: ignores labels the job does not know: %s", site, ignored)
        elif before != report:
            log.error(
                "site %s cannot train: %s; the rounds go on without it", site, report["error"]
            )
        self._changes.bump()

    def site_problems(self) -> dict[str, str]:
        return {
            site: str(report.get("error"))
            for site, report in sorted(self._reports.items())
            if not report.get("ready")
        }

    def label_mismatches(self) -> dict[str, dict[str, Any]]:
        """Ready sites whose CVAT labels differ from the job's: what was ignored, what is absent."""
        out = {}
        for site, report in sorted(self._reports.items()):
            data = report.get("data") or {}
            ignored, missing = data.get("ignoredLabels") or {}, data.get("missingLabels") or []
            if ignored or missing:
                out[site] = {"ignored": ignored, "missing": missing}
        return out

    def release(self, site: str) -> None:
        """`site` learned that the job ended."""
        if site not in self._released:
            self._released.add(site)
            self._changes.bump()

    def all_released(self) -> bool:
        """Every connected site learned that the job ended (those whose data failed too)."""
        return set(self.connected()) <= self._released
