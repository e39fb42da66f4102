"""A FederatedSchedule, its jobs, probe pods and nodes as the API server would hand them over,
for the pure decisions of schedule_plan.py."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from flotilla.k8s.schedule_plan import CreateJob, Decision, ScheduleSeen, decide
from flotilla.k8s.schedule_probes import CreateProbe

ROOT = Path(__file__).resolve().parents[3]
UID = "sched-uid"
CREATED = "2026-05-04T09:10:00Z"
EDGE = {"flotilla.dev/edge": "true"}


def utc(*parts: int) -> datetime:
    return datetime(*parts).replace(tzinfo=UTC)  # type: ignore[arg-type]


def schedule(**spec: Any) -> dict[str, Any]:
    """A schedule of the example job's spec, in namespace ml, made at CREATED."""
    job = yaml.safe_load((ROOT / "examples" / "federatedjob.yaml").read_text())
    return {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "FederatedSchedule",
        "metadata": {
            "name": "nightly",
            "namespace": "ml",
            "uid": UID,
            "generation": 1,
            "creationTimestamp": CREATED,
        },
        "spec": {"jobTemplate": {"spec": job["spec"]}} | spec,
    }


def node(name: str, site: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {**EDGE, "flotilla.dev/site": site}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


NODES = [node("edge-1", "site-a"), node("edge-2", "site-b"), {"metadata": {"name": "core-1"}}]


def job(
    name: str, phase: str | None = None, *, done: str | None = None, **status: Any
) -> dict[str, Any]:
    """A job of the schedule: active without a phase, else finished at `done`."""
    body: dict[str, Any] = {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "creationTimestamp": "2026-05-04T10:00:00Z",
            "labels": {"flotilla.dev/schedule": "nightly"},
            "ownerReferences": [{"kind": "FederatedSchedule", "uid": UID}],
        },
        "status": dict(status),
    }
    if phase:
        body["status"] |= {"phase": phase, "completionTime": done or "2026-05-04T11:00:00Z"}
    return body


def answered(pod: dict[str, Any], message: str, *, code: int = 0) -> dict[str, Any]:
    """The probe pod after its container ended, as the kubelet reports it."""
    done = copy.deepcopy(pod)
    terminated = {
        "exitCode": code,
        "reason": "Completed" if code == 0 else "Error",
        "message": message,
    }
    done["status"] = {
        "phase": "Succeeded" if code == 0 else "Failed",
        "containerStatuses": [{"name": "probe", "state": {"terminated": terminated}}],
    }
    return done


def run(
    body: dict[str, Any],
    *,
    now: datetime,
    previous: dict[str, Any] | None = None,
    jobs: list[dict[str, Any]] = (),  # type: ignore[assignment]
    probes: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> Decision:
    seen = ScheduleSeen(jobs=list(jobs), probe_pods=list(probes), nodes=NODES)
    return decide(body, seen, previous=previous or {}, now=now)


def created(decision: Decision) -> list[dict[str, Any]]:
    return [a.body for a in decision.actions if isinstance(a, CreateJob)]


def probe_pods(decision: Decision) -> dict[str, dict[str, Any]]:
    return {a.site: a.pod for a in decision.actions if isinstance(a, CreateProbe)}


def condition(status: dict[str, Any], kind: str) -> tuple[str, str, str]:
    for entry in status.get("conditions") or []:
        if entry["type"] == kind:
            return entry["status"], entry["reason"], entry["message"]
    return ("", "", "")
