"""Every decision about one FederatedSchedule: a pure function of the schedule, what the
operator sees of its jobs, probe pods and nodes, the status it last wrote, and the clock.

As a CronJob decides: the last tick at or before `now` is due unless a job was already made
for it (`lastScheduleTime`) or it is older than `startingDeadlineSeconds`. A data change
(probes, schedule_probes.py) is due until a job is made. A due trigger with a job still
running waits (`Forbid`: it runs when the job ends) or replaces it (`Replace`). One job for
whatever is due; finished jobs beyond the history limits go, oldest first. The I/O layer
(schedule_runner.py) carries out the actions, in order, and writes the status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flotilla.api import FederatedJob, SpecError
from flotilla.api.cron import latest_tick, next_tick
from flotilla.api.schedule import FederatedSchedule
from flotilla.k8s import schedule_jobs as sj
from flotilla.k8s.nodes import NodeInfo
from flotilla.k8s.schedule_probes import CreateProbe, DeleteProbe, ProbeStep, probe_step
from flotilla.k8s.schedule_status import Conditions, assemble
from flotilla.k8s.schedule_views import (
    JobView,
    owned_jobs,
    parse_time,
    probe_views,
    stamp,
)


@dataclass(frozen=True)
class ScheduleSeen:
    """What the operator's indexes hold for the schedule."""

    jobs: Sequence[Mapping[str, Any]] = ()  # FederatedJobs labelled with its name
    probe_pods: Sequence[Mapping[str, Any]] = ()
    nodes: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True)
class CreateJob:
    body: dict[str, Any]
    message: str  # the event's


@dataclass(frozen=True)
class DeleteJob:
    name: str
    message: str


Action = CreateJob | DeleteJob | CreateProbe | DeleteProbe


@dataclass
class Decision:
    actions: list[Action] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Due:
    """What asks for a job in this pass, and what making one consumes."""

    tick: datetime | None = None
    sites: list[str] = field(default_factory=list)
    missed: str | None = None  # a tick skipped past startingDeadlineSeconds

    def __bool__(self) -> bool:
        return self.tick is not None or bool(self.sites)


def decide(
    body: Mapping[str, Any], seen: ScheduleSeen, *, previous: Mapping[str, Any], now: datetime
) -> Decision:
    """`previous` is the status the operator last wrote (the body's, after a restart)."""
    generation = (body.get("metadata") or {}).get("generation")
    try:
        schedule = FederatedSchedule.from_dict(body)
    except SpecError as error:
        # Nothing is made; the probes stop. The jobs run on: the template did not change them.
        conditions: Conditions = {"Ready": ("False", "InvalidSpec", "; ".join(error.problems))}
        deletes: list[Action] = [DeleteProbe(p.name) for p in probe_views(list(seen.probe_pods))]
        status = {**previous, "probe": None}
        return Decision(deletes, assemble(status, conditions, previous, generation, now))
    template = FederatedJob.from_dict(_template_job(schedule, body))
    jobs = owned_jobs(list(seen.jobs), schedule.metadata.uid)
    decision = Decision()
    for job, why in sj.past_history(schedule, jobs):
        decision.actions.append(DeleteJob(job.name, f"Deleted FederatedJob {job.name}: {why}"))
    probes = probe_step(
        schedule,
        template,
        probes=probe_views(list(seen.probe_pods)),
        nodes=[NodeInfo.from_api(node) for node in seen.nodes],
        previous=previous,
        now=now,
    )
    decision.actions += probes.actions
    status = _observed(schedule, jobs, probes, previous)
    due = _due(schedule, previous, status, now)
    conditions = _ready(schedule, now) | _probe_condition(schedule, probes, previous)
    if schedule.spec.schedule is not None:
        missed = ("True", "StartingDeadlineExceeded", due.missed or "")
        conditions["MissedSchedule"] = missed if due.missed else ("False", "OnTime", "")
    active = [job for job in jobs if job.state == "Active"]
    conditions["Waiting"] = ("False", "NothingWaits", "")
    if due and not schedule.spec.suspend:
        made = _job_name(schedule, due, status) in {job.name for job in active}
        if active and not made and schedule.spec.concurrency_policy == "Forbid":
            names = ", ".join(job.name for job in active)
            message = f"{_what(due)} waits for {names} to finish"
            conditions["Waiting"] = ("True", "ConcurrencyForbid", message)
        else:
            active = _make_job(decision, schedule, body, due, active, status, now=now)
    status["active"] = [{"name": job.name, "uid": job.uid} for job in active]
    decision.status = assemble(status, conditions, previous, generation, now)
    return decision


def _template_job(schedule: FederatedSchedule, body: Mapping[str, Any]) -> dict[str, Any]:
    """The template as a FederatedJob named after the schedule (placement and probes read it)."""
    metadata = {"name": schedule.metadata.name, "namespace": schedule.metadata.namespace}
    return {
        "apiVersion": schedule.api_version,
        "kind": "FederatedJob",
        "metadata": {key: value for key, value in metadata.items() if value},
        "spec": body["spec"]["jobTemplate"]["spec"],
    }


