"""What a failed call to the Kubernetes API means for a reconcile: the one place that says it.

Pure. A `Failure` is either permanent (the API server will not take the request as it is:
someone must change the spec, the rights, the cluster) or temporary (a conflict, a server
or network hiccup: the same request may pass later), with the seconds to wait before the
next try. The handlers turn it into kopf's PermanentError or TemporaryError; a permanent
one is also written into the job's status, as the condition `failure_condition` builds.

| the API answered | permanent | waits before the next try |
| --- | --- | --- |
| 400, 403, 405, 406, 413, 415, 422, any other 4xx | yes | 30 s, doubling to 5 min |
| 404 to a create or apply, or of a namespace (kind or namespace missing) | yes | as above |
| 404 of an object (it went away meanwhile: the next pass makes it) | no | 5 s, doubling |
| 401, 408, 409, 410, 429, 5xx | no | Retry-After, else 1 s (409) or 5 s, doubling to 5 min |
| nothing: connection refused or reset, timeout | no | 5 s, doubling to 5 min |

The condition's reason is the API server's own (`Invalid`, `Forbidden`...), else the code's
StatusReason; its message names the object ("Secret digits-tokens") and quotes the server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flotilla.k8s.api_errors import ApiError

CONDITION = "ReconcileFailure"
MAX_DELAY = 300.0
PERMANENT_DELAY = 30.0  # a permanent failure is tried again this late: the cluster may change
TEMPORARY_DELAY = 5.0
CONFLICT_DELAY = 1.0  # a 409 is another writer: read again, soon

# Kubernetes' StatusReason for each code, for a server that sent no Status body.
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    408: "Timeout",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}
_CAMEL_CASE = re.compile(r"^[A-Z][A-Za-z0-9]*$")  # as the CRD wants a condition's reason
# 4xx that heal by themselves: credentials refreshed, a slow request, another writer,
# an expired resource version, throttling.
_TEMPORARY_4XX = frozenset({401, 408, 409, 410, 429})


@dataclass(frozen=True)
class Failure:
    permanent: bool
    reason: str  # CamelCase, for the condition: the API server's own when it gave one
    message: str  # names the object and quotes the API server
    delay: float  # seconds before the next try


def classify(error: BaseException, *, attempt: int = 0) -> Failure | None:
    """The failure `error` is for a reconcile, or None when it is not about the API (a bug:
    let it be seen as it is). `attempt` counts the failures in a row before this one."""
    if isinstance(error, ApiError):
        return classify_answer(error, attempt=attempt)
    if isinstance(error, TimeoutError):
        return Failure(False, "Timeout", _unanswered(error), _backoff(TEMPORARY_DELAY, attempt))
    if isinstance(error, ConnectionError):  # api.py's for a call with no answer
        message = _unanswered(error)
        return Failure(False, "Unreachable", message, _backoff(TEMPORARY_DELAY, attempt))
    return None


def classify_answer(error: ApiError, *, attempt: int = 0) -> Failure:
    status = error.status
    reason = error.reason if _CAMEL_CASE.match(error.reason or "") else None
    reason = reason or REASONS.get(status) or f"Http{status}"
    message = f"{error.target or 'the Kubernetes API'}: {error.detail}"
    if status == 404:
        # A missing collection (the kind is not served, the namespace is gone) stays
        # missing; a missing object was deleted meanwhile, and the next pass makes it.
        # An apply makes what is missing: its 404 is always the collection's.
        collection = error.creates or error.missing == "namespaces"
        delay = PERMANENT_DELAY if collection else TEMPORARY_DELAY
        return Failure(collection, reason, message, _backoff(delay, attempt))
    if 400 <= status < 500 and status not in _TEMPORARY_4XX:
        return Failure(True, reason, message, _backoff(PERMANENT_DELAY, attempt))
    if error.retry_after is not None:
        return Failure(False, reason, message, min(max(error.retry_after, 1.0), MAX_DELAY))
    base = CONFLICT_DELAY if status == 409 else TEMPORARY_DELAY
    return Failure(False, reason, message, _backoff(base, attempt))


def failure_condition(
    failure: Failure, *, previous: Mapping[str, Any], now: str, generation: int | None
) -> dict[str, Any]:
    """The condition that says why the operator cannot make the job's objects as they
    are; present only while that holds (as a Deployment's ReplicaFailure)."""
    old: Mapping[str, Any] = next(
        (c for c in previous.get("conditions") or [] if c.get("type") == CONDITION),
        {},
    )
    return {
        "type": CONDITION,
        "status": "True",
        "reason": failure.reason,
        "message": failure.message,
        "lastTransitionTime": old.get("lastTransitionTime", now),
        "observedGeneration": generation,
    }


def with_failure(
    status: Mapping[str, Any], failure: Failure, *, now: str, generation: int | None
) -> dict[str, Any]:
    """`status` with the failure's condition in place of any earlier one."""
    condition = failure_condition(failure, previous=status, now=now, generation=generation)
    others = [c for c in status.get("conditions") or [] if c.get("type") != CONDITION]
    return {**status, "conditions": [*others, condition]}


def _backoff(base: float, attempt: int) -> float:
    return min(base * 2.0 ** min(attempt, 16), MAX_DELAY)


def _unanswered(error: BaseException) -> str:
    return f"the Kubernetes API did not answer: {type(error).__name__} {error}".rstrip()
