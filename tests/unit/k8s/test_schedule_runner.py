"""A schedule's pass as schedule_runner.py runs it, on a fake API: a failed call is
classified as a job's reconcile's is (a permanent refusal is written into the status, a
temporary failure is tried again after its backoff), and a pass never brings back the memory
of a deleted schedule."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import pytest

from flotilla.k8s.api import ApiError, Ref
from flotilla.k8s.failures import classify
from flotilla.k8s.schedule_runner import (
    JOBS_INDEX,
    PROBES_INDEX,
    SCHEDULES_INDEX,
    ScheduleMemory,
    run_schedule,
    schedules_forever,
    view,
)
from flotilla.k8s.schedule_status import with_refusal
from tests.unit.k8s.schedule_fixtures import NODES, condition, schedule, utc

HOURLY = {"schedule": "0 * * * *"}
KEY = ("ml", "nightly")
TICK = utc(2026, 5, 4, 10, 0, 5)  # 5 s after the hourly tick: a job is due


class FakeApi:
    """Records every call; `fail` maps a kind ("FederatedJob", "Pod") to the errors its
    creates raise, one per call, before they succeed."""

    def __init__(self, fail: Mapping[str, list[BaseException]] | None = None) -> None:
        self.fail = {kind: list(errors) for kind, errors in (fail or {}).items()}
        self.created: list[dict[str, Any]] = []
        self.patches: list[dict[str, Any]] = []
        self.gate: asyncio.Event | None = None  # when set: every call waits for it
        self.waiting = 0

    async def _wait(self) -> None:
        if self.gate is not None:
            self.waiting += 1
            await self.gate.wait()

    async def create(
        self, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        await self._wait()
        errors = self.fail.get(body["kind"]) or []
        if errors:
            raise errors.pop(0)
        self.created.append(dict(body))
        return dict(body)

    async def merge_patch(
        self, target: Ref, body: Mapping[str, Any], *, subresource: str | None = None
    ) -> dict[str, Any]:
        await self._wait()
        self.patches.append(dict(body))
        return dict(body)

    async def delete(self, target: Ref) -> bool:
        await self._wait()
        return True

    def made(self, kind: str) -> list[dict[str, Any]]:
        return [body for body in self.created if body["kind"] == kind]


def _indexes(*bodies: dict[str, Any]) -> dict[str, Any]:
    schedules = {(b["metadata"]["namespace"], b["metadata"]["name"]): [b] for b in bodies}
    return {SCHEDULES_INDEX: schedules, JOBS_INDEX: {}, PROBES_INDEX: {}, "nodes": {"all": NODES}}


def _memo(api: FakeApi, *keys: tuple[str, str]) -> dict[str, Any]:
    return {"api": api, "schedules": {key: ScheduleMemory() for key in keys or [KEY]}}


def _pass(
    body: dict[str, Any], memo: dict[str, Any], indexes: dict[str, Any], now: datetime
) -> None:
    asyncio.run(run_schedule(body, memo, indexes, now=now))


def _unavailable(retry_after: float | None = None) -> ApiError:
    return ApiError(
        503, "Service Unavailable", method="POST", creates=True, retry_after=retry_after
    )


@pytest.mark.parametrize(
    ("error", "delay"),
    [
        (_unavailable(retry_after=20), 20.0),
        (_unavailable(), 5.0),
        (TimeoutError("read timed out"), 5.0),
        (ConnectionError("connection refused"), 5.0),
    ],
    ids=["503 with Retry-After", "503", "timeout", "no answer"],
)
def test_a_temporary_failure_to_make_a_job_is_no_refusal_and_is_tried_after_its_backoff(
    error: BaseException, delay: float
) -> None:
    body = schedule(**HOURLY)
    api = FakeApi({"FederatedJob": [error]})
    memo, indexes = _memo(api), _indexes(body)

    _pass(body, memo, indexes, TICK)
    memory: ScheduleMemory = memo["schedules"][KEY]
    assert not api.made("FederatedJob")
    status = memory.status or {}
    assert condition(status, "Ready")[:2] == ("True", "Scheduling"), "no refusal written"
    assert "lastScheduleTime" not in status and "active" not in status, "the tick stays due"
    assert memory.failure is not None and not memory.failure.permanent
    assert memory.retry_at == TICK + timedelta(seconds=delay)
    assert not memory.due(TICK + timedelta(seconds=delay - 1), view(body))
    assert memory.due(TICK + timedelta(seconds=delay), view(body))

    # After the backoff, the same tick makes its job; the failure is forgotten.
    _pass(body, memo, indexes, TICK + timedelta(seconds=delay))
    (job,) = api.made("FederatedJob")
    assert memory.status is not None
    assert memory.status["lastScheduleTime"] == "2026-05-04T10:00:00Z"
    assert [a["name"] for a in memory.status["active"]] == [job["metadata"]["name"]]
    assert (memory.failure, memory.attempts, memory.retry_at) == (None, 0, None)


def test_temporary_failures_in_a_row_back_off_further() -> None:
    body = schedule(**HOURLY)
    api = FakeApi({"FederatedJob": [_unavailable(), _unavailable(), _unavailable()]})
    memo, indexes = _memo(api), _indexes(body)
    memory: ScheduleMemory = memo["schedules"][KEY]
    now, delays = TICK, []
    for _ in range(3):
        _pass(body, memo, indexes, now)
        assert memory.retry_at is not None
        delays.append((memory.retry_at - now).total_seconds())
        now = memory.retry_at
    assert delays == [5.0, 10.0, 20.0]
    assert memory.attempts == 3 and not api.made("FederatedJob")


def test_a_permanent_refusal_to_make_a_job_is_written_into_the_status() -> None:
    body = schedule(**HOURLY)
    quota = ApiError(403, "Forbidden", detail='exceeded quota: "jobs"', creates=True)
    api = FakeApi({"FederatedJob": [quota]})
    memo, indexes = _memo(api), _indexes(body)

    _pass(body, memo, indexes, TICK)
    memory: ScheduleMemory = memo["schedules"][KEY]
    status = memory.status or {}
    assert condition(status, "Ready") == ("False", "JobRefused", 'exceeded quota: "jobs"')
    assert "lastScheduleTime" not in status
    assert memory.failure is not None and memory.failure.permanent
    assert memory.retry_at == TICK + timedelta(seconds=30)
    # As before this change: the refusal is what with_refusal writes.
    assert condition(status, "Ready") == condition(
        with_refusal(status, {}, message='exceeded quota: "jobs"', now=TICK), "Ready"
    )


def test_a_change_of_the_spec_is_tried_at_once_whatever_the_backoff() -> None:
    body = schedule(**HOURLY)
    invalid = classify(ApiError(422, "Unprocessable Entity", creates=True))
    assert invalid is not None and invalid.permanent
    memory = ScheduleMemory()
    memory.failed(invalid, now=TICK, view=view(body))  # waits 30 s from TICK
    assert not memory.due(TICK + timedelta(seconds=1), view(body))
    changed = schedule(**HOURLY) | {"metadata": body["metadata"] | {"generation": 2}}
    assert memory.due(TICK + timedelta(seconds=1), view(changed))
    annotated = {"annotations": {"flotilla.dev/check-data": "1"}}
    probed = schedule(**HOURLY) | {"metadata": body["metadata"] | annotated}
    assert memory.due(TICK + timedelta(seconds=1), view(probed))


def test_a_probe_pod_that_failed_for_now_is_made_on_a_later_pass_not_refused() -> None:
    body = schedule(onDataChange={"enabled": True})
    api = FakeApi({"Pod": [TimeoutError("read timed out")]})
    memo, indexes = _memo(api), _indexes(body)
    start = utc(2026, 5, 4, 10)

    _pass(body, memo, indexes, start)
    memory: ScheduleMemory = memo["schedules"][KEY]
    assert len(api.made("Pod")) == 1, "one of the two sites' probe pods was made"
    assert not (memory.status or {}).get("probe", {}).get("failed"), "no site refused"
    assert len(memory.owed) == 1
    assert memory.retry_at == start + timedelta(seconds=5)

    _pass(body, memo, indexes, start + timedelta(seconds=5))
    pods = api.made("Pod")
    assert len({p["metadata"]["name"] for p in pods}) == 2, "the owed pod is made"
    assert memory.owed == {} and memory.failure is None


def test_a_probe_pod_refused_for_good_is_the_sites_failed_answer() -> None:
    body = schedule(onDataChange={"enabled": True})
    forbidden = ApiError(403, "Forbidden", detail='violates PodSecurity "restricted"')
    api = FakeApi({"Pod": [forbidden]})
    memo, indexes = _memo(api), _indexes(body)

    _pass(body, memo, indexes, utc(2026, 5, 4, 10))
    memory: ScheduleMemory = memo["schedules"][KEY]
    failed = (memory.status or {})["probe"]["failed"]
    assert list(failed.values()) == ['probe pod refused: violates PodSecurity "restricted"']
    assert memory.owed == {}


def test_a_failed_status_write_is_classified_and_waits_its_backoff() -> None:
    body = schedule(**HOURLY)
    api = FakeApi()

    async def unavailable(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise _unavailable(retry_after=7)

    api.merge_patch = unavailable  # type: ignore[method-assign]
    memo, indexes = _memo(api), _indexes(body)
    _pass(body, memo, indexes, TICK)
    memory: ScheduleMemory = memo["schedules"][KEY]
    assert memory.status is None, "not written"
    assert memory.retry_at == TICK + timedelta(seconds=7)


def test_a_pass_of_a_schedule_not_in_the_memo_makes_no_memory_and_no_call() -> None:
    body = schedule(**HOURLY)
    api = FakeApi()
    memo = {"api": api, "schedules": {}}
    _pass(body, memo, _indexes(body), TICK)
    assert memo["schedules"] == {} and api.created == [] and api.patches == []


def test_many_schedules_deleted_while_their_passes_wait_for_a_lane_leave_no_memory() -> None:
    count = 100
    bodies = []
    for n in range(count):
        body = schedule(**HOURLY)
        body["metadata"] |= {"name": f"nightly-{n}", "uid": f"uid-{n}"}
        bodies.append(body)
    keys = [("ml", f"nightly-{n}") for n in range(count)]
    api = FakeApi()
    api.gate = asyncio.Event()  # every call waits: the first passes hold every lane
    memo: dict[str, Any] = _memo(api, *keys) | {"schedules_kick": asyncio.Event()}
    indexes = _indexes(*bodies)

    async def play() -> None:
        loop = asyncio.create_task(schedules_forever(memo, indexes, interval=0.01))
        try:
            async with asyncio.timeout(10):
                while api.waiting < 8:  # CONCURRENCY passes in, the others wait for a lane
                    await asyncio.sleep(0.001)
            # Deleted, as schedule_handlers does on a DELETED event.
            for key in keys:
                memo["schedules"].pop(key, None)
                indexes[SCHEDULES_INDEX].pop(key, None)
            api.gate.set()
            await asyncio.sleep(0.2)  # the waiting passes run, and a few more loop rounds
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    asyncio.run(play())
    assert memo["schedules"] == {}
    # Only the passes that had started before the deletion made their job; no other did.
    assert len(api.made("FederatedJob")) <= 8
