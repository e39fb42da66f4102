"""One level-based reconcile of a FederatedJob: observe -> decide (pure) -> apply -> settle.

Called on create, update and resume, and by the operator's resync loop (elasticity and
status). This module does the I/O only: it reads the job's two Secrets and the aggregator's
/v1/status beside what the indexes hold (`observe`), and carries out what decide.py chose
(apply.py); every choice is decide.py's, the status settle.py's. Idempotent: objects that
exist are left alone or applied again, pods are created or deleted, never patched. What the
cluster refuses (admission, quota, validation) does not stop it: the refusal goes into the
job's status and an event, and the rest goes on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from flotilla.api import FederatedJob, SpecError
from flotilla.k8s import objects as o
from flotilla.k8s.api import Ref
from flotilla.k8s.apply import Api, Recorder, carry_out
from flotilla.k8s.decide import Seen, Snapshot, decide
from flotilla.k8s.entropy import SYSTEM, Entropy
from flotilla.k8s.failures import Failure
from flotilla.k8s.settle import settle, settle_invalid
from flotilla.k8s.views import tls_in

REPLACEMENTS_ANNOTATION = "flotilla.dev/client-replacements"
Poll = Callable[[FederatedJob, str | None], Awaitable[Mapping[str, Any] | None]]


class ReadApi(Api, Protocol):
    async def get(self, target: Ref) -> dict[str, Any] | None: ...


@dataclass
class Context:
    api: ReadApi
    recorder: Recorder
    # The aggregator's /v1/status, over HTTPS verified against the CA given (PEM), if any.
    poll: Poll
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    defaults: o.ClusterDefaults = o.NO_DEFAULTS
    entropy: Entropy = SYSTEM  # where new tokens and TLS keys come from


@dataclass
class JobMemory:
    """What this operator process keeps of one job between reconciles; dropped when the
    job is deleted."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # site -> failed pods replaced; the job's annotation keeps it across operator restarts.
    replacements: dict[str, int] = field(default_factory=dict)
    placements: dict[str, str] = field(default_factory=dict)  # site -> node, as last planned
    warned: frozenset[str] = frozenset()  # warnings already posted as events
    status: dict[str, Any] | None = None  # the last status written, newer than an index's
    # The last reconcile's failure (failures.py), how many in a row, and when to try again.
    failure: Failure | None = None
    attempts: int = 0
    retry_at: datetime | None = None

    def failed(self, failure: Failure, *, now: datetime) -> None:
        self.failure, self.attempts = failure, self.attempts + 1
        self.retry_at = now + timedelta(seconds=failure.delay)

    def succeeded(self) -> None:
        self.failure, self.attempts, self.retry_at = None, 0, None

    def due(self, now: datetime) -> bool:
        """May the resync reconcile it now, or is it waiting out a failure's delay?"""
        return self.retry_at is None or now >= self.retry_at


@dataclass
class Outcome:
    status: dict[str, Any]
    annotations: dict[str, str] = field(default_factory=dict)


async def reconcile(
    ctx: Context, body: Mapping[str, Any], *, seen: Seen, full: bool, memory: JobMemory
) -> Outcome:
    now = ctx.now()
    try:
        job = FederatedJob.from_dict({k: v for k, v in body.items() if k != "status"})
    except SpecError as error:
        invalid = "; ".join(error.problems)
        previous, generation = _previous(body, memory)
        settled = settle_invalid(invalid, previous=previous, generation=generation, now=now)
        _post_warnings(settled.warnings, memory, ctx.recorder)
        return Outcome(settled.status)
    snapshot = await observe(ctx, job, body, seen=seen, memory=memory, full=full)
    decision = decide(job, snapshot, now=now, entropy=ctx.entropy, defaults=ctx.defaults)
    memory.replacements = dict(decision.replacements)
    refused = await carry_out(
        decision.actions,
        api=ctx.api,
        recorder=ctx.recorder,
        namespace=o.namespace(job),
        replacements=memory.replacements,
    )
    memory.placements = {p.site: p.node for p in decision.plan.placements}
    settled = settle(job, decision, refused, snapshot, now=now)
    _post_warnings(settled.warnings, memory, ctx.recorder)
    replacements = json.dumps(memory.replacements, sort_keys=True)
    return Outcome(settled.status, {REPLACEMENTS_ANNOTATION: replacements})


async def observe(
    ctx: Context,
    job: FederatedJob,
    body: Mapping[str, Any],
    *,
    seen: Seen,
    memory: JobMemory,
    full: bool,
) -> Snapshot:
    """Beside the indexes and the memory: the job's tokens and TLS Secrets by name, and the
    aggregator's answer (verified against the job's CA, once there is one)."""
    namespace = o.namespace(job)
    tokens = await ctx.api.get(Ref("v1", "Secret", o.tokens_secret_name(job), namespace))
    tls = None
    if job.spec.security.tls.enabled:
        tls = await ctx.api.get(Ref("v1", "Secret", o.tls_secret_name(job), namespace))
    material = tls_in(tls)
    answer = await ctx.poll(job, material.ca if material else None)
    previous, generation = _previous(body, memory)
    annotations = body["metadata"].get("annotations") or {}
    return Snapshot(
        seen=seen,
        tokens_secret=tokens,
        tls_secret=tls,
        answer=answer,
        previous=previous,
        generation=generation,
        replacements=dict(memory.replacements),
        recorded_replacements=annotations.get(REPLACEMENTS_ANNOTATION),
        placements=dict(memory.placements),
        full=full,
    )


def _previous(body: Mapping[str, Any], memory: JobMemory) -> tuple[dict[str, Any], int | None]:
    """The status last written (this process's is newer than an index's) and the generation."""
    previous = dict(memory.status or body.get("status") or {})
    return previous, body.get("metadata", {}).get("generation")


def _post_warnings(
    warnings: Sequence[tuple[str, str]], memory: JobMemory, recorder: Recorder
) -> None:
    """Post each warning once while it holds, rather than at every resync."""
    now = {f"{reason}: {message}" for reason, message in warnings}
    for reason, message in warnings:
        if f"{reason}: {message}" not in memory.warned:
            recorder.warn(reason, message)
    memory.warned = frozenset(now)
