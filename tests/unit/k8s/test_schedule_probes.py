"""Data probes: a pod per site, digests compared with the last ones, a job when one changed."""

from __future__ import annotations

from typing import Any

import yaml

from flotilla.api import read_job
from flotilla.k8s.schedule_probes import DeleteProbe
from tests.unit.k8s.schedule_fixtures import (
    answered,
    condition,
    created,
    job,
    probe_pods,
    run,
    schedule,
    utc,
)

ON_CHANGE = {"onDataChange": {"enabled": True, "checkIntervalSeconds": 600}}
V1 = "sha256:" + "1" * 64
V2 = "sha256:" + "2" * 64


def deleted_probes(decision: Any) -> list[str]:
    return sorted(a.name for a in decision.actions if isinstance(a, DeleteProbe))


def _cycle(
    previous: dict[str, Any], answers: dict[str, tuple[str, int]], *, at: Any, **kwargs: Any
) -> tuple[Any, Any]:
    """Start a cycle at `at`, answer it one minute later: (the start, the end)."""
    body = kwargs.pop("body", None) or schedule(**ON_CHANGE)
    start = run(body, now=at, previous=previous, **kwargs)
    pods = probe_pods(start)
    assert sorted(pods) == sorted(answers), "a probe per matching site"
    done = [answered(pods[site], message, code=code) for site, (message, code) in answers.items()]
    later = at.replace(minute=at.minute + 1)
    end = run(body, now=later, previous=start.status, probes=done, **kwargs)
    return start, end


def test_the_first_probe_records_every_sites_digest_and_makes_no_job() -> None:
    start, end = _cycle({}, {"site-a": (V1, 0), "site-b": (V1, 0)}, at=utc(2026, 5, 4, 10))

    assert start.status["probe"]["sites"] == {"site-a": "edge-1", "site-b": "edge-2"}
    assert condition(start.status, "DataDigests")[:2] == ("Unknown", "FirstProbe")
    assert not created(end)
    assert end.status["lastDigests"] == {"site-a": V1, "site-b": V1}
    assert end.status["lastProbeTime"] == "2026-05-04T10:00:00Z"
    assert "probe" not in end.status
    assert len(deleted_probes(end)) == 2
    assert condition(end.status, "DataDigests") == ("True", "Recorded", "2 sites probed, no change")


def test_no_new_probe_before_the_interval_unless_asked_for() -> None:
    _, end = _cycle({}, {"site-a": (V1, 0), "site-b": (V1, 0)}, at=utc(2026, 5, 4, 10))
    assert not probe_pods(
        run(schedule(**ON_CHANGE), now=utc(2026, 5, 4, 10, 9), previous=end.status)
    )

    asked = schedule(**ON_CHANGE)
    asked["metadata"]["annotations"] = {"flotilla.dev/check-data": "now-please"}
    now = run(asked, now=utc(2026, 5, 4, 10, 2), previous=end.status)
    assert len(probe_pods(now)) == 2
    assert now.status["dataCheckRequest"] == "now-please"
    # Asked once is done once.
    assert not probe_pods(
        run(
            asked,
            now=utc(2026, 5, 4, 10, 3),
            previous={**end.status, "dataCheckRequest": "now-please"},
        )
    )


def test_a_changed_digest_makes_a_job_that_says_which_site_changed() -> None:
    _, first = _cycle({}, {"site-a": (V1, 0), "site-b": (V1, 0)}, at=utc(2026, 5, 4, 10))
    _, second = _cycle(
        first.status, {"site-a": (V2, 0), "site-b": (V1, 0)}, at=utc(2026, 5, 4, 10, 20)
    )

    (made,) = created(second)
    assert made["metadata"]["name"].startswith("nightly-d")
    assert made["metadata"]["annotations"]["flotilla.dev/trigger"] == "dataChange"
    trigger = second.status["lastTrigger"]
    assert trigger["type"] == "dataChange"
    assert "the data of site site-a changed" in trigger["message"]
    assert second.status["lastDigests"] == {"site-a": V2, "site-b": V1}
    assert "pendingDataChange" not in second.status
    assert condition(second.status, "DataDigests")[2] == "2 sites probed, changed: site-a"


