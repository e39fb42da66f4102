"""The round engine's other parts, each alone: the client desk, the ledger and the upload
intake, built with their collaborators and a fake clock; no HTTP, no engine running."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import torch

from flotilla.fl.aggregator import errors
from flotilla.fl.aggregator.changes import Changes
from flotilla.fl.aggregator.desk import ClientDesk
from flotilla.fl.aggregator.fold import RoundFold
from flotilla.fl.aggregator.intake import UpdateIntake
from flotilla.fl.aggregator.ledger import Ledger
from flotilla.fl.aggregator.pace import UploadPace
from flotilla.fl.aggregator.records import RoundRecord
from flotilla.fl.aggregator.roster import Roster
from flotilla.fl.aggregator.state import EngineState, Phase
from flotilla.fl.aggregator.terms import UploadTerms
from flotilla.fl.strategies.rules import WeightedMean
from flotilla.fl.wire import Layout, TensorSpec
from tests.unit.aggregator.fakes import FakeClock

LAYOUT = Layout.of([TensorSpec("w", (2, 3), "F32"), TensorSpec("b", (3,), "F32")])


def _body(fill: float) -> bytes:
    """An update's body on the wire (uncompressed): every value `fill`."""
    buffer = LAYOUT.allocate()
    for view in LAYOUT.views(buffer).values():
        view.fill_(fill)
    return bytes(buffer)


