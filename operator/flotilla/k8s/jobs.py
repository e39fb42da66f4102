"""The operator's jobs as this process runs them: one reconcile of a job at a time, the
status and annotations it writes, the events it posts, its memory, the resync loop, and
what becomes of a failure. No kopf: the handlers turn `Failed` into kopf's errors.

Every failure of a reconcile is classified once (failures.py). A permanent one is written
into the job's status as the `ReconcileFailure` condition, naming the object and quoting
the API server, and posted once as a Warning event. Either kind makes the resync wait out
its delay (Retry-After, or a backoff) and then apply everything again, until a reconcile
succeeds and the condition goes.

`memo` is kopf's: "api", "metrics", "defaults", "jobs" ((namespace, name) -> JobMemory,
dropped when a job is deleted), "kick" (an Event that starts a resync now), "stopping".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

from flotilla.api import API_VERSION, KIND
from flotilla.k8s.api import CALL_ERRORS, ApiError, KubeApi, Ref
from flotilla.k8s.decide import TIME_FORMAT, Seen
from flotilla.k8s.events import EventLog, event
from flotilla.k8s.failures import CONDITION, Failure, classify, with_failure
from flotilla.k8s.metrics import OperatorMetrics
from flotilla.k8s.reconcile import Context, JobMemory, Outcome, Poll, reconcile
from flotilla.k8s.serving import newest_versions
from flotilla.k8s.status import status_patch

RESYNC_CONCURRENCY = 16
ALL_NODES = "all"  # the one key of the nodes index
Memo = MutableMapping[str, Any]
Logger = logging.Logger | logging.LoggerAdapter[Any]
log = logging.getLogger(__name__)


class Failed(Exception):
    """A reconcile that failed, classified."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


async def reconcile_job(
    body: Mapping[str, Any],
    memo: Memo,
    indexes: Mapping[str, Any],
    *,
    poll: Poll,
    change: bool,
    logger: Logger = log,
) -> None:
    """Reconcile one job: for a `change` (create, update, resume) or a resync."""
    if memo.get("stopping"):  # the API session is closed
        return
    metadata = body["metadata"]
    key = (metadata.get("namespace"), metadata["name"])
    jobs: dict[tuple[str | None, str], JobMemory] = memo["jobs"]
    # Gone from the index: deleted, and forgotten (forget) or about to be. A handler kopf
    # runs again for it, or a resync that waited for a lane, must not bring its memory
    # back: nothing would ever drop it again. A resync only finds the memory a change made.
    if key not in indexes["jobs"]:
        return
    memory = jobs.setdefault(key, JobMemory()) if change else jobs.get(key)
    if memory is None:
        return
    metrics: OperatorMetrics = memo["metrics"]
    api: KubeApi = memo["api"]
    # The resync and the change handlers may fire together: one reconcile of a job at a time.
    async with memory.lock:
        events = EventLog(logger)
        context = Context(api=api, recorder=events, poll=poll, defaults=memo["defaults"])
        now = context.now()
        if not (change or memory.due(now)):  # it failed while this resync waited for it
            return
        # After a failure, a resync applies everything again: the failed call is among them.
        full = change or memory.failure is not None
        try:
            with metrics.reconcile_seconds.labels("change" if change else "resync").time():
                outcome = await reconcile(
                    context, body, seen=_seen(indexes, key), full=full, memory=memory
                )
            await _write(api, body, key, memory, outcome)
        except Exception as error:
            metrics.reconcile_errors.labels(type(error).__name__).inc()
            failure = classify(error, attempt=memory.attempts)
            if failure is None:
                raise
            await _failed(api, body, memory, failure, events, now=now)
            raise Failed(failure) from error
        finally:
            await _post(api, body, events, now=now)
        memory.succeeded()
    if key in jobs:  # not deleted meanwhile: its metrics would stay
        metrics.observed(key[0] or "", key[1], outcome.status)