def _observed(
    schedule: FederatedSchedule,
    jobs: Sequence[JobView],
    probes: ProbeStep,
    previous: Mapping[str, Any],
) -> dict[str, Any]:
    pending = set(previous.get("pendingDataChange") or []) | set(probes.changed)
    status: dict[str, Any] = {
        key: previous.get(key) for key in ("lastScheduleTime", "lastTrigger")
    } | {
        "lastSuccessfulTime": sj.last_successful_time(jobs, previous),
        "lastModel": sj.last_model(jobs, previous),
        "lastDigests": probes.digests,
        "pendingDataChange": sorted(pending) if schedule.spec.probes else [],
        "lastProbeTime": probes.last_probe_time,
        "probe": probes.cycle,
        "dataCheckRequest": probes.request,
    }
    return status


def _due(
    schedule: FederatedSchedule,
    previous: Mapping[str, Any],
    status: Mapping[str, Any],
    now: datetime,
) -> _Due:
    due = _Due(sites=list(status["pendingDataChange"]))
    spec = schedule.spec
    if spec.schedule is None:
        return due
    since = parse_time(previous.get("lastScheduleTime")) or parse_time(
        schedule.metadata.creation_timestamp
    )
    tick = latest_tick(spec.schedule, spec.time_zone, now)
    if since is None or tick <= since:
        return due
    late = (now - tick).total_seconds()
    deadline = spec.starting_deadline_seconds
    if deadline is not None and late > deadline:
        due.missed = (
            f"the tick at {stamp(tick)} was noticed {late:.0f} s late, past "
            f"startingDeadlineSeconds {deadline}: no job for it"
        )
        return due
    due.tick = tick
    return due


def _make_job(
    decision: Decision,
    schedule: FederatedSchedule,
    body: Mapping[str, Any],
    due: _Due,
    active: list[JobView],
    status: dict[str, Any],
    *,
    now: datetime,
) -> list[JobView]:
    """Create the one job all that is due asks for; Replace deletes the running ones first.
    Returns the jobs active afterwards."""
    job_name = _job_name(schedule, due, status)
    trigger: sj.TriggerType = "cron" if due.tick is not None else "dataChange"
    if due.tick is not None:
        status["lastScheduleTime"] = stamp(due.tick)
    init = sj.warm_start(schedule, status["lastModel"])
    start = f"warm start from {init}" if init else "starts from scratch"
    if schedule.spec.job_template.spec.model.init is not None:
        start = "starts from the template's spec.model.init"
    why = f"{_what(due)}; {start}"
    status["lastTrigger"] = {"type": trigger, "time": stamp(now), "job": job_name, "message": why}
    status["pendingDataChange"] = []  # the new job trains on the data as it is now
    made = next((job for job in active if job.name == job_name), None)
    if made is not None:  # made by an earlier pass whose status was not written
        return [made]
    for job in active:
        replaced = f"replaced by {job_name} (concurrencyPolicy Replace)"
        decision.actions.append(DeleteJob(job.name, f"Deleted FederatedJob {job.name}: {replaced}"))
    template = body["spec"]["jobTemplate"]
    at = due.tick or now
    made_job = sj.job_body(schedule, template, name=job_name, trigger=trigger, at=at, init=init)
    decision.actions.append(CreateJob(made_job, f"Created FederatedJob {job_name}: {why}"))
    return [JobView(name=job_name, uid=None, state="Active", created=stamp(now))]


def _job_name(schedule: FederatedSchedule, due: _Due, status: Mapping[str, Any]) -> str:
    if due.tick is not None:
        return sj.tick_job_name(schedule.metadata.name, due.tick)
    return sj.data_job_name(schedule.metadata.name, status)


def _what(due: _Due) -> str:
    parts = []
    if due.tick is not None:
        parts.append(f"the tick at {stamp(due.tick)}")
    if due.sites:
        parts.append(f"the data of site {', '.join(due.sites)} changed")
    return " and ".join(parts) or "nothing"


def _ready(schedule: FederatedSchedule, now: datetime) -> Conditions:
    spec = schedule.spec
    if spec.suspend:
        return {"Ready": ("False", "Suspended", "no new jobs or probes while spec.suspend is true")}
    said = []
    if spec.schedule is not None:
        tick = next_tick(spec.schedule, spec.time_zone, now)
        said.append(f"next tick at {stamp(tick)}")
    if spec.on_data_change is not None and spec.probes:
        every = timedelta(seconds=spec.on_data_change.check_interval_seconds)
        said.append(f"data probed every {every.total_seconds():g} s")
    return {"Ready": ("True", "Scheduling", "; ".join(said))}


def _probe_condition(
    schedule: FederatedSchedule, probes: ProbeStep, previous: Mapping[str, Any]
) -> Conditions:
    if not schedule.spec.probes:
        return {}
    if probes.condition is not None:
        return {"DataDigests": probes.condition}
    for entry in previous.get("conditions") or []:
        if entry.get("type") == "DataDigests":
            return {"DataDigests": (entry["status"], entry["reason"], entry.get("message", ""))}
    return {"DataDigests": ("Unknown", "FirstProbe", "the first probe records each site's digest")}
