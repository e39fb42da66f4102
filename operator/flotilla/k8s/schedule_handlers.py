"""The kopf wiring of FederatedSchedules: thin handlers over schedule_runner.py.

Indexes of the schedules, their jobs and their probe pods (watches: no API call per
object); an event handler that lets the loop take a schedule once kopf has filled its
indexes (kopf runs it only then) and wakes the loop when a schedule changes; the loop
itself, started and stopped with the operator. No timer and no change handler: either
would put a finalizer or kopf's bookkeeping on every schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import kopf

from flotilla.api import API_GROUP
from flotilla.k8s import objects as o
from flotilla.k8s.crd import VERSION
from flotilla.k8s.schedule_crd import PLURAL
from flotilla.k8s.schedule_probes import CHECK_ANNOTATION
from flotilla.k8s.schedule_runner import (
    JOBS_INDEX,
    PROBES_INDEX,
    SCHEDULES_INDEX,
    ScheduleMemory,
    schedules_forever,
)
from flotilla.k8s.schedule_views import PROBE_ROLE, SCHEDULE_LABEL

INTERVAL = 10.0


def register_schedules(registry: kopf.OperatorRegistry, *, interval: float = INTERVAL) -> None:
    """Put the schedules' handlers into `registry`, beside the jobs' (handlers.py)."""
    resource = (API_GROUP, VERSION, PLURAL)

    @kopf.on.startup(registry=registry)
    async def _start_schedules(memo: kopf.Memo, **kwargs: Any) -> None:
        memo["schedules"] = {}  # (namespace, name) -> ScheduleMemory
        memo["schedules_seen"] = {}  # (namespace, name) -> what wakes the loop when it changes
        memo["schedules_kick"] = asyncio.Event()
        loop = schedules_forever(memo, kwargs, interval)
        memo["schedules_loop"] = asyncio.create_task(loop)

    @kopf.on.cleanup(registry=registry)
    async def _stop_schedules(memo: kopf.Memo, **_: Any) -> None:
        memo["schedules_loop"].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await memo["schedules_loop"]

    @kopf.index(*resource, id=SCHEDULES_INDEX, registry=registry)
    def schedules(*, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
        return {(namespace, name): dict(body)}

    @kopf.index(
        API_GROUP, VERSION, "federatedjobs", id=JOBS_INDEX,
        labels={SCHEDULE_LABEL: kopf.PRESENT}, registry=registry,
    )  # fmt: skip
    def scheduled_jobs(
        *, body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> Any:
        return {(namespace, labels[SCHEDULE_LABEL]): dict(body)}

    @kopf.index("pods", id=PROBES_INDEX, labels={o.ROLE_LABEL: PROBE_ROLE}, registry=registry)
    def schedule_probes(
        *, body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> Any:
        return {(namespace, labels.get(SCHEDULE_LABEL)): dict(body)}

    # `when` keeps kopf from logging a handler run for every status the loop writes.
    @kopf.on.event(*resource, when=_news, registry=registry)
    def _schedule_changed(
        *, event: Mapping[str, Any], body: kopf.Body, namespace: str | None, name: str,
        memo: kopf.Memo, **_: Any,
    ) -> None:  # fmt: skip
        key = (namespace, name)
        if event.get("type") == "DELETED":
            memo["schedules"].pop(key, None)
            memo["schedules_seen"].pop(key, None)
            return
        memo["schedules"].setdefault(key, ScheduleMemory())
        memo["schedules_seen"][key] = _view(body)
        memo["schedules_kick"].set()


def _news(
    *, event: Mapping[str, Any], body: kopf.Body, namespace: str | None, name: str,
    memo: kopf.Memo, **_: Any,
) -> bool:  # fmt: skip
    seen = memo.get("schedules_seen")
    if seen is None:
        return False
    key = (namespace, name)
    return event.get("type") == "DELETED" or seen.get(key) != _view(body)


def _view(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a user changes: the spec (its generation) and the check-data annotation."""
    metadata = body.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    return metadata.get("uid"), metadata.get("generation"), annotations.get(CHECK_ANNOTATION)
