"""A FederatedSchedule's decisions: ticks, data changes, concurrency, history, suspend."""

from __future__ import annotations

from typing import Any

from flotilla.k8s.schedule_plan import DeleteJob
from flotilla.k8s.schedule_probes import DeleteProbe
from tests.unit.k8s.schedule_fixtures import (
    UID,
    condition,
    created,
    job,
    probe_pods,
    run,
    schedule,
    utc,
)

HOURLY = {"schedule": "0 * * * *"}
TEN = "nightly-" + str(int(utc(2026, 5, 4, 10).timestamp()) // 60)


def deleted(decision: Any) -> list[str]:
    return [a.name for a in decision.actions if isinstance(a, DeleteJob)]


def test_a_tick_makes_a_job_owned_by_the_schedule_and_named_after_the_tick() -> None:
    decision = run(schedule(**HOURLY), now=utc(2026, 5, 4, 10, 0, 7))

    (made,) = created(decision)
    assert made["metadata"]["name"] == TEN
    assert made["metadata"]["namespace"] == "ml"
    assert made["metadata"]["labels"] == {"flotilla.dev/schedule": "nightly"}
    assert made["metadata"]["annotations"] == {
        "flotilla.dev/trigger": "cron",
        "flotilla.dev/scheduled-at": "2026-05-04T10:00:00Z",
    }
    (owner,) = made["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "FederatedSchedule",
        "nightly",
        UID,
        True,
    )
    # One lineage: one registered model and one experiment, named after the schedule...
    assert made["spec"]["tracking"]["registeredModel"] == "digits-cnn"  # ...unless named
    assert made["spec"]["tracking"]["experiment"] == "nightly"
    assert "init" not in made["spec"]["model"]  # the first job starts from scratch
    status = decision.status
    assert status["lastScheduleTime"] == "2026-05-04T10:00:00Z"
    assert status["lastTrigger"]["type"] == "cron" and status["lastTrigger"]["job"] == TEN
    assert "starts from scratch" in status["lastTrigger"]["message"]
    assert status["active"] == [{"name": TEN, "uid": None}]
    assert condition(status, "Ready")[:2] == ("True", "Scheduling")
    assert "next tick at 2026-05-04T11:00:00Z" in condition(status, "Ready")[2]


def test_no_job_before_the_first_tick_or_twice_for_one_tick() -> None:
    assert not created(run(schedule(**HOURLY), now=utc(2026, 5, 4, 9, 59)))
    # The tick before the schedule existed is none of its business.
    assert not created(run(schedule(**HOURLY), now=utc(2026, 5, 4, 9, 30)))
    acted = {"lastScheduleTime": "2026-05-04T10:00:00Z"}
    assert not created(run(schedule(**HOURLY), now=utc(2026, 5, 4, 10, 40), previous=acted))


def test_a_tick_noticed_past_the_starting_deadline_is_skipped_and_said() -> None:
    body = schedule(**HOURLY, startingDeadlineSeconds=60)

    late = run(body, now=utc(2026, 5, 4, 10, 5))
    assert not created(late)
    state, reason, message = condition(late.status, "MissedSchedule")
    assert (state, reason) == ("True", "StartingDeadlineExceeded")
    assert "2026-05-04T10:00:00Z was noticed 300 s late" in message
    assert "lastScheduleTime" not in late.status

    on_time = run(body, now=utc(2026, 5, 4, 11, 0, 30), previous=late.status)
    assert len(created(on_time)) == 1
    assert condition(on_time.status, "MissedSchedule")[:2] == ("False", "OnTime")


def test_forbid_waits_for_the_running_job_and_runs_the_tick_when_it_ends() -> None:
    running = [job("nightly-1")]

    waits = run(schedule(**HOURLY), now=utc(2026, 5, 4, 10, 0, 5), jobs=running)
    assert not created(waits)
    state, reason, message = condition(waits.status, "Waiting")
    assert (state, reason) == ("True", "ConcurrencyForbid")
    assert "the tick at 2026-05-04T10:00:00Z waits for nightly-1 to finish" in message
    assert waits.status["active"] == [{"name": "nightly-1", "uid": "uid-nightly-1"}]

    ended = [job("nightly-1", "Failed")]
    runs = run(schedule(**HOURLY), now=utc(2026, 5, 4, 10, 20), jobs=ended, previous=waits.status)
    assert [j["metadata"]["name"] for j in created(runs)] == [TEN]
    assert condition(runs.status, "Waiting")[:2] == ("False", "NothingWaits")


def test_replace_deletes_the_running_job_first() -> None:
    body = schedule(**HOURLY, concurrencyPolicy="Replace")
    decision = run(body, now=utc(2026, 5, 4, 10, 0, 5), jobs=[job("nightly-1")])

    assert deleted(decision) == ["nightly-1"]
    assert [j["metadata"]["name"] for j in created(decision)] == [TEN]
    order = [type(a).__name__ for a in decision.actions]
    assert order.index("DeleteJob") < order.index("CreateJob")
    assert decision.status["active"] == [{"name": TEN, "uid": None}]


def test_history_limits_delete_the_oldest_finished_jobs_first() -> None:
    jobs = [job(f"ok-{i}", "Succeeded", done=f"2026-05-0{i}T00:00:00Z") for i in range(1, 6)]
    jobs += [job(f"bad-{i}", "Failed", done=f"2026-05-0{i}T00:00:00Z") for i in range(1, 4)]
    jobs.append(job("running"))
    body = schedule(**HOURLY, successfulJobsHistoryLimit=3, failedJobsHistoryLimit=1)

    decision = run(body, now=utc(2026, 5, 4, 9, 30), jobs=jobs)

    assert deleted(decision) == ["ok-1", "ok-2", "bad-1", "bad-2"]
    assert decision.status["lastSuccessfulTime"] == "2026-05-05T00:00:00Z"


def test_jobs_of_another_owner_are_not_the_schedules() -> None:
    stranger = job("ok-1", "Succeeded")
    stranger["metadata"]["ownerReferences"] = [{"uid": "someone-else"}]
    body = schedule(**HOURLY, successfulJobsHistoryLimit=0)
    assert not deleted(run(body, now=utc(2026, 5, 4, 9, 30), jobs=[stranger]))


def test_suspend_makes_nothing_new_but_keeps_the_history_tidy() -> None:
    body = schedule(**HOURLY, suspend=True, failedJobsHistoryLimit=0)
    decision = run(body, now=utc(2026, 5, 4, 10, 0, 5), jobs=[job("bad-1", "Failed")])

    assert not created(decision)
    assert deleted(decision) == ["bad-1"]
    assert condition(decision.status, "Ready")[:2] == ("False", "Suspended")
    # The tick stays due: with no startingDeadlineSeconds it runs once resumed, as a CronJob's.
    resumed = run(schedule(**HOURLY), now=utc(2026, 5, 4, 10, 30), previous=decision.status)
    assert len(created(resumed)) == 1


def test_a_job_made_by_a_pass_whose_status_was_lost_is_not_made_again() -> None:
    decision = run(schedule(**HOURLY), now=utc(2026, 5, 4, 10, 0, 5), jobs=[job(TEN)])
    assert not created(decision) and not deleted(decision)
    assert decision.status["lastTrigger"]["job"] == TEN
    assert decision.status["active"] == [{"name": TEN, "uid": f"uid-{TEN}"}]


def _with_model(name: str = "ok-1") -> dict[str, Any]:
    model = {"name": "digits-cnn", "version": "4", "alias": "candidate"}
    return job(name, "Succeeded", model=model)


def test_each_job_after_a_registered_model_warm_starts_from_it() -> None:
    decision = run(schedule(**HOURLY), now=utc(2026, 5, 4, 10, 0, 5), jobs=[_with_model()])

    (made,) = created(decision)
    assert made["spec"]["model"]["init"] == "models:/digits-cnn@candidate"
    assert (
        "warm start from models:/digits-cnn@candidate" in decision.status["lastTrigger"]["message"]
    )
    assert decision.status["lastModel"]["version"] == "4"

    # The job is gone (history limits); the schedule remembers its model.
    later = run(schedule(**HOURLY), now=utc(2026, 5, 4, 11, 0, 5), previous=decision.status)
    assert created(later)[0]["spec"]["model"]["init"] == "models:/digits-cnn@candidate"


def test_with_a_promotion_gate_the_next_job_starts_from_the_champion() -> None:
    body = schedule(**HOURLY)
    spec = body["spec"]["jobTemplate"]["spec"]
    spec["evaluation"] = {"testData": {"cvatExport": {"path": "/data/test"}}}
    spec["tracking"]["promotion"] = {"alias": "best"}
    decision = run(body, now=utc(2026, 5, 4, 10, 0, 5), jobs=[_with_model()])
    assert created(decision)[0]["spec"]["model"]["init"] == "models:/digits-cnn@best"


def test_a_template_that_names_its_own_init_keeps_it() -> None:
    body = schedule(**HOURLY)
    body["spec"]["jobTemplate"]["spec"]["model"]["init"] = "models:/base/3"
    decision = run(body, now=utc(2026, 5, 4, 10, 0, 5), jobs=[_with_model()])
    assert created(decision)[0]["spec"]["model"]["init"] == "models:/base/3"


def test_an_invalid_schedule_says_which_field_and_makes_nothing() -> None:
    body = schedule(schedule="0 25 * * *")
    body["spec"]["jobTemplate"]["spec"]["training"]["learningRate"] = -1
    decision = run(body, now=utc(2026, 5, 4, 10, 0, 5))

    assert decision.actions == []
    state, reason, message = condition(decision.status, "Ready")
    assert (state, reason) == ("False", "InvalidSpec")
    assert "spec.schedule: bad hour (got '0 25 * * *')" in message
    assert "spec.jobTemplate.spec.training.learningRate: Input should be greater than 0" in message


def test_an_invalid_schedule_stops_its_probes() -> None:
    body = schedule(onDataChange={"enabled": True})
    first = run(body, now=utc(2026, 5, 4, 10))
    pods = list(probe_pods(first).values())
    body["spec"]["concurrencyPolicy"] = "Sometimes"
    decision = run(body, now=utc(2026, 5, 4, 10, 1), previous=first.status, probes=pods)
    assert sorted(a.name for a in decision.actions if isinstance(a, DeleteProbe)) == sorted(
        p["metadata"]["name"] for p in pods
    )
    assert "probe" not in decision.status
