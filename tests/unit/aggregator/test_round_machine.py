"""The round state machine, played whole: a fake clock, fake clients at the desk, no HTTP.

Each test drives rounds from the clients' side (dial, report, ask, upload) and moves time
itself, so a deadline or a grace passes exactly when the test says. The fold, the
strategy and the checkpoints are the real ones, on the digits job's tiny MLP.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from flotilla.fl.aggregator.errors import (
    AlreadyAnswered,
    EvaluationNotAsked,
    NotEvaluating,
    NotSampled,
    RoundClosed,
    StaleVersion,
    UnknownVersion,
)
from flotilla.fl.aggregator.state import Phase
from tests.unit.aggregator.fakes import Machine

SITES = ["site-a", "site-b", "site-c"]


def _shifted(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[float]:
    """By how much each weight moved (rounded): one value when the whole model moved alike."""
    moved = torch.cat([(after[name] - before[name]).flatten() for name in before])
    return {round(float(value), 4) for value in moved.tolist()}


def test_a_round_opens_once_every_known_site_is_present(tmp_path: Path) -> None:
    machine = Machine(tmp_path, sites=SITES, clients={"minClients": 2, "joinGraceSeconds": 60})
    a, b, c = machine.sites.values()

    async def play() -> None:
        async with machine.running():
            machine.report_ready(a, b)
            await machine.until(lambda: "2 of 3 present, 2 needed" in machine.state.message)
            assert machine.state.phase is Phase.WAITING  # c is on its way: the grace runs
            assert a.task()["action"] == "wait"

            c.report_ready()
            await machine.training(1)
            assert machine.state.sampled == set(SITES)
            assert [site.task()["action"] for site in (a, b, c)] == ["train"] * 3

    asyncio.run(play())
    assert machine.clock.now == 1000.0  # no time had to pass


def test_a_site_is_asked_for_its_data_report_before_anything_else(tmp_path: Path) -> None:
    machine = Machine(tmp_path, sites=["site-a"])
    site = machine.sites["site-a"]

    assert site.task()["action"] == "report"  # connected, but its data is not known yet
    site.report_ready()
    assert site.task()["action"] == "wait"


def test_a_round_closes_once_every_sampled_site_answered(tmp_path: Path) -> None:
    machine = Machine(tmp_path, sites=["site-a", "site-b"], rounds=2)
    a, b = machine.sites.values()
    before = machine.model()

    async def play() -> None:
        async with machine.running():
            machine.report_ready(a, b)
            await machine.training(1)
            assert (await a.upload(0.1, examples=10))["accepted"]
            assert machine.state.phase is Phase.TRAINING  # b still trains
            await b.upload(0.5, examples=30)
            await machine.training(2)
            await machine.until(lambda: machine.state.persisted == 1)

    asyncio.run(play())
    # FedAvg weighs by examples: (0.1 * 10 + 0.5 * 30) / 40; the server step's rate is 1.
    assert _shifted(before, machine.model()) == {0.4}
    (row,) = machine.engine.ledger.history_json()
    assert (row["round"], row["sampled"], row["answered"]) == (
        1,
        ["site-a", "site-b"],
        row["sampled"],
    )
    assert machine.clock.now == 1000.0  # closed on the answers, not on the clock


def test_a_round_closes_at_its_deadline_with_the_answers_it_has(tmp_path: Path) -> None:
    machine = Machine(tmp_path, sites=SITES, clients={"minClients": 2, "roundDeadlineSeconds": 60})
    a, b, c = machine.sites.values()

    async def play() -> None:
        async with machine.running():
            machine.report_ready()
            await machine.training(1)
            await a.upload(0.2)
            await b.upload(0.2)
            assert c.task()["deadlineSeconds"] == 60

            machine.clock.advance(59.9)
            await asyncio.sleep(0.05)
            assert (machine.state.phase, machine.state.completed) == (Phase.TRAINING, 0)

            machine.clock.advance(0.1)
            await machine.training(2)
            with pytest.raises(RoundClosed, match="round 1 is not open"):
                await c.upload(0.2, round_number=1)  # a late upload changes nothing
            await machine.until(lambda: machine.state.persisted == 1)

    asyncio.run(play())
    (row,) = machine.engine.ledger.history_json()
    assert row["sampled"] == SITES and row["answered"] == ["site-a", "site-b"]


def test_the_join_grace_opens_a_round_without_a_site_that_is_not_there(tmp_path: Path) -> None:
    machine = Machine(tmp_path, sites=SITES, clients={"minClients": 2, "joinGraceSeconds": 30})
    a, b, _ = machine.sites.values()

    async def play() -> None:
        async with machine.running():
            machine.report_ready(a, b)
            await machine.waiting_for_clients()
            machine.clock.advance(29)
            await asyncio.sleep(0.05)
            assert machine.state.phase is Phase.WAITING

            machine.clock.advance(1)
            await machine.training(1)
            assert machine.state.sampled == {"site-a", "site-b"}

    asyncio.run(play())


def test_a_site_that_reported_a_data_error_is_not_waited_for(tmp_path: Path) -> None:
    machine = Machine(tmp_path, sites=SITES, clients={"minClients": 2, "joinGraceSeconds": 600})
    a, b, c = machine.sites.values()

    async def play() -> None:
        async with machine.running():
            c.report_broken("site site-c: no export")
            machine.report_ready(a, b)
            await machine.training(1)  # at once: no grace spent on c
            assert machine.state.sampled == {"site-a", "site-b"}
            assert machine.engine.status()["siteErrors"] == {"site-c": "site site-c: no export"}
            assert c.task()["action"] == "wait"

            c.report_ready()  # fixed: it counts again from the next round
            await a.upload(0.1)
            await b.upload(0.1)
            await machine.training(2)
            assert machine.state.sampled == set(SITES)

    asyncio.run(play())
    assert machine.clock.now == 1000.0


def test_too_few_clients_make_the_round_wait_never_fail(tmp_path: Path) -> None:
    machine = Machine(tmp_path, sites=SITES, clients={"minClients": 2, "joinGraceSeconds": 10})
    a, b, _ = machine.sites.values()

    async def play() -> None:
        async with machine.running():
            a.report_ready()
            await machine.waiting_for_clients()
            machine.clock.advance(3600)
            await machine.until(lambda: "1 of 3 present, 2 needed" in machine.state.message)
            assert (machine.state.phase, machine.state.failure) == (Phase.WAITING, None)

            b.report_ready()
            await machine.training(1)
            assert machine.state.sampled == {"site-a", "site-b"}

    asyncio.run(play())


def test_a_site_that_hangs_up_mid_round_costs_the_next_round_its_grace_only(
    tmp_path: Path,
) -> None:
    machine = Machine(tmp_path, sites=SITES, clients={"minClients": 2, "joinGraceSeconds": 30})
    a, b, c = machine.sites.values()

    async def play() -> None:
        async with machine.running():
            machine.report_ready()
            await machine.training(1)
            c.hang_up()
            machine.clock.advance(5)  # past the reconnect grace: its link is closed
            await a.upload(0.1)
            await b.upload(0.1)
            machine.clock.advance(60)  # round 1's deadline: c never answered
            await machine.waiting_for_clients()
            assert machine.state.completed == 1
            machine.clock.advance(30)
            await machine.training(2)
            assert machine.state.sampled == {"site-a", "site-b"}

    asyncio.run(play())
    row = machine.engine.ledger.history_json()[0]
    assert row["sampled"] == SITES and row["answered"] == ["site-a", "site-b"]


def test_a_site_that_leaves_the_job_is_not_waited_for_in_its_round(tmp_path: Path) -> None:
    machine = Machine(tmp_path, sites=SITES, clients={"minClients": 2})
    a, b, _ = machine.sites.values()

    async def play() -> None:
        async with machine.running():
            machine.report_ready()
            await machine.training(1)
            await a.upload(0.1)
            machine.engine.set_sites(["site-a", "site-b"])  # c's token was dropped
            await b.upload(0.1)
            await machine.training(2)  # closed on a and b, without the deadline
            await machine.until(lambda: machine.state.persisted == 1)

    asyncio.run(play())
    assert machine.clock.now == 1000.0
    (row,) = machine.engine.ledger.history_json()
    assert row["answered"] == ["site-a", "site-b"]


def test_sites_waiting_for_their_next_task_are_not_woken_by_each_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sites = [f"site-{n}" for n in range(6)]
    machine = Machine(tmp_path, sites=sites, rounds=2)
    desk = machine.engine.desk
    looked_up: dict[str, int] = dict.fromkeys(sites, 0)
    task_for = desk.task_for

    def counted(site: str) -> dict[str, object]:
        looked_up[site] += 1
        return task_for(site)

    monkeypatch.setattr(desk, "task_for", counted)

    async def play() -> list[dict[str, object]]:
        async with machine.running():
            machine.report_ready()
            await machine.training(1)
            polls = []
            for site in list(machine.sites.values())[:-1]:
                await site.upload(0.1)
                polls.append(asyncio.create_task(desk.wait_task(site.name, timeout=600)))
                await asyncio.sleep(0.01)  # the poll is waiting when the next update folds
            assert not any(poll.done() for poll in polls)
            # Each waiting poll looked its task up once: the four updates folded after the
            # first poll began woke none of them (it was k wake-ups for the k-th update).
            assert [looked_up[site] for site in sites[:-1]] == [1] * 5
            await machine.sites[sites[-1]].upload(0.1)  # the round closes: a phase change
            return list(await asyncio.gather(*polls))

    tasks = asyncio.run(play())
    assert {(task["action"], task["round"]) for task in tasks} == {("train", 2)}


def test_uploads_the_round_did_not_ask_for_are_refused(tmp_path: Path) -> None:
    machine = Machine(
        tmp_path, sites=["site-a", "site-b"], clients={"minClients": 1, "perRound": 1}
    )
    a, b = machine.sites.values()

    async def play() -> None:
        async with machine.running():
            with pytest.raises(RoundClosed):
                await a.upload(0.1, round_number=1)  # no round is open yet
            machine.report_ready(a, b)
            await machine.training(1)
            (chosen,) = machine.state.sampled
            asked, other = (a, b) if chosen == "site-a" else (b, a)
            with pytest.raises(NotSampled):
                await other.upload(0.1)
            with pytest.raises(RoundClosed):
                await asked.upload(0.1, round_number=2)  # not the open round
            await asked.upload(0.1)
            # Answered: its second update would be counted twice. (The round closed already:
            # one client sampled, one answer.)
            with pytest.raises((AlreadyAnswered, RoundClosed)):
                await asked.upload(0.1, round_number=1)

    asyncio.run(play())


def test_a_second_update_of_a_site_in_the_open_round_is_refused(tmp_path: Path) -> None:
    machine = Machine(tmp_path, sites=["site-a", "site-b"])
    a, b = machine.sites.values()

    async def play() -> None:
        async with machine.running():
            machine.report_ready(a, b)
            await machine.training(1)
            await a.upload(0.1)
            with pytest.raises(AlreadyAnswered):
                await a.upload(0.1)
            assert a.task()["action"] == "wait"

    asyncio.run(play())
    assert machine.state.answers.keys() == {"site-a"}


def test_the_model_is_served_at_its_version_only(tmp_path: Path) -> None:
    machine = Machine(tmp_path, sites=["site-a"], rounds=3)
    desk = machine.engine.desk

    assert desk.model_payload(0) is machine.state.global_model
    with pytest.raises(UnknownVersion):
        desk.model_payload(1)

    async def play() -> None:
        async with machine.running():
            machine.sites["site-a"].report_ready()
            await machine.training(1)
            await machine.sites["site-a"].upload(0.1)
            await machine.training(2)

    asyncio.run(play())
    with pytest.raises(StaleVersion):
        desk.model_payload(0)
    assert desk.model_payload(1) is machine.state.global_model


def test_too_few_answers_retry_the_round_then_fail_the_job(tmp_path: Path) -> None:
    machine = Machine(tmp_path, sites=["site-a", "site-b"], clients={"maxRoundRetries": 1})
    a, b = machine.sites.values()

    async def play() -> None:
        async with machine.running() as run:
            machine.report_ready(a, b)
            await machine.training(1)
            await a.upload(0.1)
            machine.clock.advance(60)
            await machine.until(lambda: machine.state.attempt == 2)
            assert (machine.state.phase, machine.state.completed) == (Phase.TRAINING, 0)
            assert a.task()["action"] == "train"  # a new attempt: everyone trains again

            machine.clock.advance(60)
            await asyncio.wait_for(run, 20)

    asyncio.run(play())
    assert machine.state.phase is Phase.FAILED
    assert machine.state.failure == (
        "round 1 failed 2 times: 0 of 2 sampled clients answered before the deadline; "
        "at least 2 are needed"
    )
    assert machine.sites["site-a"].task()["action"] == "failed"


def test_the_job_ends_with_the_clients_evaluating_the_final_model(tmp_path: Path) -> None:
    machine = Machine(
        tmp_path, sites=["site-a", "site-b"], rounds=1, spec={"evaluation": {"federated": True}}
    )
    a, b = machine.sites.values()

    async def play() -> None:
        async with machine.running() as run:
            machine.report_ready(a, b)
            await machine.training(1)
            await a.upload(0.1)
            await b.upload(0.1)
            await machine.until(lambda: machine.state.phase is Phase.EVALUATING)
            assert a.task()["action"] == "evaluate"
            with pytest.raises(EvaluationNotAsked):
                a.evaluate(0)
            a.evaluate(1)
            with pytest.raises(NotEvaluating):
                machine.engine.desk.receive_evaluation(site="site-c", version=1, metrics={})
            assert a.task()["action"] == "wait"
            b.evaluate(1)
            await asyncio.wait_for(run, 20)
            assert a.task()["action"] == "done"
            # The aggregator waits (a while) for every connected client to learn the end.
            released = asyncio.create_task(machine.engine.desk.wait_released(timeout=5))
            await asyncio.sleep(0.05)
            assert not released.done()
            assert b.task()["action"] == "done"
            await asyncio.wait_for(released, 20)

    asyncio.run(play())
    assert machine.state.phase is Phase.DONE and machine.state.final_evaluated
    (row,) = machine.engine.ledger.history_json()
    assert row["federated"]["loss"] == pytest.approx(0.25)


def test_a_job_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    first = Machine(tmp_path, sites=["site-a", "site-b"], rounds=2)

    async def round_one() -> None:
        async with first.running():
            for site in first.sites.values():
                site.report_ready()
            await first.training(1)
            for site in first.sites.values():
                await site.upload(0.3)
            await first.until(lambda: first.state.persisted == 1)

    asyncio.run(round_one())
    played = first.model()

    second = Machine(tmp_path, sites=["site-a", "site-b"], rounds=2)
    assert second.resume()
    assert (second.state.completed, second.state.persisted, second.state.current_round) == (1, 1, 2)
    assert _shifted(played, second.model()) == {0.0}
    assert [row["round"] for row in second.engine.ledger.history_json()] == [1]

    async def round_two() -> None:
        async with second.running() as run:
            for site in second.sites.values():
                assert site.task()["action"] == "report"  # a restarted aggregator asks again
                site.report_ready()
            await second.training(2)
            for site in second.sites.values():
                await site.upload(0.1)
            await asyncio.wait_for(run, 20)

    asyncio.run(round_two())
    assert second.state.phase is Phase.DONE and second.state.persisted == 2
    assert _shifted(played, second.model()) == {0.1}
    assert [row["round"] for row in second.engine.ledger.history_json()] == [1, 2]
