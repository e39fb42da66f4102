"""Data probes: one short-lived pod per site that reports a digest of the site's data. Pure.

A probe pod (probe_pods.py) writes a digest of its site's data's identity (never the data)
to its termination message and exits; the operator reads it from the pod's status and
deletes the pod. One cycle at a time: every site's pod starts together, and the cycle ends
when each has answered or `PROBE_TIMEOUT` passed. A site that could not be probed keeps
its last digest and triggers nothing.

`probe_step` is the cycle's state machine over the status the operator wrote
(`status.probe`, `lastDigests`, `lastProbeTime`) and the pods it sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flotilla.api import FederatedJob, SpecError
from flotilla.api.schedule import FederatedSchedule
from flotilla.k8s.nodes import NodeInfo, placements
from flotilla.k8s.probe_pods import TIMEOUT_SECONDS, probe_pod
from flotilla.k8s.schedule_views import ProbeView, parse_time, stamp

PROBE_TIMEOUT = timedelta(seconds=TIMEOUT_SECONDS)
CHECK_ANNOTATION = "flotilla.dev/check-data"  # any new value: probe now
Condition = tuple[str, str, str]  # status, reason, message


@dataclass(frozen=True)
class CreateProbe:
    site: str
    pod: dict[str, Any]


@dataclass(frozen=True)
class DeleteProbe:
    name: str


@dataclass
class ProbeStep:
    """What this pass does to the probes, and what it learnt."""

    actions: list[CreateProbe | DeleteProbe] = field(default_factory=list)
    cycle: dict[str, Any] | None = None  # status.probe after the pass
    digests: dict[str, str] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)  # sites whose digest changed
    last_probe_time: str | None = None
    request: str | None = None  # the check-data annotation acted upon
    condition: Condition | None = None  # DataDigests, when a cycle ended


def probe_step(
    schedule: FederatedSchedule,
    template: FederatedJob,
    *,
    probes: Sequence[ProbeView],
    nodes: Sequence[NodeInfo],
    previous: Mapping[str, Any],
    now: datetime,
) -> ProbeStep:
    step = ProbeStep(
        cycle=previous.get("probe"),
        digests=dict(previous.get("lastDigests") or {}),
        last_probe_time=previous.get("lastProbeTime"),
        request=previous.get("dataCheckRequest"),
    )
    if not schedule.spec.probes or schedule.spec.suspend:
        step.actions = [DeleteProbe(p.name) for p in probes]
        step.cycle = None
        return step
    if step.cycle is not None:
        _collect(step, probes, now=now)
    elif _due(schedule, step, now):
        _start(step, schedule, template, nodes=nodes, now=now)
    # Whatever is not of the cycle under way goes: an ended cycle's pods, stray ones.
    keep = _cycle_id((step.cycle or {}).get("startedAt"))
    step.actions += [DeleteProbe(p.name) for p in probes if p.cycle != keep]
    return step


def _due(schedule: FederatedSchedule, step: ProbeStep, now: datetime) -> bool:
    request = schedule.metadata.annotations.get(CHECK_ANNOTATION)
    if request is not None and request != step.request:
        step.request = request
        return True
    assert schedule.spec.on_data_change is not None
    last = parse_time(step.last_probe_time)
    interval = timedelta(seconds=schedule.spec.on_data_change.check_interval_seconds)
    return last is None or now >= last + interval


def _start(
    step: ProbeStep,
    schedule: FederatedSchedule,
    template: FederatedJob,
    *,
    nodes: Sequence[NodeInfo],
    now: datetime,
) -> None:
    # A cycle's start names its pods: never the second of the last one (asked for at once).
    moment, last = now.replace(microsecond=0), parse_time(step.last_probe_time)
    started = stamp(max(moment, last + timedelta(seconds=1)) if last else moment)
    chosen = placements(template, list(nodes))
    if not chosen:
        step.last_probe_time = started
        selector = template.spec.clients.node_selector
        message = f"no node matches spec.jobTemplate.spec.clients.nodeSelector {selector}"
        step.condition = ("False", "NoSites", message)
        return
    failed: dict[str, str] = {}
    for placement in chosen:
        try:
            pod = probe_pod(schedule, template, placement, cycle=_cycle_id(started))
        except SpecError as error:
            failed[placement.site] = error.problems[0]
            continue
        step.actions.append(CreateProbe(placement.site, pod))
    sites = {p.site: p.node for p in chosen}
    step.cycle = {"startedAt": started, "sites": sites, "failed": failed}


def _collect(step: ProbeStep, probes: Sequence[ProbeView], *, now: datetime) -> None:
    cycle = step.cycle or {}
    started = parse_time(cycle.get("startedAt")) or now
    current = {p.site: p for p in probes if p.cycle == _cycle_id(cycle.get("startedAt"))}
    late = now - started > PROBE_TIMEOUT
    answers: dict[str, str] = {}
    problems: dict[str, str] = dict(cycle.get("failed") or {})
    for site, node in sorted((cycle.get("sites") or {}).items()):
        probe = current.get(site)
        if site in problems:
            continue
        if probe is not None and probe.answered and probe.digest:
            answers[site] = probe.digest
        elif probe is not None and probe.answered:
            problems[site] = f"node {node}: {probe.problem}"
        elif late:
            waits = probe.problem if probe else "its pod is gone"
            minutes = PROBE_TIMEOUT.total_seconds() / 60
            problems[site] = f"node {node}: no answer in {minutes:g} min ({waits})"
        else:
            return  # the cycle goes on
    step.changed = _changed(step.digests, answers)
    step.digests |= answers
    step.cycle = None
    step.last_probe_time = cycle.get("startedAt")
    step.condition = _outcome(answers, problems, step.changed)


def _changed(before: Mapping[str, str], answers: Mapping[str, str]) -> list[str]:
    """Sites whose digest differs from the last one recorded. The first probe only records:
    until a digest is known, a site that is new to the map is no change."""
    if not before:
        return []
    return sorted(site for site, digest in answers.items() if before.get(site) != digest)


def _outcome(
    answers: Mapping[str, str], problems: Mapping[str, str], changed: list[str]
) -> Condition:
    if problems:
        listed = "; ".join(f"site {site}: {why}" for site, why in sorted(problems.items()))
        total = len(answers) + len(problems)
        message = f"{len(problems)} of {total} sites not probed, nothing triggered: {listed}"
        return ("False", "ProbeFailed", message)
    news = f"changed: {', '.join(changed)}" if changed else "no change"
    return ("True", "Recorded", f"{len(answers)} sites probed, {news}")


def _cycle_id(started: str | None) -> str:
    moment = parse_time(started)
    return str(int(moment.timestamp())) if moment else ""
