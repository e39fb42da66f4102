"""The operator's schedules as this process runs them: observe, decide (schedule_plan.py),
apply, write the status, post the events. No kopf: schedule_handlers.py wires it.

A loop of its own, not a kopf timer (a timer puts a finalizer on every object it serves:
`kubectl delete fsched` would hang while the operator is down). Every `interval` and
whenever a schedule changes, each schedule kopf has handled gets one pass; a tick is
acted upon within one interval of its time, whatever the cadence, as `decide` reads the
clock. The indexes lag behind what this process just did: for a minute, a job it created
counts as there and an object it deleted as gone, whatever they say.

A call the API server does not take is classified as a job's reconcile's is (failures.py).
A permanent refusal goes into the status (`Ready` JobRefused, or the site's probe failed);
a temporary one (a 503, a timeout, no answer) writes nothing of it: the job's tick stays due,
a probe pod is owed, and either is tried again once the failure's delay (Retry-After, or a
backoff) is out. Either kind makes the schedule wait out that delay, unless its spec or its
check-data annotation changes first.

`memo` is kopf's: "api" (jobs.py's), "schedules" ((namespace, name) -> ScheduleMemory, made
by schedule_handlers.py when kopf handles a schedule and dropped when it is deleted: a pass
never makes one), "schedules_kick" (an Event), "stopping".
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
from flotilla.k8s.failures import Failure, classify
from flotilla.k8s.jobs import ALL_NODES
from flotilla.k8s.schedule_plan import CreateJob, DeleteJob, ScheduleSeen, decide
from flotilla.k8s.schedule_probes import (
    CHECK_ANNOTATION,
    PROBE_TIMEOUT,
    CreateProbe,
    DeleteProbe,
)
from flotilla.k8s.schedule_status import (
    transitions,
    with_probe_refused,
    with_refusal,
    without_job,
)
from flotilla.k8s.schedule_views import TIME_FORMAT
from flotilla.k8s.status import status_patch

JOBS_INDEX = "scheduled_jobs"
PROBES_INDEX = "schedule_probes"
SCHEDULES_INDEX = "schedules"
LAG = timedelta(minutes=1)
CONCURRENCY = 8
Memo = MutableMapping[str, Any]
Key = tuple[str | None, str]
Action = CreateJob | DeleteJob | CreateProbe | DeleteProbe
View = tuple[Any, ...]
log = logging.getLogger(__name__)


@dataclass
class ScheduleMemory:
    status: dict[str, Any] | None = None  # as last written
    created: dict[str, datetime] = field(default_factory=dict)  # job name -> when
    deleted: dict[str, datetime] = field(default_factory=dict)  # job or pod name -> when
    # Probe pods the API server did not take for now: pod name -> (the create, first tried).
    owed: dict[str, tuple[CreateProbe, datetime]] = field(default_factory=dict)
    # The last pass's failure (failures.py), how many in a row, when to try again, and the
    # schedule's view then (a change of it is tried at once).
    failure: Failure | None = None
    attempts: int = 0
    retry_at: datetime | None = None
    failed_view: View | None = None

    def forget_old(self, now: datetime) -> None:
        for made in (self.created, self.deleted):
            for name in [n for n, at in made.items() if now - at > LAG]:
                del made[name]

    def failed(self, failure: Failure, *, now: datetime, view: View) -> None:
        self.failure, self.attempts = failure, self.attempts + 1
        self.retry_at = now + timedelta(seconds=failure.delay)
        self.failed_view = view

    def succeeded(self) -> None:
        self.failure, self.attempts, self.retry_at, self.failed_view = None, 0, None, None

    def due(self, now: datetime, view: View) -> bool:
        """May the loop run a pass now, or is it waiting out a failure's delay?"""
        return self.retry_at is None or now >= self.retry_at or view != self.failed_view


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
            if (body := next(iter(bodies), None)) is not None
            and (memory := known.get(key)) is not None
            and memory.due(now, view(body))
        ]
        await asyncio.gather(*passes)


