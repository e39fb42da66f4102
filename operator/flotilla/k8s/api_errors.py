"""What a failed call to the Kubernetes API was, as api.py raises it: the client's exceptions
translated once, at the edge, into what failures.py classifies.

An answer of 400 or more is an ApiError: the request, the object, the API server's reason
and message (its Status object's), its Retry-After, what a 404 did not find; AlreadyExists
for a create that found its object. No answer is a ConnectionError, or a TimeoutError.
"""

from __future__ import annotations

import json
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException


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
        creates: bool = False,  # a create, or an apply (which creates what is missing)
    ) -> None:
        super().__init__(f"Kubernetes API answered {status}: {message}")
        self.status = status
        self.detail = detail or message
        self.method = method
        self.target = target
        self.reason = reason
        self.retry_after = retry_after
        self.missing = missing
        self.creates = creates


class AlreadyExists(ApiError):
    pass


# What a call to the API may raise besides a bug: an answer, or none.
CALL_ERRORS = (ApiError, ConnectionError, TimeoutError)


def answered(error: ApiException, *, method: str, target: str, creates: bool) -> ApiError:
    """The client's exception, with what the server said in its Status object."""
    body = error.body.decode(errors="replace") if isinstance(error.body, bytes) else error.body
    status = _status_object(body or "")
    details = status.get("details")
    details = details if isinstance(details, dict) else {}
    retry = details.get("retryAfterSeconds") or (error.headers or {}).get("Retry-After")
    message = status.get("message")
    kind = AlreadyExists if error.status == 409 and method == "POST" else ApiError
    return kind(
        int(error.status),
        f"{method} {target}: {(body or str(error.reason))[:500]}",
        detail=str(message)[:1000] if message else None,
        method=method,
        target=target,
        reason=str(status["reason"]) if status.get("reason") else None,
        retry_after=_seconds(retry),
        missing=str(details["kind"]) if details.get("kind") else None,
        creates=creates,
    )


def unserved(api_version: str, kind: str, *, method: str, target: str, creates: bool) -> ApiError:
    """A kind that API discovery does not list: the answer a request for it would get."""
    return ApiError(
        404,
        f"the server does not serve {kind} ({api_version})",
        method=method,
        target=target,
        reason="NotFound",
        missing=kind,
        creates=creates,
    )


def unanswered(error: urllib3.exceptions.HTTPError, *, target: str) -> Exception:
    cause = getattr(error, "reason", None) or error
    text = f"{target}: {type(cause).__name__} {cause}"
    refused = isinstance(cause, urllib3.exceptions.NewConnectionError)  # a timeout's subclass
    if isinstance(cause, urllib3.exceptions.TimeoutError) and not refused:
        return TimeoutError(text)
    return ConnectionError(text)


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