async def _pieces(body: bytes, gate: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """The body, sent once `gate` opens (a slow client holds its buffer until then)."""
    if gate is not None:
        await gate.wait()
    yield body


def _terms(site: str, body: bytes) -> UploadTerms:
    return UploadTerms(site=site, size=len(body), seconds_left=60.0, round_number=1)


# -- the client desk ---------------------------------------------------------------------------


class Desk:
    """A desk on real parts (state, roster, intake, fold, ledger) and a fake clock; the test
    plays the engine by moving the state's phase itself."""

    def __init__(self, sites: list[str]) -> None:
        self.clock = FakeClock()
        changes = Changes(self.clock)
        self.state = EngineState(
            rounds=2, model=LAYOUT.allocate(), layout=LAYOUT, changes=changes, clock=self.clock
        )
        self.roster = Roster(sites, changes=changes, clock=self.clock)
        self.intake = UpdateIntake(LAYOUT, max_norm=None)
        self.fold = RoundFold(rule=WeightedMean(), layout=LAYOUT, privacy=None)
        self.ledger = Ledger()
        self.desk = ClientDesk(
            state=self.state,
            roster=self.roster,
            intake=self.intake,
            fold=self.fold,
            ledger=self.ledger,
            clock=self.clock,
            proximal_mu=0.01,
        )

    def ready(self, *sites: str) -> None:
        for site in sites:
            self.desk.seen(site, lambda: True)
            self.desk.receive_site_report(site, {"ready": True, "data": {}})

    def open_round(self, sampled: list[str], seconds: float = 60.0) -> None:
        self.intake.open_round(self.state.current_round)
        self.fold.begin()
        self.state.open_round(sampled, attempt=1, seconds=seconds)

    def action(self, site: str) -> str:
        return str(self.desk.task_for(site)["action"])

    async def upload(self, site: str, fill: float, **metrics: Any) -> dict[str, Any]:
        body = _body(fill)
        return await self.desk.receive_update(
            site=site,
            round_number=self.state.current_round,
            body=_pieces(body),
            zstd=False,
            examples=10,
            metrics={"train": {"loss": 0.5, "accuracy": 0.8}, **metrics},
            size=len(body),
        )


def test_the_desk_asks_a_new_site_for_its_report_then_has_it_wait_for_a_round() -> None:
    d = Desk(["a", "b"])
    assert d.action("a") == "report"
    d.ready("a")
    task = d.desk.task_for("a")
    assert task["action"] == "wait"
    assert (task["round"], task["rounds"], task["modelVersion"]) == (1, 2, 0)
    assert task["proximalMu"] == 0.01
    assert d.action("b") == "report", "b has not said how its data is"


def test_a_waiting_task_long_poll_answers_at_once_when_the_aggregator_stops() -> None:
    d = Desk(["a", "b"])
    d.ready("a")

    async def play() -> tuple[bool, dict[str, Any], dict[str, Any]]:
        polling = asyncio.create_task(d.desk.wait_task("a", timeout=3600))
        await asyncio.sleep(0)
        waiting = not polling.done()
        d.state.changes.close()  # what the aggregator does on a signal (main.py)
        task = await asyncio.wait_for(polling, 5)
        # And a long-poll that comes after does not wait either.
        later = await asyncio.wait_for(d.desk.wait_task("a", timeout=3600), 5)
        return waiting, task, later

    waiting, task, later = asyncio.run(play())
    assert waiting, "the long-poll waited for a round before the stop"
    assert task["action"] == later["action"] == "wait"


def test_a_waiting_task_long_poll_sleeps_through_a_round_closing_and_wakes_as_one_opens() -> None:
    """Closing a round and waiting for clients give no one work: at 1,000 sites, waking
    every long-poll for them cost 2,000 wake-ups a round."""
    d = Desk(["a", "b"])
    d.ready("a", "b")
    asked: list[str] = []
    task_for = d.desk.task_for
    d.desk.task_for = lambda site: (asked.append(site), task_for(site))[1]  # type: ignore[method-assign]

    async def play() -> tuple[int, dict[str, Any]]:
        d.open_round(["b"])
        polling = asyncio.create_task(d.desk.wait_task("a", timeout=3600))
        await asyncio.sleep(0)
        d.state.close_round()  # the round's end: still nothing for "a"
        d.state.set_phase(Phase.WAITING, "waiting for clients")
        for _ in range(5):
            await asyncio.sleep(0)
        asked_while_waiting = len(asked)
        d.open_round(["a", "b"])
        return asked_while_waiting, await asyncio.wait_for(polling, 5)

    asked_while_waiting, task = asyncio.run(play())
    assert asked_while_waiting == 1, "a phase that gives no work woke the long-poll"
    assert task["action"] == "train" and task["round"] == 1
    assert asked == ["a", "a"]


def test_the_desk_asks_the_sampled_sites_to_train_until_their_update_is_folded() -> None:
    d = Desk(["a", "b", "c"])
    d.ready("a", "b", "c")
    d.open_round(["a", "b"], seconds=60)
    assert [d.action(s) for s in ("a", "b", "c")] == ["train", "train", "wait"]
    d.clock.advance(15)
    assert d.desk.task_for("a")["deadlineSeconds"] == 45.0

    answer = asyncio.run(d.upload("a", 2.0))
    assert answer["accepted"] and answer["round"] == 1
    assert answer["updateNorm"] == pytest.approx(2.0 * math.sqrt(9))
    assert set(d.state.answers) == {"a"} and d.state.answers["a"].examples == 10
    assert [d.action(s) for s in ("a", "b")] == ["wait", "train"]

    with pytest.raises(errors.AlreadyAnswered):
        asyncio.run(d.upload("a", 2.0))
    with pytest.raises(errors.NotSampled):
        asyncio.run(d.upload("c", 2.0))
    d.clock.advance(60)
    assert d.desk.task_for("b")["deadlineSeconds"] == 0.0, "never negative"


def test_the_desk_asks_for_the_final_evaluation_and_files_it_in_the_ledger() -> None:
    d = Desk(["a", "b"])
    d.ready("a", "b")
    d.open_round(["a", "b"])
    d.state.close_round()
    d.state.advance(LAYOUT.allocate())  # round 1 aggregated: model version 1 is served
    d.state.open_evaluation(["a"], seconds=30)
    assert [d.action(s) for s in ("a", "b")] == ["evaluate", "wait"]

    with pytest.raises(errors.EvaluationNotAsked):
        d.desk.receive_evaluation(site="a", version=0, metrics={"loss": 1.0, "examples": 5})
    with pytest.raises(errors.NotEvaluating):
        d.desk.receive_evaluation(site="b", version=1, metrics={"loss": 1.0, "examples": 5})
    d.desk.receive_evaluation(
        site="a", version=1, metrics={"loss": 0.25, "examples": 5, "accuracy": 0.75}
    )
    assert not d.state.evaluation_asked_of("a") and not d.state.evaluation_asked_of("b")
    assert d.state.all_evaluated()
    assert d.ledger.evaluations[1]["a"].loss == 0.25
    assert d.action("a") == "wait"


def test_the_desk_serves_only_the_current_model_and_tells_a_finished_job() -> None:
    d = Desk(["a"])
    d.ready("a")
    assert d.desk.model_payload(0) is d.state.global_model
    with pytest.raises(errors.UnknownVersion):
        d.desk.model_payload(1)
    d.state.advance(LAYOUT.allocate())
    with pytest.raises(errors.StaleVersion):
        d.desk.model_payload(0)

    d.state.set_phase(Phase.DONE, "done")
    assert d.action("a") == "done"
    assert d.roster.all_released(), "a site told the job ended is released"


def test_an_update_carries_the_sites_evaluation_of_the_model_it_trained_on_to_the_ledger() -> None:
    d = Desk(["a"])
    d.ready("a")
    d.state.advance(LAYOUT.allocate())  # model 1 served; round 2 trains on it
    d.open_round(["a"])
    evaluation = {"loss": 0.4, "examples": 8, "accuracy": 0.9, "modelVersion": 1}
    asyncio.run(d.upload("a", 1.0, eval=evaluation))
    assert d.ledger.evaluations[1]["a"].examples == 8


# -- the ledger --------------------------------------------------------------------------------


def _record(number: int, loss: float) -> RoundRecord:
    return RoundRecord(
        round=number,
        sampled=["a", "b"],
        answered=["a", "b"],
        attempts=1,
        started_at=1000.0 + number,
        duration_seconds=2.0,
        aggregation_seconds=0.1,
        bytes_received=4096,
        train_loss=loss,
        train_accuracy=0.8,
    )


def test_the_ledger_records_a_rounds_row_and_its_federated_metrics_when_read() -> None:
    ledger = Ledger()
    assert ledger.history_json() == [] and ledger.last_json() is None
    ledger.add_round(_record(1, 0.9))
    row = ledger.last_json()
    assert row is not None and row["round"] == 1 and row["train_loss"] == 0.9
    assert row["federated"] is None and row["loss"] is None, "no evaluation yet"

    # Round 1's model is evaluated late, as round 2 starts: read again, the row has it.
    ledger.note_evaluation("a", 1, {"loss": 1.0, "examples": 10, "accuracy": 0.5})
    ledger.note_evaluation("b", 1, {"loss": 2.0, "examples": 30, "accuracy": 0.7})
    ledger.note_evaluation("a", 0, {"loss": 9.0, "examples": 10})  # the random model's
    ledger.note_evaluation("b", 2, {"loss": 9.0, "examples": 0})  # no hold-out
    assert set(ledger.evaluations) == {1}
    (row,) = ledger.history_json()
    assert row["federated"]["loss"] == pytest.approx((1.0 * 10 + 2.0 * 30) / 40)
    assert row["federated"]["clients"] == 2.0
    assert row["loss"] == pytest.approx(1.75) and row["accuracy"] == pytest.approx(0.65)

    ledger.add_round(_record(2, 0.7))
    assert [r["round"] for r in ledger.history_json()] == [1, 2]
    assert [r["round"] for r in ledger.history_json(after=1)] == [2]
    summary = ledger.summary(job="digits", phase="done", failure=None, rounds=2)
    assert summary["job"] == "digits"


def test_the_ledger_comes_back_whole_from_its_state() -> None:
    ledger = Ledger()
    ledger.add_round(_record(1, 0.9))
    ledger.note_evaluation("a", 1, {"loss": 1.0, "examples": 10, "accuracy": 0.5})
    ledger.add_round(_record(2, 0.7))

    restored = Ledger()
    restored.restore(ledger.state_json())
    assert restored.history_json() == ledger.history_json()
    assert restored.evaluations == ledger.evaluations
    assert Ledger().history_json() == [], "a ledger of its own: nothing shared"


# -- the upload intake -------------------------------------------------------------------------


def test_the_intake_checks_and_hands_on_an_update_and_frees_its_buffer() -> None:
    intake = UpdateIntake(LAYOUT, max_norm=None)

    async def play() -> tuple[dict[str, torch.Tensor], int, set[str], set[str]]:
        body = _body(3.0)
        gate = asyncio.Event()
        receiving = intake.receive(_pieces(body, gate), terms=_terms("a", body), zstd=False)
        entered = asyncio.create_task(receiving.__aenter__())
        await asyncio.sleep(0)
        arriving = intake.receiving()
        gate.set()
        got = await asyncio.wait_for(entered, 5)
        # With the update on its way to the fold, the buffer is the next upload's (fence.py).
        folding = intake.receiving()
        values = {name: t.clone() for name, t in got.update.tensors.items()}
        await receiving.__aexit__(None, None, None)
        return values, got.wire_bytes, arriving, folding

    values, wire_bytes, arriving, folding = asyncio.run(play())
    assert arriving == {"a"} and folding == set() and intake.receiving() == set()
    assert wire_bytes == len(_body(3.0))
    for tensor in values.values():
        assert torch.equal(tensor, torch.full_like(tensor, 3.0))


def test_the_intake_refuses_a_body_that_is_no_update_and_one_too_large() -> None:
    intake = UpdateIntake(LAYOUT, max_norm=None)

    async def receive(body: bytes) -> None:
        async with intake.receive(_pieces(body), terms=_terms("a", body), zstd=False):
            pass

    with pytest.raises(errors.BadPayload):
        asyncio.run(receive(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}"))
    with pytest.raises(errors.TooLarge):
        asyncio.run(receive(_body(1.0) + b"\0" * intake.max_body_bytes))
    assert intake.receiving() == set(), "a refused body gives its buffer back"


def test_the_intake_refuses_an_update_beyond_its_norm_bound() -> None:
    intake = UpdateIntake(LAYOUT, max_norm=1.0)

    async def receive() -> None:
        body = _body(5.0)
        async with intake.receive(_pieces(body), terms=_terms("a", body), zstd=False):
            pass

    with pytest.raises(errors.BadValues):
        asyncio.run(receive())


def test_the_intake_refuses_a_second_upload_of_the_same_site_while_one_is_on() -> None:
    intake = UpdateIntake(LAYOUT, max_norm=None)

    async def play() -> None:
        gate = asyncio.Event()
        body = _body(1.0)

        async def first() -> None:
            async with intake.receive(_pieces(body, gate), terms=_terms("a", body), zstd=False):
                pass

        task = asyncio.create_task(first())
        while intake.receiving() != {"a"}:
            await asyncio.sleep(0)
        with pytest.raises(errors.UploadInProgress):
            async with intake.receive(_pieces(body), terms=_terms("a", body), zstd=False):
                pass
        gate.set()
        await asyncio.wait_for(task, 5)
        # Once the first is done, the site may upload again.
        async with intake.receive(_pieces(body), terms=_terms("a", body), zstd=False):
            pass

    asyncio.run(play())


def test_the_intake_grants_its_buffers_in_arrival_order() -> None:
    # Two buffers, the second made at once for b: a's stalled body counts as a slow link.
    pace = UploadPace(slow_link_bytes_per_second=1e12, slow_link_after_seconds=0.01)
    intake = UpdateIntake(LAYOUT, max_norm=None, buffers=2, pace=pace)
    order: list[str] = []

    async def play() -> None:
        gates = {site: asyncio.Event() for site in "abcd"}
        body = _body(1.0)

        async def upload(site: str) -> None:
            body_of = _pieces(body, gates[site])
            async with intake.receive(body_of, terms=_terms(site, body), zstd=False):
                order.append(site)

        tasks = []
        for arrived, site in enumerate("abcd", start=1):  # a, b take the buffers; c, d wait
            tasks.append(asyncio.create_task(upload(site)))
            async with asyncio.timeout(5):  # each arrives once the one before has queued
                while len(intake._uploads) < arrived:
                    await asyncio.sleep(0)
            if site == "b":
                async with asyncio.timeout(5):
                    while intake.receiving() != {"a", "b"}:
                        await asyncio.sleep(0.01)
        gates["d"].set()  # both waiting bodies could flow: the freed buffer goes to c,
        gates["c"].set()  # which came first, and d waits on
        gates["a"].set()
        await asyncio.wait_for(tasks[0], 5)
        async with asyncio.timeout(5):  # b holds the other buffer: c, then d, take a's
            while "d" not in order:
                await asyncio.sleep(0)
        gates["b"].set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert order == ["a", "c", "d", "b"]

    asyncio.run(play())
    # c came before d, so it got the first buffer freed (a's), checked in play(). Which of
    # c and d finishes first is up to the loop and the machine's load: once b is released,
    # d reads into b's buffer while c's update may still be decoding in its thread.
    assert order[0] == "a"
    assert sorted(order) == list("abcd")
