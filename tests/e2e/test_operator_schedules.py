"""FederatedSchedules on a real API server, the operator as its ServiceAccount: a job on a cron
tick, and on a site's data change found by probe pods; Forbid, Replace, history limits, a
failed probe. The stand-in kubelet starts the probe pods; the test ends them as a kubelet
would, each with a digest (or an error) in its termination message.

Named to run before test_rights.py, which reads the audit log of every other module.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import NewNamespace
from tests.e2e.kube import (
    apply,
    condition,
    eventually,
    get,
    items,
    kubectl,
    load,
    merge_patch,
    without_state,
)
from tests.e2e.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SITES = ("site-a", "site-b", "site-c")  # the edge nodes of conftest.NODES
V1, V2, V3, V4 = (f"sha256:{digit * 64}" for digit in "1234")


def _schedule(name: str, **spec: Any) -> dict[str, Any]:
    job = without_state(copy.deepcopy(load(ROOT / "examples" / "federatedjob.yaml")))
    job["spec"]["backoffLimit"] = 0  # one aggregator crash fails a job
    return {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "FederatedSchedule",
        "metadata": {"name": name},
        "spec": {"jobTemplate": {"spec": job["spec"]}} | spec,
    }


def _status(namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = (get("fsched", name, namespace=namespace) or {}).get("status") or {}
    return found


def _jobs(namespace: str, schedule: str) -> dict[str, dict[str, Any]]:
    found = items("fj", namespace=namespace, selector=f"flotilla.dev/schedule={schedule}")
    return {j["metadata"]["name"]: j for j in found if not j["metadata"].get("deletionTimestamp")}


def _probes(namespace: str, schedule: str) -> list[dict[str, Any]]:
    selector = f"flotilla.dev/role=probe,flotilla.dev/schedule={schedule}"
    pods = items("pods", namespace=namespace, selector=selector)
    return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]


def _check_data(namespace: str, schedule: str, request: str) -> None:
    """Ask for a probe now, as a user would, rather than wait for checkIntervalSeconds."""
    kubectl(
        "annotate", "fsched", schedule, "-n", namespace, f"flotilla.dev/check-data={request}",
        "--overwrite",
    )  # fmt: skip


def _answer(namespace: str, schedule: str, answers: dict[str, tuple[str, int]]) -> None:
    """Once a probe pod runs on each site's node, end each as the kubelet would."""

    def running() -> list[dict[str, Any]] | None:
        pods = _probes(namespace, schedule)
        started = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        return started if len(started) == len(answers) == len(pods) else None

    for pod in eventually(running, what=f"a running probe pod on each of {sorted(answers)}"):
        message, code = answers[pod["metadata"]["labels"]["flotilla.dev/site"]]
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "message": message,
            "startedAt": pod["status"]["startTime"],
            "finishedAt": pod["status"]["startTime"],
        }
        status = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": "probe",
                    "image": pod["spec"]["containers"][0]["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"terminated": terminated},
                }
            ],
        }
        merge_patch(
            "pod", pod["metadata"]["name"], {"status": status}, namespace=namespace, status=True
        )
    eventually(lambda: not _probes(namespace, schedule), what="the probe pods deleted")


def _fail(namespace: str, job: str) -> None:
    """The job's aggregator crashes once; with backoffLimit 0 the job fails."""
    selector = f"flotilla.dev/job={job},flotilla.dev/role=aggregator"

    def started() -> list[dict[str, Any]]:
        pods = items("pods", namespace=namespace, selector=selector)
        return [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]

    pod = eventually(started, what=f"{job}'s aggregator pod running")[0]
    crashed = {
        "name": "aggregator",
        "image": pod["spec"]["containers"][0]["image"],
        "imageID": "",
        "ready": False,
        "started": False,
        "restartCount": 1,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
    }
    status = {"containerStatuses": [crashed]}
    merge_patch(
        "pod", pod["metadata"]["name"], {"status": status}, namespace=namespace, status=True
    )
    eventually(
        lambda: (
            ((get("fj", job, namespace=namespace) or {}).get("status") or {}).get("phase")
            == "Failed"
        ),
        what=f"{job} Failed",
    )


def _new_job(namespace: str, schedule: str, before: set[str]) -> str:
    made = eventually(
        lambda: sorted(set(_jobs(namespace, schedule)) - before), what=f"a new job of {schedule}"
    )
    assert len(made) == 1, made
    return made[0]