async def run_schedule(
    body: Mapping[str, Any], memo: Memo, indexes: Mapping[str, Any], *, now: datetime
) -> None:
    """One pass over one schedule."""
    metadata = body["metadata"]
    key: Key = (metadata.get("namespace"), metadata["name"])
    # Deleted (or never handled) while this pass waited for its lane: a pass must not bring
    # the memory back, nothing would ever drop it again (jobs.reconcile_job does the same).
    memory: ScheduleMemory | None = memo["schedules"].get(key)
    if memory is None:
        return
    memory.forget_old(now)
    api: KubeApi = memo["api"]
    previous = memory.status if memory.status is not None else dict(body.get("status") or {})
    seen = _seen(indexes, key, metadata.get("uid"), memory)
    decision = decide(body, seen, previous=previous, now=now)
    status, events, failures = decision.status, [], []
    for action in [*decision.actions, *_owed(indexes, key, memory, decision.actions, now)]:
        try:
            note = await _apply(api, key, action, memory, now)
        except CALL_ERRORS as error:
            failure = _classified(error, memory)
            failures.append(failure)
            status = _failed(key, action, failure, error, status, previous, memory, now=now)
            continue
        if note is not None:
            events.append(note)
    events += transitions(previous, status)
    patch = status_patch(previous, status)
    try:
        if patch:
            await api.merge_patch(ref(body), {"status": patch}, subresource="status")
        memory.status = status
    except CALL_ERRORS as error:
        failure = _classified(error, memory)
        log.warning("FederatedSchedule %s/%s: the status was not written: %s", *key, error)
        memory.failed(failure, now=now, view=view(body))
        return  # the next pass decides again and writes it, with its events
    if failures:
        memory.failed(max(failures, key=lambda f: f.delay), now=now, view=view(body))
    else:
        memory.succeeded()
    await _post(api, body, events, now=now)


def view(body: Mapping[str, Any]) -> View:
    """What a user changes to have a waiting schedule tried at once: the spec (its
    generation) and the check-data annotation."""
    metadata = body.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    return metadata.get("generation"), annotations.get(CHECK_ANNOTATION)


def _classified(error: BaseException, memory: ScheduleMemory) -> Failure:
    failure = classify(error, attempt=memory.attempts)
    if failure is None:  # not an API failure: a bug, seen as it is
        raise error
    return failure


def _failed(
    key: Key,
    action: Action,
    failure: Failure,
    error: BaseException,
    status: dict[str, Any],
    previous: Mapping[str, Any],
    memory: ScheduleMemory,
    *,
    now: datetime,
) -> dict[str, Any]:
    """The status after the API server did not take `action`: a permanent refusal of a
    create is written into it; a temporary failure leaves the job due and the probe owed."""
    reason = getattr(error, "detail", None) or str(error)
    kind = "refused" if failure.permanent else f"failed, again in {failure.delay:.0f} s"
    log.warning("FederatedSchedule %s/%s: %s %s: %s", *key, type(action).__name__, kind, reason)
    if isinstance(action, CreateJob):
        if failure.permanent:
            return with_refusal(status, previous, message=reason, now=now)
        return without_job(status, previous)
    if isinstance(action, CreateProbe):
        if failure.permanent:
            memory.owed.pop(action.pod["metadata"]["name"], None)
            return with_probe_refused(status, action.site, reason)
        memory.owed.setdefault(action.pod["metadata"]["name"], (action, now))
    return status  # a delete the next pass decides again


def _owed(
    indexes: Mapping[str, Any],
    key: Key,
    memory: ScheduleMemory,
    actions: list[Action],
    now: datetime,
) -> list[CreateProbe]:
    """The probe pods a temporary failure kept from being made: to make now, unless they
    are there, asked for by this pass anyway, or so late their cycle has given up on them."""
    there = {pod["metadata"]["name"] for pod in indexes[PROBES_INDEX].get(key, [])}
    there |= {a.pod["metadata"]["name"] for a in actions if isinstance(a, CreateProbe)}
    for name, (_, since) in list(memory.owed.items()):
        if name in there or now - since > PROBE_TIMEOUT:
            del memory.owed[name]
    return [action for action, _ in memory.owed.values()]


async def _apply(
    api: KubeApi,
    key: Key,
    action: Action,
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
        memory.owed.pop(action.pod["metadata"]["name"], None)
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
