"""Buffered aggregation's books: the updates in the server update being made, and whose.

Plain bookkeeping, no I/O and no tensors (the sum is the fold's, fold.py; the loop that
steps is buffered.py). An update names the model version it was trained on by the round
of its URL: round R is trained on version R - 1, as in a synchronous round. Its staleness
is how many server steps the model moved on since: the current version minus that base,
counted when it is folded. The books also keep each site's last folded upload id, so an
upload sent again after its answer was lost (an aggregator restart) is not folded twice.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from flotilla.api import BufferedSpec
from flotilla.fl.aggregator.errors import AlreadyFolded, RoundClosed, TooStale
from flotilla.fl.aggregator.records import ClientReport, RoundRecord, summarize_round
from flotilla.fl.strategies.staleness import staleness_weight


@dataclass(frozen=True)
class BufferedUpdate:
    """One folded update: what its client reported, the version it trained on, and how
    stale it was when folded."""

    report: ClientReport
    base: int
    staleness: int

    @property
    def weight(self) -> float:
        return staleness_weight(self.staleness)

    def to_json(self) -> dict[str, Any]:
        return {"report": asdict(self.report), "base": self.base, "staleness": self.staleness}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> BufferedUpdate:
        return BufferedUpdate(
            report=ClientReport(**data["report"]),
            base=int(data["base"]),
            staleness=int(data["staleness"]),
        )


class UpdateBuffer:
    def __init__(self, spec: BufferedSpec, *, upload_seconds: float) -> None:
        self.size = spec.size
        self.max_staleness = spec.max_staleness
        self.upload_seconds = upload_seconds  # how long one upload's body may take
        self._updates: list[BufferedUpdate] = []
        self._opened = 0.0  # clock time the server update in the making opened
        self._opened_wall = time.time()
        self._last_uploads: dict[str, str] = {}

    # -- reading ---------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return len(self._updates)

    @property
    def full(self) -> bool:
        return len(self._updates) >= self.size

    @property
    def opened(self) -> float:
        return self._opened

    def staleness(self, round_number: int, *, version: int) -> int:
        """The staleness of an update of `round_number` (trained on version round - 1) if
        folded now, at model `version`; raises when it may not be folded."""
        base = round_number - 1
        if base < 0 or base > version:
            raise RoundClosed(
                f"round {round_number} is trained on model version {base}, which this "
                f"aggregator has not served (the current version is {version})"
            )
        staleness = version - base
        if self.max_staleness is not None and staleness > self.max_staleness:
            raise TooStale(
                f"the update is trained on model version {base}, {staleness} server updates "
                f"behind version {version}; spec.strategy.buffered.maxStaleness is "
                f"{self.max_staleness}: train on the current model"
            )
        return staleness

    def check_new(self, site: str, upload_id: str | None) -> None:
        """Raises when this upload of the site is folded already."""
        if upload_id is not None and self._last_uploads.get(site) == upload_id:
            raise AlreadyFolded(f"site {site!r}: upload {upload_id} is folded already", cut=True)

    def status(self) -> dict[str, Any]:
        """The buffer's part of /v1/status."""
        return {
            "size": self.size,
            "maxStaleness": self.max_staleness,
            "updates": len(self._updates),
            "staleness": [update.staleness for update in self._updates],
        }

    # -- changing --------------------------------------------------------------------------

    def open(self, *, now: float) -> None:
        """A new server update is in the making from `now` (clock time)."""
        self._updates = []
        self._opened, self._opened_wall = now, time.time()

    def add(self, update: BufferedUpdate, *, upload_id: str | None) -> None:
        self._updates.append(update)
        if upload_id is not None:
            self._last_uploads[update.report.site] = upload_id

    def record(
        self, *, version: int, present: list[str], seconds: float, aggregation_seconds: float
    ) -> RoundRecord:
        """The history row of the server update `version` made of the buffer's updates."""
        updates = self._updates
        record = summarize_round(
            round_number=version,
            sampled=sorted(set(present) | {u.report.site for u in updates}),
            reports=[update.report for update in updates],
            attempts=1,
            started_at=self._opened_wall,
            duration=seconds,
            aggregation_seconds=aggregation_seconds,
        )
        record.answered = sorted({u.report.site for u in updates})  # a site may send two
        stalenesses = [update.staleness for update in updates]
        record.buffer = {
            "size": self.size,
            "updates": [
                {"site": u.report.site, "baseVersion": u.base, "staleness": u.staleness}
                for u in updates
            ],
            "stalenessMean": statistics.fmean(stalenesses) if stalenesses else 0.0,
            "stalenessMax": max(stalenesses, default=0),
        }
        return record

    # -- written down and read back (journal.py, the checkpoint) -----------------------------

    def uploads_json(self) -> dict[str, str]:
        return dict(self._last_uploads)

    def restore_uploads(self, uploads: Mapping[str, Any]) -> None:
        self._last_uploads = {str(site): str(upload) for site, upload in uploads.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "updates": [update.to_json() for update in self._updates],
            "openedAt": self._opened_wall,
            "uploads": self.uploads_json(),
        }

    def restore(self, data: Mapping[str, Any], *, now: float) -> None:
        """The buffer written down with its sum (journal.py), as the books of `now`."""
        self._updates = [BufferedUpdate.from_json(update) for update in data["updates"]]
        self._opened_wall = float(data["openedAt"])
        self._opened = now - max(time.time() - self._opened_wall, 0.0)  # the downtime counts
        self.restore_uploads(data["uploads"])
