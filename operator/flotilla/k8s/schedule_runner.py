"""The operator's schedules as this process runs them: observe, decide (schedule_plan.py),
apply, write the status, post the events. No kopf: schedule_handlers.py wires it.

A loop of its own, not a kopf timer (a timer puts a finalizer on every object it serves:
`kubectl delete fsched` would hang while the operator is down). Every `interval` and
whenever a schedule changes, each schedule kopf has handled gets one pass; a tick is
acted upon within one interval of its time, whatever the cadence, as `decide` reads the
clock. The indexes lag behind what this process just did: for a minute, a job it created
counts as there and an object it deleted as gone, whatever they say.

`memo` is kopf's: "api" (jobs.py's), "schedules" ((namespace, name) -> ScheduleMemory),
"schedules_kick" (an Event), "stopping".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from flotilla.api import API_VERSION, KIND
from flotilla.k8s.api import CALL_ERRORS, AlreadyExists, KubeApi, Ref, ref
from flotilla.k8s.events import EventType, event
from flotilla.k8s.jobs import ALL_NODES
from flotilla.k8s.schedule_plan import CreateJob, DeleteJob, ScheduleSeen, decide
from flotilla.k8s.schedule_probes import CreateProbe, DeleteProbe
from flotilla.k8s.schedule_status import transitions, with_probe_refused, with_refusal
from flotilla.k8s.schedule_views import TIME_FORMAT
from flotilla.k8s.status import status_patch

JOBS_INDEX = "scheduled_jobs"
PROBES_INDEX = "schedule_probes"
SCHEDULES_INDEX = "schedules"
LAG = timedelta(minutes=1)
CONCURRENCY = 8
Memo = MutableMapping[str, Any]
Key = tuple[str | None, str]
log = logging.getLogger(__name__)


@dataclass
class ScheduleMemory:
    status: dict[str, Any] | None = None  # as last written
    created: dict[str, datetime] = field(default_factory=dict)  # job name -> when
    deleted: dict[str, datetime] = field(default_factory=dict)  # job or pod name -> when

    def forget_old(self, now: datetime) -> None:
        for made in (self.created, self.deleted):
            for name in [n for n, at in made.items() if now - at > LAG]:
                del made[name]


async def schedules_forever(memo: Memo, indexes: Mapping[str, Any], interval: float) -> None:
    kick: asyncio.Event = memo["schedules_kick"]
    lanes = asyncio.Semaphore(CONCURRENCY)

    async def one(key: Key, body: Mapping[str, Any], now: datetime) -> None:
        async with lanes:
            try:
                await run_schedule(body, memo, indexes, now=now)
            except Exception:  # one schedule's trouble must not stop the others
                log.exception("FederatedSchedule %s/%s: the pass failed", *key)

    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await kick.wait()
        kick.clear()
        if memo.get("stopping") or "api" not in memo:
            continue
        known: dict[Key, ScheduleMemory] = memo["schedules"]
        now = datetime.now(UTC)
        passes = [
            one(key, body, now)
            for key, bodies in list(indexes[SCHEDULES_INDEX].items())
            if key in known and (body := next(iter(bodies), None)) is not None
        ]
        await asyncio.gather(*passes)


async def run_schedule(
    body: Mapping[str, Any], memo: Memo, indexes: Mapping[str, Any], *, now: datetime
) -> None:
    """One pass over one schedule."""
    metadata = body["metadata"]
    key: Key = (metadata.get("namespace"), metadata["name"])
    memory: ScheduleMemory = memo["schedules"].setdefault(key, ScheduleMemory())
    memory.forget_old(now)
    api: KubeApi = memo["api"]
    previous = memory.status if memory.status is not None else dict(body.get("status") or {})
    seen = _seen(indexes, key, metadata.get("uid"), memory)
    decision = decide(body, seen, previous=previous, now=now)
    status, events = decision.status, []
    for action in decision.actions:
        try:
            note = await _apply(api, key, action, memory, now)
        except CALL_ERRORS as error:
            reason = getattr(error, "detail", None) or str(error)
            if isinstance(action, CreateJob):
                status = with_refusal(status, previous, message=reason, now=now)
            elif isinstance(action, CreateProbe):
                status = with_probe_refused(status, action.site, reason)
            else:
                log.warning("FederatedSchedule %s/%s: %s", *key, reason)
            continue
        if note is not None:
            events.append(note)
    events += transitions(previous, status)
    patch = status_patch(previous, status)
    if patch:
        await api.merge_patch(ref(body), {"status": patch}, subresource="status")
    memory.status = status
    await _post(api, body, events, now=now)


async def _apply(
    api: KubeApi,
    key: Key,
    action: CreateJob | DeleteJob | CreateProbe | DeleteProbe,
    memory: ScheduleMemory,
    now: datetime,
) -> tuple[EventType, str, str] | None:
    namespace = key[0]
    if isinstance(action, CreateJob):
        with contextlib.suppress(AlreadyExists):  # made before a restart, or by a lagging pass
            await api.create(action.body, namespace=namespace)
        memory.created[action.body["metadata"]["name"]] = now
        return ("Normal", "Created", action.message)
    if isinstance(action, CreateProbe):
        with contextlib.suppress(AlreadyExists):
            await api.create(action.pod, namespace=namespace)
        return None
    what = Ref(API_VERSION, KIND) if isinstance(action, DeleteJob) else Ref("v1", "Pod")
    deleted = await api.delete(replace(what, name=action.name, namespace=namespace))
    memory.deleted[action.name] = now
    memory.created.pop(action.name, None)
    if isinstance(action, DeleteJob) and deleted:
        return ("Normal", "Deleted", action.message)
    return None


def _seen(
    indexes: Mapping[str, Any], key: Key, uid: str | None, memory: ScheduleMemory
) -> ScheduleSeen:
    jobs = [
        job
        for job in indexes[JOBS_INDEX].get(key, [])
        if job["metadata"]["name"] not in memory.deleted
    ]
    names = {job["metadata"]["name"] for job in jobs}
    owner = [{"uid": uid}] if uid else []
    jobs += [
        {"metadata": {"name": name, "ownerReferences": owner}}
        for name in memory.created
        if name not in names
    ]
    probes = [
        pod
        for pod in indexes[PROBES_INDEX].get(key, [])
        if pod["metadata"]["name"] not in memory.deleted
    ]
    nodes = list(indexes["nodes"].get(ALL_NODES, []))
    return ScheduleSeen(jobs=jobs, probe_pods=probes, nodes=nodes)


async def _post(
    api: KubeApi,
    body: Mapping[str, Any],
    events: list[tuple[EventType, str, str]],
    *,
    now: datetime,
) -> None:
    """Post the pass's events; one that cannot be posted is only logged."""
    stamp = now.strftime(TIME_FORMAT)
    namespace = body["metadata"].get("namespace") or "default"
    for kind, reason, message in events:
        (log.warning if kind == "Warning" else log.info)(
            "FederatedSchedule %s/%s: %s", namespace, body["metadata"]["name"], message
        )
        try:
            await api.create(event(body, type=kind, reason=reason, message=message, now=stamp))
        except CALL_ERRORS as error:
            log.warning("could not post the event %r: %s", message, error)
