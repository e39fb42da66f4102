"""Carry out a decision's actions (decide.py) against the API, in order, and say what the
API server refused. Idempotent: an object that exists is patched (a PVC left as it is), a
pod that exists is left, a delete of what is gone is no error. A refusal that will not heal
(failures.py: admission, validation, quota, a kind the cluster does not serve) does not stop
the rest: it is returned for status and events. Anything else is raised.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from flotilla.k8s.actions import Action, Apply, CreatePod, Delete, DeletePod, Note
from flotilla.k8s.api import AlreadyExists, ApiError, path
from flotilla.k8s.failures import classify_answer
from flotilla.k8s.settle import Refused

_KEEP_ON_UPDATE = {"PersistentVolumeClaim"}  # its spec is immutable once bound


class Recorder(Protocol):
    def info(self, reason: str, message: str) -> None: ...

    def warn(self, reason: str, message: str) -> None: ...


class Api(Protocol):
    """What of KubeApi (api.py) the actions use."""

    async def create(self, url: str, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def merge_patch(self, url: str, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def delete(self, url: str) -> bool: ...


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
            case Delete(kind, name, why):
                if await api.delete(path(kind, namespace=namespace, name=name)):
                    recorder.info("Deleted", f"Deleted {kind} {name}: {why}")
            case DeletePod(name, site, node, why, replaced):
                await api.delete(path("Pod", namespace=namespace, name=name))
                recorder.info("Deleted", f"Deleted client Pod for node {node}: {why}")
                if replaced is not None:
                    replacements[site] = replaced
            case CreatePod(site, node, pod):
                refusal = await _create_pod(api, recorder, pod, node, namespace)
                if refusal:
                    out.pods[site] = refusal
    return Refused(aggregator=out.aggregator, serving=out.serving, pods=out.pods)


async def _apply_all(
    api: Api, recorder: Recorder, objects: Sequence[Mapping[str, Any]], namespace: str
) -> str | None:
    """Create or patch each object; the first refusal, if the server refused one."""
    refused: list[str] = []
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            await _create_or_patch(api, recorder, obj, namespace)
        except ApiError as error:
            if not classify_answer(error).permanent:
                raise
            refused.append(f"{kind} {name} refused: {error.detail}")
    return refused[0] if refused else None


async def _create_or_patch(
    api: Api, recorder: Recorder, obj: Mapping[str, Any], namespace: str
) -> None:
    kind, name = obj["kind"], obj["metadata"]["name"]
    try:
        await api.create(path(kind, namespace=namespace), obj)
        recorder.info("Created", f"Created {kind} {name}")
    except AlreadyExists:
        if kind in _KEEP_ON_UPDATE:
            return
        update = {k: v for k, v in obj.items() if k in ("metadata", "spec", "stringData", "data")}
        await api.merge_patch(path(kind, namespace=namespace, name=name), update)


async def _create_pod(
    api: Api, recorder: Recorder, pod: Mapping[str, Any], node: str, namespace: str
) -> str | None:
    """Create a client pod; the server's refusal, if it refused it."""
    try:
        await api.create(path("Pod", namespace=namespace), pod)
        recorder.info("Created", f"Created client Pod for node {node}")
    except AlreadyExists:
        pass  # created by an earlier pass the pod index has not shown yet
    except ApiError as error:
        if not classify_answer(error).permanent:
            raise
        return f"pod {pod['metadata']['name']}: {error.detail}"
    return None