def test_a_change_waits_for_the_running_job_under_forbid_and_then_runs() -> None:
    _, first = _cycle({}, {"site-a": (V1, 0), "site-b": (V1, 0)}, at=utc(2026, 5, 4, 10))
    running = [job("nightly-1")]
    _, second = _cycle(
        first.status,
        {"site-a": (V1, 0), "site-b": (V2, 0)},
        at=utc(2026, 5, 4, 10, 20),
        jobs=running,
    )
    assert not created(second)
    assert second.status["pendingDataChange"] == ["site-b"]
    assert (
        "the data of site site-b changed waits for nightly-1"
        in condition(second.status, "Waiting")[2]
    )

    finished = [job("nightly-1", "Succeeded")]
    ended = run(
        schedule(**ON_CHANGE), now=utc(2026, 5, 4, 10, 25), previous=second.status, jobs=finished
    )
    assert len(created(ended)) == 1
    assert "pendingDataChange" not in ended.status


def test_a_site_new_after_the_first_probe_counts_as_changed() -> None:
    _, first = _cycle({}, {"site-a": (V1, 0)}, at=utc(2026, 5, 4, 10), body=_one_site())
    _, second = _cycle(
        first.status, {"site-a": (V1, 0), "site-b": (V1, 0)}, at=utc(2026, 5, 4, 10, 20)
    )
    assert len(created(second)) == 1
    assert "site site-b changed" in second.status["lastTrigger"]["message"]


def _one_site() -> dict[str, Any]:
    body = schedule(**ON_CHANGE)
    body["spec"]["jobTemplate"]["spec"]["clients"]["nodeSelector"] = {"flotilla.dev/site": "site-a"}
    return body


def test_a_failed_probe_names_its_site_and_triggers_nothing() -> None:
    _, first = _cycle({}, {"site-a": (V1, 0), "site-b": (V1, 0)}, at=utc(2026, 5, 4, 10))
    _, second = _cycle(
        first.status,
        {"site-a": (V1, 0), "site-b": ("site site-b: export /data/digits: not found", 1)},
        at=utc(2026, 5, 4, 10, 20),
    )
    assert not created(second)
    state, reason, message = condition(second.status, "DataDigests")
    assert (state, reason) == ("False", "ProbeFailed")
    assert "site site-b: node edge-2: exit code 1 (Error): site site-b: export" in message
    assert second.status["lastDigests"]["site-b"] == V1  # kept


def test_a_probe_without_a_digest_in_its_message_failed() -> None:
    _, first = _cycle({}, {"site-a": ("hello", 0), "site-b": (V1, 0)}, at=utc(2026, 5, 4, 10))
    assert "exited without a digest" in condition(first.status, "DataDigests")[2]
    assert "site-a" not in first.status["lastDigests"]


def test_a_probe_that_never_answers_fails_after_the_timeout() -> None:
    start = run(schedule(**ON_CHANGE), now=utc(2026, 5, 4, 10))
    pods = probe_pods(start)
    waits = {"name": "probe", "state": {"waiting": {"reason": "ImagePullBackOff"}}}
    stuck = dict(pods["site-b"], status={"phase": "Pending", "containerStatuses": [waits]})
    done = [answered(pods["site-a"], V1), stuck]

    waiting = run(
        schedule(**ON_CHANGE), now=utc(2026, 5, 4, 10, 9), previous=start.status, probes=done
    )
    assert waiting.status["probe"] == start.status["probe"] and not deleted_probes(waiting)

    late = run(
        schedule(**ON_CHANGE), now=utc(2026, 5, 4, 10, 11), previous=start.status, probes=done
    )
    message = condition(late.status, "DataDigests")[2]
    assert "site site-b: node edge-2: no answer in 10 min (ImagePullBackOff)" in message
    assert late.status["lastDigests"] == {"site-a": V1}
    assert len(deleted_probes(late)) == 2


