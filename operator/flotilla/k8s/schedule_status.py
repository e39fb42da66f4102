"""A FederatedSchedule's status and the events its changes deserve. Pure.

Conditions (docs/schedules.md has the table with their meaning):
- `Ready`: True `Scheduling` (the next tick, the probe interval); False `Suspended`,
  `InvalidSpec` (naming the field), `JobRefused` (quoting the API server).
- `DataDigests` (with onDataChange): True `Recorded`; False `ProbeFailed` (naming each
  site not probed), `NoSites`; Unknown `FirstProbe`.
- `Waiting`: True `ConcurrencyForbid` (a due trigger waits for the running job); False.
- `MissedSchedule` (with a schedule): True `StartingDeadlineExceeded`; False `OnTime`.

A condition that turns to one of the states below is posted once as an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from flotilla.k8s.events import EventType
from flotilla.k8s.schedule_views import stamp

Conditions = dict[str, tuple[str, str, str]]  # type -> (status, reason, message)
CONDITION_TYPES = ("Ready", "DataDigests", "Waiting", "MissedSchedule")
_NOTABLE: dict[tuple[str, str], EventType] = {
    ("Ready", "False"): "Warning",
    ("DataDigests", "False"): "Warning",
    ("Waiting", "True"): "Normal",
    ("MissedSchedule", "True"): "Warning",
}
Event = tuple[EventType, str, str]  # type, reason, message


def assemble(
    status: Mapping[str, Any],
    conditions: Conditions,
    previous: Mapping[str, Any],
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The status to write: `status`'s fields without the empty ones, and the conditions
    with their transition times kept from `previous` while their status holds."""
    before = {c.get("type"): c for c in previous.get("conditions") or []}
    listed = []
    for kind in CONDITION_TYPES:
        if kind not in conditions:
            continue
        state, reason, message = conditions[kind]
        old = before.get(kind) or {}
        since = old.get("lastTransitionTime") if old.get("status") == state else None
        listed.append(
            {
                "type": kind,
                "status": state,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since or stamp(now),
                "observedGeneration": generation,
            }
        )
    kept = {key: value for key, value in status.items() if value not in (None, [], {}, "")}
    return {**kept, "observedGeneration": generation, "conditions": listed}


def transitions(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Event]:
    """Events for the conditions that came to a notable state (or a new reason in one)."""
    old = {c.get("type"): c for c in before.get("conditions") or []}
    events: list[Event] = []
    for condition in after.get("conditions") or []:
        kind = _NOTABLE.get((condition["type"], condition["status"]))
        previous = old.get(condition["type"]) or {}
        same = (previous.get("status"), previous.get("reason")) == (
            condition["status"],
            condition["reason"],
        )
        if kind is not None and not same:
            events.append((kind, condition["reason"], condition.get("message") or ""))
    return events


def with_refusal(
    status: Mapping[str, Any], previous: Mapping[str, Any], *, message: str, now: datetime
) -> dict[str, Any]:
    """The status after the API server refused to create a job: what the job would have
    consumed (the tick, the data change) stays due, and `Ready` says why, quoting it."""
    out = without_job(status, previous)
    conditions: Conditions = {
        c["type"]: (c["status"], c["reason"], c.get("message", ""))
        for c in status.get("conditions") or []
    }
    conditions["Ready"] = ("False", "JobRefused", message)
    rest = {k: v for k, v in out.items() if k not in ("conditions", "observedGeneration")}
    return assemble(rest, conditions, previous, status.get("observedGeneration"), now)


def without_job(status: Mapping[str, Any], previous: Mapping[str, Any]) -> dict[str, Any]:
    """The status as if the pass had not made its job (the API server did not, for now):
    what the job would have consumed (the tick, the data change) stays due."""
    out = dict(status)
    for key in ("lastScheduleTime", "lastTrigger", "pendingDataChange", "active"):
        if previous.get(key) is None:
            out.pop(key, None)
        else:
            out[key] = previous[key]
    return out


def with_probe_refused(status: Mapping[str, Any], site: str, message: str) -> dict[str, Any]:
    """The status after the API server refused a site's probe pod: the site has answered,
    with the refusal."""
    probe = dict(status.get("probe") or {})
    probe["failed"] = {**(probe.get("failed") or {}), site: f"probe pod refused: {message}"}
    return {**status, "probe": probe}
