"""The jobs a schedule makes and keeps: built from its template, named, pruned. Pure.

A job is the template's spec as written (the API server already checked it against the
CRD), owned by the schedule and labelled with its name. Its jobs are one lineage: unless
the template says otherwise they register one model and log to one experiment, both named
after the schedule, and each job warm-starts from the champion, the version the promotion
gate's alias points at (the registration alias without a gate), once a job of the schedule
registered a model.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from flotilla.api import API_VERSION, KIND
from flotilla.api.schedule import FederatedSchedule
from flotilla.k8s.probe_pods import schedule_owner
from flotilla.k8s.schedule_views import (
    SCHEDULE_LABEL,
    SCHEDULED_AT_ANNOTATION,
    TRIGGER_ANNOTATION,
    JobView,
    stamp,
)

TriggerType = Literal["cron", "dataChange"]


def tick_job_name(schedule: str, tick: datetime) -> str:
    """As a CronJob names its Jobs: the tick's minutes since the epoch."""
    return f"{schedule}-{int(tick.timestamp()) // 60}"


def data_job_name(schedule: str, previous: Mapping[str, Any]) -> str:
    """From the probe that saw the change and the digests it saw: the same name however
    often the operator (restarted, retried) decides to make this job."""
    seen = [previous.get("lastProbeTime"), sorted((previous.get("lastDigests") or {}).items())]
    suffix = hashlib.sha256(json.dumps(seen).encode()).hexdigest()[:7]
    return f"{schedule}-d{suffix}"


def warm_start(schedule: FederatedSchedule, last_model: Mapping[str, Any] | None) -> str | None:
    """`models:/NAME@ALIAS` for the next job, or None: the template names its own init, or
    no job of the schedule registered a model yet (the first job starts from scratch)."""
    spec = schedule.spec.job_template.spec
    if spec.model.init is not None or not spec.tracking.enabled or not last_model:
        return None
    gate = spec.tracking.promotion
    alias = gate.alias if gate is not None else spec.tracking.alias
    return f"models:/{last_model['name']}@{alias}"


def job_body(
    schedule: FederatedSchedule,
    template: Mapping[str, Any],
    *,
    name: str,
    trigger: TriggerType,
    at: datetime,
    init: str | None,
) -> dict[str, Any]:
    """The FederatedJob to create; `template` is the schedule's spec.jobTemplate as written."""
    meta = schedule.spec.job_template.metadata
    spec = copy.deepcopy(dict(template["spec"]))
    tracking = spec.setdefault("tracking", {})
    if tracking.get("enabled", True):
        tracking.setdefault("registeredModel", schedule.metadata.name)
        tracking.setdefault("experiment", schedule.metadata.name)
    if init is not None:
        spec["model"] = {**spec["model"], "init": init}
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {**meta.labels, SCHEDULE_LABEL: schedule.metadata.name},
        "annotations": {
            **meta.annotations,
            TRIGGER_ANNOTATION: trigger,
            SCHEDULED_AT_ANNOTATION: stamp(at),
        },
        "ownerReferences": [schedule_owner(schedule)],
    }
    if schedule.metadata.namespace:
        metadata["namespace"] = schedule.metadata.namespace
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


def past_history(schedule: FederatedSchedule, jobs: Sequence[JobView]) -> list[tuple[JobView, str]]:
    """Finished jobs beyond the history limits, oldest first, each with why it goes."""
    spec = schedule.spec
    doomed: list[tuple[JobView, str]] = []
    for state, limit, field in (
        ("Succeeded", spec.successful_jobs_history_limit, "successfulJobsHistoryLimit"),
        ("Failed", spec.failed_jobs_history_limit, "failedJobsHistoryLimit"),
    ):
        finished = sorted((j for j in jobs if j.state == state), key=_age, reverse=True)
        doomed += [(job, f"past {field} {limit}") for job in reversed(finished[limit:])]
    return doomed


def _age(job: JobView) -> tuple[str, str]:
    return job.finished_at, job.name


def last_model(jobs: Sequence[JobView], previous: Mapping[str, Any]) -> dict[str, Any] | None:
    """The model of the job that succeeded last, else the one the status kept (its job may
    be gone: history limits)."""
    registered = sorted((j for j in jobs if j.state == "Succeeded" and j.model), key=_age)
    if registered:
        return dict(registered[-1].model or {})
    kept = previous.get("lastModel")
    return dict(kept) if kept else None


def last_successful_time(jobs: Sequence[JobView], previous: Mapping[str, Any]) -> str | None:
    times = [j.finished_at for j in jobs if j.state == "Succeeded"]
    kept = previous.get("lastSuccessfulTime")
    return max([*times, *([kept] if kept else [])], default=None)
