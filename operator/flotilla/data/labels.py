"""The job's label list as the global index, a site's aliases, and the report of mismatches.

A site may call a label something else (``labelAliases``), have labels the job does not
know (ignored and reported, never mixed into a class) or lack some of the job's labels
(fine: reported as missing). The report travels with the data so the client can log it
and send it with its status and metrics.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flotilla.data.errors import DataSourceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelReport:
    """What a site's annotations held, against the job's labels."""

    ignored: Mapping[str, int]  # site label -> annotations skipped because the job lacks it
    aliased: Mapping[str, str]  # site label -> job label, the aliases actually used
    missing: tuple[str, ...]  # job labels with no annotation at this site
    frames: int  # frames read
    used: int  # frames that became samples
    unannotated: int  # frames without a usable annotation
    ambiguous: int  # classification: frames with two or more usable tags

    @property
    def mismatched(self) -> bool:
        return bool(self.ignored or self.missing)

    def as_metrics(self) -> dict[str, Any]:
        """JSON-safe camelCase form for the client's status and metrics."""
        return {
            "ignoredLabels": dict(self.ignored),
            "aliasedLabels": dict(self.aliased),
            "missingLabels": list(self.missing),
            "frames": self.frames,
            "used": self.used,
            "unannotated": self.unannotated,
            "ambiguous": self.ambiguous,
        }


class LabelMap:
    """Names to the job's indices through the site's aliases; remembers what it skipped."""

    def __init__(self, *, labels: Sequence[str], aliases: Mapping[str, str]) -> None:
        self.labels = tuple(labels)
        self._position = {name: i for i, name in enumerate(self.labels)}
        for site_name, job_name in aliases.items():
            if job_name not in self._position:
                raise DataSourceError(
                    f"labelAliases[{site_name!r}] maps to {job_name!r}, which is not one of the "
                    f"job's labels {list(self.labels)}"
                )
        self._aliases = dict(aliases)
        self._ignored: Counter[str] = Counter()
        self._aliased: dict[str, str] = {}
        self._seen: set[int] = set()

    def index(self, name: str) -> int | None:
        """The job's index of a site label, or None (counted as ignored)."""
        target = self._aliases.get(name, name)
        position = self._position.get(target)
        if position is None:
            self._ignored[name] += 1
            return None
        if target != name:
            self._aliased[name] = target
        return position

    def seen(self, index: int) -> None:
        self._seen.add(index)

    def report(self, *, frames: int, used: int, unannotated: int, ambiguous: int) -> LabelReport:
        missing = tuple(n for i, n in enumerate(self.labels) if i not in self._seen)
        return LabelReport(
            ignored=dict(self._ignored),
            aliased=dict(self._aliased),
            missing=missing,
            frames=frames,
            used=used,
            unannotated=unannotated,
            ambiguous=ambiguous,
        )