def test_a_schedule_makes_jobs_on_its_tick_and_when_a_sites_data_changes(
    operator: OperatorProcess, new_namespace: NewNamespace
) -> None:
    namespace = new_namespace()
    # A tick every minute: it comes while the data flow below runs.
    apply(_schedule("every-minute", schedule="* * * * *"), namespace=namespace)
    data = _schedule(
        "retrain",
        onDataChange={"enabled": True, "checkIntervalSeconds": 600},
        failedJobsHistoryLimit=1,
    )
    apply(data, namespace=namespace)

    # The first probe records each site's digest and makes no job.
    _answer(namespace, "retrain", {site: (V1, 0) for site in SITES})
    status = eventually(lambda: _status(namespace, "retrain").get("lastDigests"), what="digests")
    assert status == dict.fromkeys(SITES, V1)
    assert not _jobs(namespace, "retrain")

    # site-a's annotations change: a job, owned by the schedule.
    _check_data(namespace, "retrain", "2")
    _answer(namespace, "retrain", {"site-a": (V2, 0), "site-b": (V1, 0), "site-c": (V1, 0)})
    first = _new_job(namespace, "retrain", set())
    found = get("fj", first, namespace=namespace)
    owner = found["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("FederatedSchedule", "retrain")
    assert found["metadata"]["annotations"]["flotilla.dev/trigger"] == "dataChange"
    assert "init" not in found["spec"]["model"]  # nothing registered yet: from scratch
    trigger = _status(namespace, "retrain")["lastTrigger"]
    assert (trigger["type"], trigger["job"]) == ("dataChange", first)
    assert "the data of site site-a changed" in trigger["message"]

    # site-b changes while the job runs: Forbid, it waits...
    _check_data(namespace, "retrain", "3")
    _answer(namespace, "retrain", {"site-a": (V2, 0), "site-b": (V2, 0), "site-c": (V1, 0)})
    waiting = eventually(
        lambda: (
            condition(get("fsched", "retrain", namespace=namespace), "Waiting").get("status")
            == "True"
            and get("fsched", "retrain", namespace=namespace)
        ),
        what="the change waiting for the running job",
    )
    assert f"waits for {first} to finish" in condition(waiting, "Waiting")["message"]
    assert waiting["status"]["pendingDataChange"] == ["site-b"]
    assert list(_jobs(namespace, "retrain")) == [first]

    # ...and runs when the job ends.
    _fail(namespace, first)
    second = _new_job(namespace, "retrain", {first})
    assert "site site-b changed" in _status(namespace, "retrain")["lastTrigger"]["message"]

    # failedJobsHistoryLimit 1: the older failed job goes once the second one fails.
    _fail(namespace, second)
    eventually(lambda: list(_jobs(namespace, "retrain")) == [second], what=f"{first} deleted")

    # A probe that fails names its site and makes no job.
    _check_data(namespace, "retrain", "4")
    refused = "site site-c: CVAT https://cvat.site-c: the credentials were refused (401)"
    _answer(namespace, "retrain", {"site-a": (V2, 0), "site-b": (V2, 0), "site-c": (refused, 1)})
    failed = eventually(
        lambda: (
            condition(get("fsched", "retrain", namespace=namespace), "DataDigests").get("reason")
            == "ProbeFailed"
            and get("fsched", "retrain", namespace=namespace)
        ),
        what="ProbeFailed",
    )
    assert (
        "site site-c: node gpu-1: exit code 1 (Error): " + refused
        in condition(failed, "DataDigests")["message"]
    )
    assert list(_jobs(namespace, "retrain")) == [second]

    # Replace: a change while a job runs deletes it and makes the new one.
    merge_patch(
        "fsched", "retrain", {"spec": {"concurrencyPolicy": "Replace"}}, namespace=namespace
    )
    _check_data(namespace, "retrain", "5")
    _answer(namespace, "retrain", {"site-a": (V3, 0), "site-b": (V2, 0), "site-c": (V1, 0)})
    third = _new_job(namespace, "retrain", {second})
    _check_data(namespace, "retrain", "6")
    _answer(namespace, "retrain", {"site-a": (V4, 0), "site-b": (V2, 0), "site-c": (V1, 0)})
    fourth = _new_job(namespace, "retrain", {second, third})
    eventually(lambda: third not in _jobs(namespace, "retrain"), what=f"{third} replaced")
    assert set(_jobs(namespace, "retrain")) == {second, fourth}

    # The tick: one job, named after its minute, and the time it stood for.
    ticked = eventually(lambda: list(_jobs(namespace, "every-minute")), what="the tick's job")
    status = _status(namespace, "every-minute")
    minutes = int(ticked[0].rsplit("-", 1)[1])
    assert status["lastScheduleTime"].endswith(":00Z")
    assert status["lastTrigger"]["type"] == "cron" and status["lastTrigger"]["job"] == ticked[0]
    shown = kubectl("get", "fsched", "-n", namespace).stdout
    assert "LAST TRIGGER" in shown.splitlines()[0] and "every-minute" in shown
    events = items("events", namespace=namespace)
    made = [e for e in events if e["involvedObject"]["kind"] == "FederatedSchedule"]
    assert any(e["reason"] == "Created" and ticked[0] in e["message"] for e in made)
    assert minutes > 0

    # Deleting the schedule takes its jobs with it (owner references), operator or not.
    kubectl("delete", "fsched", "retrain", "-n", namespace, "--timeout=30s")
    eventually(lambda: not _jobs(namespace, "retrain"), what="the schedule's jobs collected")
