"""The only module that talks to the Kubernetes API (besides kopf's own watching).

Through the official client, `kubernetes`: its dynamic client finds every kind by API
discovery (core kinds, the operator's CRDs, cert-manager's Certificate alike), so a new
kind needs no code here. What the operator owns it writes by server-side apply under one
field manager, `flotilla-operator`, forcing its fields: fields that users or other
controllers set stay theirs, and a field the operator stops sending goes. Pods, events and
a schedule's jobs are created (a pod's spec is immutable, an event is new each time, a
job is made once); statuses are merge-patched on the status subresource.

The client blocks: each call runs in this module's own small thread pool, so kopf's event
loop never waits on the API server. Its errors are translated at this edge (api_errors.py):
an answer into ApiError (AlreadyExists for a create that found its object), carrying what
failures.py needs; no answer into ConnectionError or TimeoutError. The connection is
whatever kopf logged in with (connection.py); a 401 logs in again once (a rotated service
account token) and repeats the call.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient, LazyDiscoverer
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from flotilla.k8s.api_errors import (
    CALL_ERRORS,
    AlreadyExists,
    ApiError,
    answered,
    unanswered,
    unserved,
)
from flotilla.k8s.connection import Connection, Login, authorize, configuration

__all__ = [
    "CALL_ERRORS",
    "FIELD_MANAGER",
    "AlreadyExists",
    "ApiError",
    "Connection",
    "KubeApi",
    "Ref",
    "ref",
]

FIELD_MANAGER = "flotilla-operator"
WORKERS = 16  # calls at once: the resyncs' lanes (jobs.py, schedule_runner.py) share them
TIMEOUT = (10.0, 30.0)  # seconds to connect, to answer
UNSERVED_FOR = 30.0  # seconds a kind the server did not list stays unlisted before a recheck
_MERGE = "application/merge-patch+json"
_APPLY = "application/apply-patch+yaml"


@dataclass(frozen=True)
class Ref:
    """One object (or, without a name, its collection) of a kind."""

    api_version: str
    kind: str
    name: str | None = None
    namespace: str | None = None

    def __str__(self) -> str:
        """As events name it: "Secret digits-tokens"."""
        return f"{self.kind} {self.name}" if self.name else self.kind


def ref(body: Mapping[str, Any], *, namespace: str | None = None) -> Ref:
    metadata = body.get("metadata") or {}
    return Ref(
        body["apiVersion"],
        body["kind"],
        metadata.get("name"),
        namespace or metadata.get("namespace"),
    )


class KubeApi:
    """get, create, apply, merge-patch, delete: awaitables that never block the event loop."""

    def __init__(
        self,
        connection: Connection,
        *,
        login: Login | None = None,  # credentials anew, after a 401
        on_error: Callable[[int], None] = lambda status: None,
    ) -> None:
        self._connection = connection
        self._login = login
        self._on_error = on_error
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="kube-api")
        self._files = Path(tempfile.mkdtemp(prefix="flotilla-kube-"))  # for urllib3's TLS
        self._lock = threading.Lock()  # discovery is not thread-safe
        self._dynamic: DynamicClient | None = None
        self._kinds: dict[tuple[str, str], Any] = {}  # (apiVersion, kind) -> its resource
        self._unserved: dict[tuple[str, str], float] = {}  # -> until when it counts as such

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._dynamic is not None:
            self._dynamic.client.close()
        shutil.rmtree(self._files, ignore_errors=True)

    async def get(self, target: Ref) -> dict[str, Any] | None:
        try:
            return await self._call("GET", target, expected=(404,))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def create(
        self, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        """POST; AlreadyExists if an object of that name is there."""
        target = ref(body, namespace=namespace)
        return await self._call("POST", target, body=body, expected=(409,))

    async def apply(self, body: Mapping[str, Any], *, namespace: str | None = None) -> bool:
        """Server-side apply: create the object, or make the fields the operator manages
        what `body` says, taking them from any other manager. True if it created it."""
        target = ref(body, namespace=namespace)
        options = {"field_manager": FIELD_MANAGER, "force_conflicts": True}
        call = _Call("PATCH", target, None, {"body": body, "content_type": _APPLY, **options})
        code, _ = await self._run(call)
        return code == 201

    async def merge_patch(
        self, target: Ref, body: Mapping[str, Any], *, subresource: str | None = None
    ) -> dict[str, Any]:
        """A JSON merge patch of an object that exists (of its status: "status")."""
        return await self._call(
            "PATCH", target, body=body, content_type=_MERGE, subresource=subresource
        )

    async def delete(self, target: Ref) -> bool:
        """True if something was deleted; the children follow in the background."""
        try:
            await self._call("DELETE", target, expected=(404,), propagation_policy="Background")
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def _call(
        self,
        method: str,
        target: Ref,
        *,
        expected: Collection[int] = (),  # answers the caller expects, not failures
        subresource: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        _, answer = await self._run(_Call(method, target, subresource, options, expected))
        return answer

    async def _run(self, call: _Call) -> tuple[int, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._blocking, call)

    def _blocking(self, call: _Call) -> tuple[int, dict[str, Any]]:
        """One call, in a worker thread; once more with new credentials after a 401."""
        for attempt in (1, 2):
            try:
                return self._send(call)
            except ApiException as error:
                if not error.status:  # the client's own: TLS
                    raise ConnectionError(f"{call.where}: {error.reason}") from error
                answer = answered(
                    error, method=call.method, target=call.where, creates=call.creates
                )
            except urllib3.exceptions.HTTPError as error:
                raise unanswered(error, target=call.where) from error
            if answer.status == 401 and attempt == 1 and self._relogin():
                continue
            if answer.status not in call.expected:
                self._on_error(answer.status)
            raise answer
        raise AssertionError("unreachable")

    def _send(self, call: _Call) -> tuple[int, dict[str, Any]]:
        resource = self._resource(call)
        collection = call.method == "POST"
        path = resource.path(
            name=None if collection else call.target.name, namespace=call.target.namespace
        )
        if call.subresource:
            path = f"{path}/{call.subresource}"
        response = self._client().request(
            call.method, path, serialize=False, _request_timeout=TIMEOUT, **call.options
        )
        data = response.data
        return int(response.status), json.loads(data) if data else {}

    def _client(self) -> DynamicClient:
        """Made in a worker thread at first use: discovery asks the server."""
        with self._lock:
            if self._dynamic is None:
                settings = configuration(self._connection, files=self._files, pool_size=WORKERS)
                never_written = str(self._files / "discovery.json")
                self._dynamic = DynamicClient(
                    k8s_client.ApiClient(settings),
                    cache_file=never_written,
                    discoverer=_InMemory,
                )
            return self._dynamic

    def _resource(self, call: _Call) -> Any:
        """The kind's resource as the server lists it; a 404 if the server does not serve
        the kind (for a while: each miss would ask for the whole discovery again)."""
        key = (call.target.api_version, call.target.kind)
        dynamic = self._client()
        with self._lock:
            if key in self._kinds:
                return self._kinds[key]
            if time.monotonic() < self._unserved.get(key, 0.0):
                raise self._not_served(call)
            try:
                # The prefix keeps a core kind's search to the core group: the v1 of every
                # group is not asked for.
                prefix = "apis" if "/" in key[0] else "api"
                found = dynamic.resources.get(prefix=prefix, api_version=key[0], kind=key[1])
            except ResourceNotFoundError:
                self._unserved[key] = time.monotonic() + UNSERVED_FOR
                raise self._not_served(call) from None
            self._kinds[key] = found
            return found

    @staticmethod
    def _not_served(call: _Call) -> ApiError:
        target = call.target
        return unserved(
            target.api_version,
            target.kind,
            method=call.method,
            target=call.where,
            creates=call.creates,
        )

    def _relogin(self) -> bool:
        """New credentials from kopf's login, if they differ from those in use."""
        fresh = self._login() if self._login else None
        if fresh is None or fresh == self._connection:
            return False
        with self._lock:
            self._connection = fresh
            if self._dynamic is not None:
                authorize(self._dynamic.client.configuration, fresh)
        return True


@dataclass(frozen=True)
class _Call:
    method: str
    target: Ref
    subresource: str | None
    options: dict[str, Any]
    expected: Collection[int] = ()

    @property
    def where(self) -> str:
        """The object, as messages name it: "FederatedJob digits (status)"."""
        return f"{self.target} ({self.subresource})" if self.subresource else str(self.target)

    @property
    def creates(self) -> bool:
        """A create, or an apply (which creates what is missing)."""
        return self.method == "POST" or self.options.get("content_type") == _APPLY


class _InMemory(LazyDiscoverer):  # type: ignore[misc]
    """Discovery kept in this process only: a restarted operator asks the server anew, and
    no file is left behind for another cluster at the same address to read."""

    def _write_cache(self) -> None:
        pass