def test_no_matching_node_is_said_and_waits_for_the_interval() -> None:
    body = _one_site()
    body["spec"]["jobTemplate"]["spec"]["clients"]["nodeSelector"] = {"flotilla.dev/site": "x"}
    decision = run(body, now=utc(2026, 5, 4, 10))
    assert not probe_pods(decision)
    assert condition(decision.status, "DataDigests")[:2] == ("False", "NoSites")
    assert decision.status["lastProbeTime"] == "2026-05-04T10:00:00Z"


def test_pods_of_another_cycle_go() -> None:
    start = run(schedule(**ON_CHANGE), now=utc(2026, 5, 4, 10))
    old = list(probe_pods(start).values())
    after = run(schedule(**ON_CHANGE), now=utc(2026, 5, 4, 10, 1), previous={}, probes=old)
    # No cycle in the status (it was lost): a new one starts, the strays go.
    assert deleted_probes(after) == sorted(p["metadata"]["name"] for p in old)


def test_the_probe_pod_is_the_sites_client_pod_cut_down_to_a_digest(tmp_path: Any) -> None:
    body = schedule(**ON_CHANGE)
    cvat = {"url": "https://cvat.a", "taskIds": [3], "credentials": {"secretName": "cvat-a"}}
    body["spec"]["jobTemplate"]["spec"]["sites"] = [
        {"name": "site-a", "data": {"cvat": cvat}},
        {"name": "site-z", "data": {"cvatExport": {"path": "/elsewhere"}}},
    ]
    pods = probe_pods(run(body, now=utc(2026, 5, 4, 10)))
    pod = pods["site-b"]
    spec = pod["spec"]
    (container,) = spec["containers"]

    assert pod["metadata"]["name"] == f"nightly-probe-site-b-{int(utc(2026, 5, 4, 10).timestamp())}"
    assert pod["metadata"]["labels"]["flotilla.dev/role"] == "probe"
    assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "flotilla"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "FederatedSchedule"
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["edge-2"]
    assert container["args"] == [
        "data", "digest", "/etc/flotilla/probe/job.yaml", "--site", "site-b",
        "--data=/data/digits", "--termination-log=/dev/termination-log",
    ]  # fmt: skip
    assert container["image"] == "ghcr.io/flotilla-dev/flotilla-client:0.1.0"
    assert not [e for e in container["env"] if e["name"] == "FLOTILLA_TOKEN"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["data"]["hostPath"]["path"] == "/var/lib/flotilla/digits"
    assert "tls" not in volumes
    # The job, with only this site's entry of spec.sites, reaches the pod as a file.
    annotation = pod["metadata"]["annotations"]["flotilla.dev/probe-job"]
    (tmp_path / "job.yaml").write_text(annotation)
    assert read_job(tmp_path / "job.yaml").spec.sites == []
    secret = {"name": "cvat-credentials", "secret": {"secretName": "cvat-a"}}
    assert secret in pods["site-a"]["spec"]["volumes"]
    site_a = yaml.safe_load(pods["site-a"]["metadata"]["annotations"]["flotilla.dev/probe-job"])
    assert [s["name"] for s in site_a["spec"]["sites"]] == ["site-a"]


def test_suspend_or_turning_probes_off_deletes_the_probe_pods() -> None:
    start = run(schedule(**ON_CHANGE), now=utc(2026, 5, 4, 10))
    pods = list(probe_pods(start).values())
    names = sorted(p["metadata"]["name"] for p in pods)
    off = {"onDataChange": {"enabled": False}, "schedule": "@daily"}
    for spec in ({**ON_CHANGE, "suspend": True}, off):
        later = utc(2026, 5, 4, 10, 1)
        decision = run(schedule(**spec), now=later, previous=start.status, probes=pods)
        assert deleted_probes(decision) == names
        assert "probe" not in decision.status and not probe_pods(decision)
