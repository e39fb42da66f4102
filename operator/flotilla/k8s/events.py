"""Kubernetes Events about a job, as `kubectl describe fj` shows them: built here, posted by
the handlers through the API client. Pure.

The operator posts its own rather than through kopf's poster: kopf's works only inside the
tasks kopf runs per object, and the resync loop is not one of them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

COMPONENT = "flotilla-operator"
MAX_MESSAGE = 1024  # the API server refuses longer event messages

EventType = Literal["Normal", "Warning"]


@dataclass
class EventLog:
    """A Recorder (reconcile.py) that logs each event at once and keeps it to be posted."""

    logger: logging.Logger | logging.LoggerAdapter[Any]
    pending: list[tuple[EventType, str, str]] = field(default_factory=list)

    def info(self, reason: str, message: str) -> None:
        self.logger.info(message)
        self.pending.append(("Normal", reason, message))

    def warn(self, reason: str, message: str) -> None:
        self.logger.warning(message)
        self.pending.append(("Warning", reason, message))


def event(
    job: Mapping[str, Any], *, type: EventType, reason: str, message: str, now: str
) -> dict[str, Any]:
    """A core/v1 Event about `job` (its body as the API server returned it)."""
    metadata = job.get("metadata") or {}
    namespace = metadata.get("namespace") or "default"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{metadata.get('name', 'job')}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": job.get("apiVersion"),
            "kind": job.get("kind"),
            "name": metadata.get("name"),
            "namespace": namespace,
            "uid": metadata.get("uid"),
        },
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "type": type,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
