"""Carry out a decision's actions (decide.py) against the API, in order, and say what the
API server refused. Client pods that follow one another are created in slow-start batches
(1, 2, 4, then 8 at a time), as Kubernetes' own controllers create pods: a job on 1,000
nodes does not wait for 1,000 round trips one after another (bench/README.md, the operator
at 1,000 nodes), and a server that fails (5xx, 429, no answer) is not sent the next batch.
Events keep the actions' order. Idempotent: objects are server-side applied (a PVC is
created once and left as it is: its spec is immutable once bound), a pod that exists is
left, a delete of what is gone is no error. A refusal that will not heal (failures.py:
admission, validation, quota, a kind the cluster does not serve) does not stop the rest:
it is returned for status and events. Anything else is raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, Protocol

from flotilla.k8s.actions import Action, Apply, CreatePod, Delete, DeletePod, Note
from flotilla.k8s.api import AlreadyExists, ApiError, Ref
from flotilla.k8s.failures import classify_answer
from flotilla.k8s.settle import Refused

_CREATE_ONLY = {"PersistentVolumeClaim"}  # its spec is immutable once bound
# Pods created at once, at most: half of KubeApi's 16 workers, so that a job's pods leave
# room for everything else the operator does meanwhile.
MAX_PARALLEL_CREATES = 8


class Recorder(Protocol):
    def info(self, reason: str, message: str) -> None: ...

    def warn(self, reason: str, message: str) -> None: ...


class Api(Protocol):
    """What of KubeApi (api.py) the actions use."""

    async def create(
        self, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]: ...

    async def apply(self, body: Mapping[str, Any], *, namespace: str | None = None) -> bool: ...

    async def delete(self, target: Ref) -> bool: ...


@dataclass
class _Refusals:
    aggregator: str | None = None
    serving: str | None = None
    pods: dict[str, str] = field(default_factory=dict)


async def carry_out(
    actions: Sequence[Action],
    *,
    api: Api,
    recorder: Recorder,
    namespace: str,
    replacements: MutableMapping[str, int],
) -> Refused:
    """`replacements` (site -> failed pods replaced) counts each failed pod once deleted."""
    out = _Refusals()
    for is_create, run in groupby(actions, key=lambda a: isinstance(a, CreatePod)):
        if is_create:
            await _create_pods(
                api, recorder, [a for a in run if isinstance(a, CreatePod)], namespace, out
            )
        else:
            await _carry_out_each(
                list(run),
                api=api,
                recorder=recorder,
                namespace=namespace,
                replacements=replacements,
                out=out,
            )
    return Refused(aggregator=out.aggregator, serving=out.serving, pods=out.pods)


async def _carry_out_each(
    actions: Sequence[Action],
    *,
    api: Api,
    recorder: Recorder,
    namespace: str,
    replacements: MutableMapping[str, int],
    out: _Refusals,
) -> None:
    for action in actions:
        match action:
            case Note(reason, message):
                recorder.info(reason, message)
            case Apply(part, objects):
                refusal = await _apply_all(api, recorder, objects, namespace)
                if part == "aggregator":
                    out.aggregator = refusal
                else:
                    out.serving = refusal
            case Delete(kind, name, why, api_version):
                if await api.delete(Ref(api_version, kind, name, namespace)):
                    recorder.info("Deleted", f"Deleted {kind} {name}: {why}")
            case DeletePod(name, site, node, why, replaced):
                await api.delete(Ref("v1", "Pod", name, namespace))
                recorder.info("Deleted", f"Deleted client Pod for node {node}: {why}")
                if replaced is not None:
                    replacements[site] = replaced


async def _create_pods(
    api: Api, recorder: Recorder, creates: Sequence[CreatePod], namespace: str, out: _Refusals
) -> None:
    """Slow start: batches of 1, 2, 4, then MAX_PARALLEL_CREATES; a failure that may heal
    stops before the next batch (raised once the batch's pods are accounted for)."""
    done, size = 0, 1
    while done < len(creates):
        batch = creates[done : done + size]
        results = await asyncio.gather(
            *(_create_pod(api, c.pod, namespace) for c in batch), return_exceptions=True
        )
        failure: BaseException | None = None
        for create, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
            elif result == _CREATED:
                recorder.info("Created", f"Created client Pod for node {create.node}")
            elif result is not None:
                out.pods[create.site] = result
        if failure is not None:
            raise failure
        done, size = done + len(batch), min(size * 2, MAX_PARALLEL_CREATES)


async def _apply_all(
    api: Api, recorder: Recorder, objects: Sequence[Mapping[str, Any]], namespace: str
) -> str | None:
    """Apply each object; the first refusal, if the server refused one."""
    refused: list[str] = []
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            await _apply_one(api, recorder, obj, namespace)
        except ApiError as error:
            if not classify_answer(error).permanent:
                raise
            refused.append(f"{kind} {name} refused: {error.detail}")
    return refused[0] if refused else None


async def _apply_one(api: Api, recorder: Recorder, obj: Mapping[str, Any], namespace: str) -> None:
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind in _CREATE_ONLY:
        try:
            await api.create(obj, namespace=namespace)
        except AlreadyExists:
            return
        created = True
    else:
        created = await api.apply(obj, namespace=namespace)
    if created:
        recorder.info("Created", f"Created {kind} {name}")


_CREATED = ""  # _create_pod's answer for a pod made now


async def _create_pod(api: Api, pod: Mapping[str, Any], namespace: str) -> str | None:
    """Create a client pod: _CREATED, None if it exists, or the server's lasting refusal."""
    try:
        await api.create(pod, namespace=namespace)
        return _CREATED
    except AlreadyExists:
        return None  # created by an earlier pass the pod index has not shown yet
    except ApiError as error:
        if not classify_answer(error).permanent:
            raise
        return f"pod {pod['metadata']['name']}: {error.detail}"
