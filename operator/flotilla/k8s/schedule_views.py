"""What a schedule's decisions read of the objects it made: its jobs and its probe pods. Pure.

A job is active until its status says Succeeded or Failed (a suspended job is active, as a
CronJob counts it). A probe pod has answered once its container terminated: exit 0 with the
digest in its termination message, or a failure with the message it left.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from flotilla.k8s import objects as o

SCHEDULE_LABEL = "flotilla.dev/schedule"
CYCLE_LABEL = "flotilla.dev/probe-cycle"
PROBE_ROLE = "probe"
TRIGGER_ANNOTATION = "flotilla.dev/trigger"
SCHEDULED_AT_ANNOTATION = "flotilla.dev/scheduled-at"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# A digest as `flotilla data digest` writes it; anything else in a termination message is
# the pod's own words about a failure.
DIGEST = re.compile(r"^[a-z0-9]+:[A-Za-z0-9+/=._-]{8,128}$")
_MESSAGE_CHARS = 300

JobState = Literal["Active", "Succeeded", "Failed"]


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


@dataclass(frozen=True)
class JobView:
    name: str
    uid: str | None
    state: JobState
    created: str  # creationTimestamp (sortable as written)
    completed: str | None = None
    model: Mapping[str, Any] | None = None  # status.model once the job registered one

    @classmethod
    def from_api(cls, job: Mapping[str, Any]) -> JobView:
        metadata, status = job["metadata"], job.get("status") or {}
        phase = status.get("phase")
        state: JobState = phase if phase in ("Succeeded", "Failed") else "Active"
        return cls(
            name=metadata["name"],
            uid=metadata.get("uid"),
            state=state,
            created=metadata.get("creationTimestamp") or "",
            completed=status.get("completionTime"),
            model=status.get("model") or None,
        )

    @property
    def finished_at(self) -> str:
        return self.completed or self.created


def owned_jobs(jobs: list[Mapping[str, Any]], owner_uid: str | None) -> list[JobView]:
    """The schedule's jobs that are not being deleted: owned by it (its uid), when it has one."""
    found = []
    for job in jobs:
        metadata = job.get("metadata") or {}
        if metadata.get("deletionTimestamp"):
            continue
        owners = [ref.get("uid") for ref in metadata.get("ownerReferences") or []]
        if owner_uid is None or owner_uid in owners:
            found.append(JobView.from_api(job))
    return found


@dataclass(frozen=True)
class ProbeView:
    name: str
    site: str
    cycle: str
    answered: bool
    digest: str | None = None  # when it answered with one
    problem: str = ""  # when it answered without one, or, unanswered, what it waits for

    @classmethod
    def from_api(cls, pod: Mapping[str, Any]) -> ProbeView:
        metadata, status = pod["metadata"], pod.get("status") or {}
        labels = metadata.get("labels") or {}
        base = {
            "name": metadata["name"],
            "site": labels.get(o.SITE_LABEL, ""),
            "cycle": labels.get(CYCLE_LABEL, ""),
        }
        for container in status.get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if terminated is not None:
                return cls(**base, answered=True, **_answer(terminated))
        if status.get("phase") == "Failed":  # the kubelet gave up on it: deadline, eviction
            why = status.get("message") or status.get("reason") or "the pod failed"
            return cls(**base, answered=True, problem=_short(why))
        return cls(**base, answered=False, problem=_waiting(status))


def _answer(terminated: Mapping[str, Any]) -> dict[str, Any]:
    message = str(terminated.get("message") or "").strip()
    code = terminated.get("exitCode")
    if code == 0 and DIGEST.match(message):
        return {"digest": message}
    if code == 0:
        return {"problem": f"exited without a digest in its termination message: {_short(message)}"}
    reason = terminated.get("reason") or "Error"
    said = f": {_short(message)}" if message else ""
    return {"problem": f"exit code {code} ({reason}){said}"}


def _waiting(status: Mapping[str, Any]) -> str:
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting:
            text = waiting.get("reason") or "waiting"
            return _short(f"{text}: {waiting['message']}" if waiting.get("message") else text)
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return _short(f"unschedulable: {condition.get('message') or condition.get('reason')}")
    return f"phase {status.get('phase') or 'Pending'}"


def _short(text: str) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _MESSAGE_CHARS else flat[: _MESSAGE_CHARS - 3] + "..."


def probe_views(pods: list[Mapping[str, Any]]) -> list[ProbeView]:
    """The schedule's probe pods that are not being deleted."""
    return [
        ProbeView.from_api(pod)
        for pod in pods
        if not (pod.get("metadata") or {}).get("deletionTimestamp")
    ]
