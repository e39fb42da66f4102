"""Which failed API calls heal by themselves, and how long a reconcile waits before the next
try: the classifier as a table, and the condition a permanent failure leaves in status."""

from __future__ import annotations

import pytest

from flotilla.k8s.api import AlreadyExists, ApiError
from flotilla.k8s.failures import CONDITION, Failure, classify, with_failure


def _answer(
    status: int,
    *,
    method: str = "PATCH",
    reason: str | None = None,
    retry_after: float | None = None,
    missing: str | None = None,
    creates: bool = False,
) -> ApiError:
    return ApiError(
        status,
        f"{method} /api/v1/namespaces/ml/secrets/digits-tokens: ...",
        detail="the server's message",
        method=method,
        target="Secret digits-tokens",
        reason=reason,
        retry_after=retry_after,
        missing=missing,
        creates=creates,
    )


@pytest.mark.parametrize(
    ("error", "permanent", "reason", "delay"),
    [
        (_answer(400), True, "BadRequest", 30),
        (_answer(403, reason="Forbidden"), True, "Forbidden", 30),
        (_answer(405), True, "MethodNotAllowed", 30),
        (_answer(413), True, "RequestEntityTooLarge", 30),
        (_answer(422, reason="Invalid"), True, "Invalid", 30),
        (_answer(418), True, "Http418", 30),
        # A create or an apply into a collection that is not there: the kind is not
        # served, or the namespace is gone. A patch of an object deleted meanwhile heals
        # at the next pass.
        (_answer(404, method="POST", creates=True), True, "NotFound", 30),
        (_answer(404, method="PATCH", creates=True, missing="Certificate"), True, "NotFound", 30),
        (_answer(404, method="GET", missing="namespaces"), True, "NotFound", 30),
        (_answer(404, method="PATCH", missing="deployments"), False, "NotFound", 5),
        (_answer(401), False, "Unauthorized", 5),
        (_answer(409, reason="Conflict"), False, "Conflict", 1),
        (AlreadyExists(409, "Pod p exists", method="POST"), False, "Conflict", 1),
        (_answer(410), False, "Expired", 5),
        (_answer(429, reason="TooManyRequests", retry_after=3), False, "TooManyRequests", 3),
        (_answer(429), False, "TooManyRequests", 5),
        (_answer(500, reason="InternalError"), False, "InternalError", 5),
        (_answer(503, retry_after=7), False, "ServiceUnavailable", 7),
        (_answer(503, retry_after=0), False, "ServiceUnavailable", 1),  # never at once
        (_answer(503, retry_after=3600), False, "ServiceUnavailable", 300),
        (_answer(504), False, "Timeout", 5),
        (_answer(599), False, "Http599", 5),
        # api.py turns the client's "no answer" into these.
        (TimeoutError("Secret digits-tokens: ReadTimeoutError"), False, "Timeout", 5),
        (ConnectionError("Secret digits-tokens: NewConnectionError"), False, "Unreachable", 5),
        (ConnectionResetError(), False, "Unreachable", 5),
    ],
)
def test_each_answer_is_permanent_or_temporary_with_its_delay(
    error: BaseException, permanent: bool, reason: str, delay: float
) -> None:
    failure = classify(error)

    assert failure is not None
    assert (failure.permanent, failure.reason, failure.delay) == (permanent, reason, delay)


def test_the_message_names_the_object_and_quotes_the_server() -> None:
    failure = classify(_answer(422, reason="Invalid"))

    assert failure is not None
    assert failure.message == "Secret digits-tokens: the server's message"


def test_a_reason_the_crd_would_refuse_is_replaced_by_the_codes() -> None:
    failure = classify(_answer(422, reason="not camel case"))

    assert failure is not None and failure.reason == "Invalid"


def test_retries_back_off_to_five_minutes_unless_the_server_says_when() -> None:
    def delays(error: ApiError) -> list[float]:
        return [failure.delay for n in range(10) if (failure := classify(error, attempt=n))]

    assert delays(_answer(503)) == [5, 10, 20, 40, 80, 160, 300, 300, 300, 300]
    assert delays(_answer(409)) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert delays(_answer(422)) == [30, 60, 120, 240, 300, 300, 300, 300, 300, 300]
    assert set(delays(_answer(429, retry_after=2))) == {2}


def test_what_is_not_about_the_api_is_left_as_it_is() -> None:
    assert classify(KeyError("metadata")) is None
    assert classify(ValueError("a bug")) is None


def test_a_permanent_failure_is_a_condition_kept_until_it_changes() -> None:
    failure = Failure(True, "Invalid", "Deployment digits-aggregator: spec.selector: immutable", 30)
    status = {
        "phase": "Running",
        "conditions": [{"type": "Running", "status": "True", "reason": "RoundsInProgress"}],
    }

    first = with_failure(status, failure, now="2026-01-01T00:00:00Z", generation=3)
    again = with_failure(first, failure, now="2026-01-01T00:05:00Z", generation=3)

    assert first["phase"] == "Running"  # the job goes on: only this call fails
    assert first["conditions"][0] == status["conditions"][0]
    assert first["conditions"][1] == {
        "type": CONDITION,
        "status": "True",
        "reason": "Invalid",
        "message": "Deployment digits-aggregator: spec.selector: immutable",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 3,
    }
    assert again == first
