"""A schedule's status after what the API server refused, and the events its conditions earn."""

from __future__ import annotations

from flotilla.k8s.schedule_status import transitions, with_probe_refused, with_refusal
from tests.unit.k8s.schedule_fixtures import condition, run, schedule, utc

HOURLY = {"schedule": "0 * * * *"}


def test_a_refused_job_leaves_its_tick_due_and_says_why() -> None:
    decision = run(schedule(**HOURLY), now=utc(2026, 5, 4, 10, 0, 5))
    assert decision.status["lastScheduleTime"] == "2026-05-04T10:00:00Z"

    refused = with_refusal(
        decision.status, {}, message='exceeded quota: "jobs"', now=utc(2026, 5, 4, 10, 0, 5)
    )

    assert "lastScheduleTime" not in refused and "lastTrigger" not in refused
    assert "active" not in refused
    assert condition(refused, "Ready") == ("False", "JobRefused", 'exceeded quota: "jobs"')
    # The next pass tries the same tick again.
    again = run(schedule(**HOURLY), now=utc(2026, 5, 4, 10, 1), previous=refused)
    assert again.status["lastScheduleTime"] == "2026-05-04T10:00:00Z"
    assert condition(again.status, "Ready")[:2] == ("True", "Scheduling")


def test_a_refused_probe_pod_counts_as_its_sites_failed_answer() -> None:
    start = run(schedule(onDataChange={"enabled": True}), now=utc(2026, 5, 4, 10))
    refused = with_probe_refused(start.status, "site-a", 'violates PodSecurity "restricted"')
    assert refused["probe"]["failed"] == {
        "site-a": 'probe pod refused: violates PodSecurity "restricted"'
    }


def test_a_condition_earns_an_event_when_it_turns_bad_and_not_again() -> None:
    good = run(schedule(**HOURLY), now=utc(2026, 5, 4, 9, 30)).status
    body = schedule(**HOURLY, suspend=True)
    suspended = run(body, now=utc(2026, 5, 4, 9, 31), previous=good).status

    assert transitions(good, suspended) == [
        ("Warning", "Suspended", "no new jobs or probes while spec.suspend is true")
    ]
    still = run(body, now=utc(2026, 5, 4, 9, 32), previous=suspended).status
    assert transitions(suspended, still) == []
    assert transitions(suspended, good) == []  # back to good: the condition says it
    # Its transition time stays while it holds.
    assert suspended["conditions"][0]["lastTransitionTime"] == "2026-05-04T09:31:00Z"
    assert still["conditions"][0]["lastTransitionTime"] == "2026-05-04T09:31:00Z"