async def resync_forever(
    memo: Memo, indexes: Mapping[str, Any], poll: Poll, interval: float
) -> None:
    """Reconcile every job kopf has handled, each `interval` or when a node changes; a job
    that failed waits out its failure's delay."""
    kick: asyncio.Event = memo["kick"]
    # Jobs side by side, a bounded number at once: one whose aggregator does not answer
    # (its poll waits out a timeout) must not hold up the status of the others.
    lanes = asyncio.Semaphore(RESYNC_CONCURRENCY)

    async def resync(key: tuple[str, str], body: Mapping[str, Any]) -> None:
        async with lanes:
            try:
                await reconcile_job(dict(body), memo, indexes, poll=poll, change=False)
            except Failed as failed:
                failure = failed.failure
                log.warning(
                    "resync of FederatedJob %s/%s failed (%s), again in %.0f s: %s",
                    *key,
                    "permanent" if failure.permanent else "temporary",
                    failure.delay,
                    failure.message,
                )
            except Exception:  # one job's trouble must not stop the others' resync
                log.exception("resync of FederatedJob %s/%s failed", *key)

    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):  # wait_for may swallow a cancellation (3.11)
                await kick.wait()
        kick.clear()
        now = datetime.now(UTC)
        due = [
            resync(key, body)
            for key, bodies in list(indexes["jobs"].items())
            # Not yet handled by kopf in this process: its indexes may still be filling.
            if (memory := memo["jobs"].get(key)) is not None
            and memory.due(now)
            and (body := next(iter(bodies), None)) is not None
        ]
        await asyncio.gather(*due)


def forget(memo: Memo, namespace: str | None, name: str) -> None:
    """Drop what this process keeps of a deleted job (owner references delete its objects)."""
    memo.get("jobs", {}).pop((namespace, name), None)
    if "metrics" in memo:
        memo["metrics"].forget(namespace or "", name)


def _seen(indexes: Mapping[str, Any], key: tuple[str | None, str]) -> Seen:
    return Seen(
        nodes=list(indexes["nodes"].get(ALL_NODES, [])),
        pods=list(indexes["client_pods"].get(key, [])),
        aggregator_pods=list(indexes["aggregator_pods"].get(key, [])),
        deployment=next(iter(indexes["aggregator_deployments"].get(key, [])), None),
        serving_deployment=next(iter(indexes["serving_deployments"].get(key, [])), None),
        newest_models=newest_versions(job for bodies in indexes["jobs"].values() for job in bodies),
    )


async def _write(
    api: KubeApi,
    body: Mapping[str, Any],
    key: tuple[str | None, str],
    memory: JobMemory,
    outcome: Outcome,
) -> None:
    """Write the status and the annotations that changed; nothing once the job is gone.
    Merge patches, not applies: an apply would make the job again were it deleted meanwhile."""
    job = Ref(API_VERSION, KIND, key[1], key[0])
    patch = status_patch(memory.status or body.get("status") or {}, outcome.status)
    annotations = body["metadata"].get("annotations") or {}
    changed = {k: v for k, v in outcome.annotations.items() if annotations.get(k) != v}
    try:
        if patch:
            await api.merge_patch(job, {"status": patch}, subresource="status")
        memory.status = outcome.status
        if changed:
            await api.merge_patch(job, {"metadata": {"annotations": changed}})
    except ApiError as error:
        if error.status != 404:
            raise
        log.debug("FederatedJob %s/%s was deleted during its reconcile", *key)


async def _failed(
    api: KubeApi,
    body: Mapping[str, Any],
    memory: JobMemory,
    failure: Failure,
    events: EventLog,
    *,
    now: datetime,
) -> None:
    """Remember the failure; a permanent one goes into the job's status as the
    ReconcileFailure condition, and into a Warning event once while it holds."""
    said = memory.failure.message if memory.failure else None
    memory.failed(failure, now=now)
    if not failure.permanent:
        return
    if failure.message != said:
        events.warn(CONDITION, failure.message)
    metadata = body["metadata"]
    before = memory.status or body.get("status") or {}
    generation = metadata.get("generation")
    after = with_failure(before, failure, now=now.strftime(TIME_FORMAT), generation=generation)
    job = Ref(API_VERSION, KIND, metadata["name"], metadata.get("namespace"))
    try:
        patch = status_patch(before, after)
        if patch:
            await api.merge_patch(job, {"status": patch}, subresource="status")
        memory.status = after
    except CALL_ERRORS as error:
        log.warning("could not write the failure into the status: %s", error)


async def _post(api: KubeApi, body: Mapping[str, Any], events: EventLog, *, now: datetime) -> None:
    """Post what the reconcile recorded; an event that cannot be posted is only logged."""
    stamp = now.strftime(TIME_FORMAT)
    for kind, reason, message in events.pending:
        try:
            await api.create(event(body, type=kind, reason=reason, message=message, now=stamp))
        except CALL_ERRORS as error:
            log.warning("could not post the event %r: %s", message, error)
