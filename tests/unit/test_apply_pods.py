"""Client pods are created in slow-start batches (1, 2, 4, then 8 at a time), their events in
the actions' order; a lasting refusal is reported and the rest go on; a failure that may
heal stops before the next batch."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from flotilla.k8s.actions import CreatePod, Note
from flotilla.k8s.api import AlreadyExists, ApiError, Ref
from flotilla.k8s.apply import MAX_PARALLEL_CREATES, carry_out


class Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def info(self, reason: str, message: str) -> None:
        self.events.append((reason, message))

    def warn(self, reason: str, message: str) -> None:
        self.events.append((reason, message))


class SlowApi:
    """Each create takes a little while, answered out of order; records how many overlap."""

    def __init__(self, answers: Mapping[str, Exception] | None = None) -> None:
        self.answers = dict(answers or {})
        self.created: list[str] = []
        self.batches: list[int] = []
        self._running = 0

    async def create(
        self, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self._running += 1
        self.batches.append(self._running)
        await asyncio.sleep(0.001 * (hash(name) % 5))  # out of order
        self._running -= 1
        if name in self.answers:
            raise self.answers[name]
        self.created.append(name)
        return dict(body)

    async def apply(self, body: Mapping[str, Any], *, namespace: str | None = None) -> bool:
        raise AssertionError("no apply here")

    async def delete(self, target: Ref) -> bool:
        raise AssertionError("no delete here")


def _creates(count: int) -> list[CreatePod]:
    return [
        CreatePod(f"site-{i}", f"node-{i}", {"metadata": {"name": f"pod-{i}"}})
        for i in range(count)
    ]


def _run(api: SlowApi, actions: list[Any]) -> tuple[Any, Recorded]:
    recorder = Recorded()
    refused = asyncio.run(
        carry_out(actions, api=api, recorder=recorder, namespace="ns", replacements={})
    )
    return refused, recorder


def test_a_thousand_pods_go_in_slow_start_batches_and_their_events_keep_the_order() -> None:
    api = SlowApi()
    _, recorder = _run(api, [Note("Planned", "first"), *_creates(1000), Note("Done", "last")])

    assert sorted(api.created) == sorted(f"pod-{i}" for i in range(1000))
    assert max(api.batches) == MAX_PARALLEL_CREATES
    assert api.batches[:3] == [1, 1, 2]  # one alone, then two together
    assert recorder.events[0] == ("Planned", "first")
    assert recorder.events[-1] == ("Done", "last")
    assert [m for _, m in recorder.events[1:-1]] == [
        f"Created client Pod for node node-{i}" for i in range(1000)
    ]


def test_a_lasting_refusal_is_reported_and_the_other_pods_are_made() -> None:
    quota = ApiError(403, "exceeded quota", detail="exceeded quota: pods=3", reason="Forbidden")
    api = SlowApi({"pod-2": quota, "pod-4": AlreadyExists(409, "exists")})

    refused, recorder = _run(api, _creates(6))

    assert refused.pods == {"site-2": "pod pod-2: exceeded quota: pods=3"}
    assert sorted(api.created) == ["pod-0", "pod-1", "pod-3", "pod-5"]
    assert [m for _, m in recorder.events] == [
        f"Created client Pod for node node-{i}" for i in (0, 1, 3, 5)
    ]


def test_a_failure_that_may_heal_stops_before_the_next_batch() -> None:
    busy = ApiError(503, "the server is busy", reason="ServiceUnavailable")
    api = SlowApi({"pod-1": busy})  # the second batch: pods 1 and 2

    with pytest.raises(ApiError, match="busy"):
        _run(api, _creates(20))

    assert sorted(api.created) == ["pod-0", "pod-2"]  # the batch ran out; no later batch
