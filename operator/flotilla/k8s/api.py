"""The only module that talks to the Kubernetes API (besides kopf's own watching).

A thin aiohttp client: get, create, merge-patch, delete on the resources the operator
manages (what it reads in bulk, kopf watches for it), with API errors translated here into
ApiError and AlreadyExists, which carry what failures.py needs to classify them: the
request, the object, the API server's own reason and message, and its Retry-After. The
connection (server, CA, token or client certificate) is whatever kopf logged in with.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

# kind -> (API prefix, plural, namespaced)
RESOURCES: dict[str, tuple[str, str, bool]] = {
    "Pod": ("/api/v1", "pods", True),
    "Service": ("/api/v1", "services", True),
    "Secret": ("/api/v1", "secrets", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Event": ("/api/v1", "events", True),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "Certificate": ("/apis/cert-manager.io/v1", "certificates", True),
    "FederatedJob": ("/apis/flotilla.dev/v1alpha1", "federatedjobs", True),
}
TIMEOUT = aiohttp.ClientTimeout(total=30)


class ApiError(Exception):
    """An answer of 400 or more. `detail` is the API server's own message (its Status
    object's), for status and events; `target` the object, as "Secret digits-tokens"."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        detail: str | None = None,
        method: str = "",
        target: str = "",
        reason: str | None = None,  # the Status object's: Invalid, Forbidden, NotFound...
        retry_after: float | None = None,
        missing: str | None = None,  # a 404's details.kind: what was not found
    ) -> None:
        super().__init__(f"Kubernetes API answered {status}: {message}")
        self.status = status
        self.detail = detail or message
        self.method = method
        self.target = target
        self.reason = reason
        self.retry_after = retry_after
        self.missing = missing


class AlreadyExists(ApiError):
    pass


@dataclass(frozen=True)
class Connection:
    server: str
    token: str | None = None
    ca_path: str | None = None
    ca_data: str | None = None  # base64 PEM, as in a kubeconfig
    insecure: bool = False
    certificate_path: str | None = None
    private_key_path: str | None = None


def path(kind: str, *, namespace: str | None = None, name: str | None = None) -> str:
    prefix, plural, namespaced = RESOURCES[kind]
    where = f"/namespaces/{namespace}" if namespaced and namespace else ""
    return f"{prefix}{where}/{plural}" + (f"/{name}" if name else "")


class KubeApi:
    def __init__(
        self, connection: Connection, *, on_error: Callable[[int], None] = lambda status: None
    ) -> None:
        self.connection = connection
        self._on_error = on_error
        headers = {"Accept": "application/json"}
        if connection.token:
            headers["Authorization"] = f"Bearer {connection.token}"
        self._session = aiohttp.ClientSession(
            base_url=connection.server.rstrip("/") + "/",
            headers=headers,
            timeout=TIMEOUT,
            connector=aiohttp.TCPConnector(ssl=_ssl_context(connection)),
        )

    async def close(self) -> None:
        await self._session.close()

    async def get(self, url: str) -> dict[str, Any] | None:
        async with self._session.get(url.lstrip("/")) as response:
            if response.status == 404:
                return None
            return await _json(response, self._on_error, target=describe(url))

    async def create(self, url: str, body: Mapping[str, Any]) -> dict[str, Any]:
        target = describe(url, body)
        async with self._session.post(url.lstrip("/"), json=body) as response:
            if response.status == 409:
                raise AlreadyExists(409, f"{target} exists", method="POST", target=target)
            return await _json(response, self._on_error, target=target)

    async def merge_patch(self, url: str, body: Mapping[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self._session.patch(url.lstrip("/"), json=body, headers=headers) as response:
            return await _json(response, self._on_error, target=describe(url))

    async def delete(self, url: str) -> bool:
        """True if something was deleted; the children follow in the background."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        async with self._session.delete(url.lstrip("/"), json=body) as response:
            if response.status == 404:
                return False
            await _json(response, self._on_error, target=describe(url))
            return True


def describe(url: str, body: Mapping[str, Any] | None = None) -> str:
    """The object a request is about, as events name it: "Secret digits-tokens",
    "FederatedJob digits (status)", "Pod" for a collection without a body."""
    parts = [part for part in url.split("/") if part]
    kinds = {plural: kind for kind, (_, plural, _) in RESOURCES.items()}
    at = next(
        (i for i, part in enumerate(parts) if part in kinds and parts[i - 1] != "namespaces"),
        None,
    )
    if at is None:
        return url
    kind, rest = kinds[parts[at]], parts[at + 1 :]
    name = rest[0] if rest else ((body or {}).get("metadata") or {}).get("name")
    text = f"{kind} {name}" if name else kind
    return f"{text} ({rest[1]})" if len(rest) > 1 else text


async def _json(
    response: aiohttp.ClientResponse,
    on_error: Callable[[int], None] = lambda status: None,
    *,
    target: str = "",
) -> dict[str, Any]:
    if response.status >= 400:
        on_error(response.status)
        text = await response.text()
        status = _status_object(text)
        details = status.get("details")
        details = details if isinstance(details, dict) else {}
        retry = details.get("retryAfterSeconds") or response.headers.get("Retry-After")
        message = status.get("message")
        raise ApiError(
            response.status,
            f"{response.method} {response.url.path}: {text[:500]}",
            detail=str(message)[:1000] if message else None,
            method=response.method,
            target=target,
            reason=str(status["reason"]) if status.get("reason") else None,
            retry_after=_seconds(retry),
            missing=str(details["kind"]) if details.get("kind") else None,
        )
    data: dict[str, Any] = await response.json(content_type=None)
    return data


def _status_object(text: str) -> dict[str, Any]:
    """The Kubernetes Status body the server sent, if it sent JSON."""
    try:
        body = json.loads(text)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _seconds(value: object) -> float | None:
    """Retry-After in seconds (Kubernetes sends a number, never an HTTP date)."""
    try:
        seconds = float(str(value))
    except ValueError:
        return None
    return seconds if 0 <= seconds < 86400 else None


def _ssl_context(connection: Connection) -> ssl.SSLContext | bool:
    if not connection.server.startswith("https:"):
        return False
    if connection.insecure:
        return False
    context = ssl.create_default_context(cafile=connection.ca_path)
    if connection.ca_data:
        context.load_verify_locations(cadata=base64.b64decode(connection.ca_data).decode())
    if connection.certificate_path:
        context.load_cert_chain(connection.certificate_path, connection.private_key_path)
    return context
