"""The round engine's parts, each alone: the change feed, the state, the roster, the fold,
the receive pool, the pace's refusals and their HTTP answers."""

from __future__ import annotations

import asyncio
import inspect
import struct

import pytest
import torch

from flotilla.fl.aggregator import errors
from flotilla.fl.aggregator.changes import Changes
from flotilla.fl.aggregator.fence import ReadFence
from flotilla.fl.aggregator.fold import RoundFold
from flotilla.fl.aggregator.http_errors import ANSWERS, answer_for
from flotilla.fl.aggregator.pace import Progress, UploadPace
from flotilla.fl.aggregator.pool import ReceivePool
from flotilla.fl.aggregator.records import ClientReport
from flotilla.fl.aggregator.roster import Roster
from flotilla.fl.aggregator.state import EngineState, Phase
from flotilla.fl.codec import decode_update
from flotilla.fl.strategies.rules import WeightedMean
from flotilla.fl.wire import Layout, TensorSpec
from tests.unit.aggregator.fakes import FakeClock

LAYOUT = Layout.of([TensorSpec("w", (2, 3), "F32"), TensorSpec("b", (3,), "F32")])


def _report(site: str) -> ClientReport:
    return ClientReport(site, 10, 0.5, 0.9, 1.0, wire_bytes=100, norm=1.0)


def _state(clock: FakeClock, rounds: int = 3) -> EngineState:
    return EngineState(
        rounds=rounds, model=LAYOUT.allocate(), layout=LAYOUT, changes=Changes(clock), clock=clock
    )


# -- the change feed -------------------------------------------------------------------------


def test_a_bump_wakes_a_waiter_at_once_and_a_timeout_on_the_clock_ends_a_wait() -> None:
    async def play() -> tuple[bool, bool, int]:
        clock = FakeClock()
        changes = Changes(clock)
        woken = asyncio.create_task(changes.wait(3600))
        await asyncio.sleep(0.01)
        changes.bump()
        await asyncio.wait_for(woken, 1)

        timed = asyncio.create_task(changes.wait(10))
        await asyncio.sleep(0.01)
        clock.advance(9)
        await asyncio.sleep(0.01)
        early = timed.done()
        clock.advance(1)
        await asyncio.wait_for(timed, 1)
        return woken.done(), early, changes.seq

    woken, early, seq = asyncio.run(play())
    assert woken and not early and seq == 1


def test_a_work_waiter_sleeps_through_other_changes_and_wakes_on_one_that_may_give_work() -> None:
    async def play() -> tuple[bool, bool, bool]:
        changes = Changes(FakeClock())
        work_waiter = asyncio.create_task(changes.wait(3600, work=True))
        any_waiter = asyncio.create_task(changes.wait(3600))
        await asyncio.sleep(0.01)
        changes.bump()  # an update folded, a site seen: no client's task changed
        await asyncio.sleep(0.01)
        slept, any_woken = not work_waiter.done(), any_waiter.done()
        changes.bump(work=True)
        await asyncio.wait_for(work_waiter, 1)
        return slept, any_woken, work_waiter.done()

    assert asyncio.run(play()) == (True, True, True)


def test_a_cancelled_wait_is_cancelled_even_as_a_change_arrives() -> None:
    async def play() -> bool:
        changes = Changes(FakeClock())
        waiter = asyncio.create_task(changes.wait(3600))
        await asyncio.sleep(0.01)
        changes.bump()
        waiter.cancel()  # the engine stopping: it must stop, not run on
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return waiter.cancelled()

    assert asyncio.run(play())


# -- the state -------------------------------------------------------------------------------


def test_the_state_says_why_an_update_is_refused() -> None:
    state = _state(FakeClock())
    with pytest.raises(errors.RoundClosed, match=r"round 1 is not open \(phase waiting"):
        state.check_open("a", 1)

    state.open_round(["a", "b"], attempt=1, seconds=60)
    with pytest.raises(errors.RoundClosed):
        state.check_open("a", 2)
    with pytest.raises(errors.NotSampled):
        state.check_open("c", 1)
    state.check_open("a", 1)
    state.answer(_report("a"))
    with pytest.raises(errors.AlreadyAnswered):
        state.check_open("a", 1)


def test_a_round_opens_closes_and_advances_the_model() -> None:
    clock = FakeClock()
    state = _state(clock)
    seq = state.changes.seq
    state.open_round(["a", "b"], attempt=2, seconds=60)
    assert (state.phase, state.attempt, state.deadline) == (Phase.TRAINING, 2, clock.now + 60)
    assert state.changes.seq > seq and state.message == "round 1: training on 2 clients"

    state.answer(_report("a"))
    assert not state.all_answered()
    state.forget(["a", "b"])  # both left: a stays counted, b is no longer waited for
    assert state.all_answered() and state.asked == {"a"}

    assert [r.site for r in state.close_round()] == ["a"]
    assert state.asked == frozenset() and state.sampled == {"a", "b"}
    served, new = state.global_model, LAYOUT.allocate()
    assert state.advance(new) is served
    assert (state.completed, state.persisted, state.current_round) == (1, 0, 2)
    state.persisted_through(1)
    assert state.persisted == 1 and state.global_model is new


def test_the_current_round_stays_at_the_last_once_all_are_done() -> None:
    state = _state(FakeClock(), rounds=1)
    state.restore(model=LAYOUT.allocate(), completed=1, final_evaluated=True)
    assert (state.current_round, state.completed, state.final_evaluated) == (1, 1, True)
    state.restore(model=LAYOUT.allocate(), completed=0, final_evaluated=True)
    assert not state.final_evaluated  # more rounds to play: their final model is evaluated too


def test_a_failure_is_kept_with_its_reason() -> None:
    state = _state(FakeClock())
    state.fail("round 1 failed 4 times: too few answers")
    assert state.finished and state.phase is Phase.FAILED
    assert state.failure == state.message == "round 1 failed 4 times: too few answers"


# -- the roster ------------------------------------------------------------------------------


def test_a_site_counts_once_connected_and_ready() -> None:
    clock = FakeClock()
    roster = Roster(["b", "a", "c"], changes=Changes(clock), clock=clock)
    links = {"a": True, "b": True}
    roster.seen("a", lambda: links["a"])
    roster.seen("b", lambda: links["b"])
    assert roster.sites == ("a", "b", "c")
    assert roster.connected() == ["a", "b"] and roster.present() == []

    roster.take_report("a", {"ready": True, "data": {}})
    roster.take_report("b", {"ready": False, "error": "no export"})
    assert roster.present() == ["a"]
    assert roster.site_problems() == {"b": "no export"} and roster.awaited() == {"a", "c"}

    links["a"] = False
    clock.advance(2)
    assert roster.present() == ["a"]  # a moment's grace to re-dial
    clock.advance(2)
    assert roster.present() == []


def test_a_site_that_leaves_takes_its_report_with_it() -> None:
    clock = FakeClock()
    roster = Roster(["a", "b"], changes=Changes(clock), clock=clock)
    roster.take_report("b", {"ready": True, "data": {"ignoredLabels": {"truck": 2}}})
    assert roster.label_mismatches() == {"b": {"ignored": {"truck": 2}, "missing": []}}

    assert roster.set_sites(["a"]) == {"b"}
    assert roster.site_reports == {} and roster.sites == ("a",)


def test_the_job_is_released_once_every_connected_site_learned_it_ended() -> None:
    clock = FakeClock()
    roster = Roster(["a", "b"], changes=Changes(clock), clock=clock)
    roster.seen("a", lambda: True)
    roster.seen("b", lambda: True)
    roster.release("a")
    assert not roster.all_released()
    roster.release("b")
    assert roster.all_released()


# -- the fold --------------------------------------------------------------------------------


def _update(fill: float) -> bytearray:
    buffer = LAYOUT.allocate()
    for view in LAYOUT.views(buffer).values():
        view.fill_(fill)
    return buffer


def test_the_fold_takes_the_weighted_mean_of_the_updates_it_was_given() -> None:
    fold = RoundFold(rule=WeightedMean(), layout=LAYOUT, privacy=None)

    async def play() -> dict[str, torch.Tensor]:
        fold.begin()
        for fill, examples in ((1.0, 1), (3.0, 3)):
            update = decode_update(LAYOUT.views(_update(fill)), max_norm=None)
            async with fold.turn():
                await fold.add(update, examples=examples)
        async with fold.turn():
            taken = fold.take()
        assert taken is not None and fold.take() is None
        aggregate, accumulator = taken
        assert await fold.finish(aggregate, accumulator, answered=2, sampled=2) is None
        return LAYOUT.views(accumulator)

    mean = asyncio.run(play())
    for tensor in mean.values():
        assert torch.allclose(tensor, torch.full_like(tensor, 2.5))  # (1 * 1 + 3 * 3) / 4


def test_a_fold_outside_its_turn_is_a_bug() -> None:
    fold = RoundFold(rule=WeightedMean(), layout=LAYOUT, privacy=None)
    fold.begin()
    update = decode_update(LAYOUT.views(_update(1.0)), max_norm=None)
    with pytest.raises(AssertionError, match="turn"):
        asyncio.run(fold.add(update, examples=1))


# -- the receive pool ------------------------------------------------------------------------


def test_buffers_go_to_the_uploads_waiting_in_arrival_order() -> None:
    async def play() -> None:
        pool = ReceivePool(16, count=1)
        held = pool.get_nowait()
        assert held is not None and pool.get_nowait() is None
        first, second = pool.queue(), pool.queue()
        assert pool.waiting == 2
        assert pool.give(held) and first.result() is held and not second.done()
        pool.leave(first)
        # The first gives up just as it got the buffer: it goes on to the next in line.
        assert pool.abandon(first) and second.result() is held
        pool.leave(second)
        assert not pool.give(held) and pool.get_nowait() is held

    asyncio.run(play())


def test_a_waiter_that_gives_up_leaves_the_line_and_one_handed_a_buffer_is_out_already() -> None:
    async def play() -> None:
        pool = ReceivePool(16, count=1)
        held = pool.get_nowait()
        assert held is not None
        first, second, third = pool.queue(), pool.queue(), pool.queue()
        second.cancel()  # timed out in line
        pool.leave(second)
        assert pool.waiting == 2
        assert pool.give(held) and first.result() is held
        pool.leave(first)  # handed its buffer: give() took it off the front
        assert pool.waiting == 1
        assert pool.give(held) and third.result() is held

    asyncio.run(play())


def test_a_buffers_views_are_made_once_for_the_same_offsets_and_kept_across_fences() -> None:
    pool = ReceivePool(LAYOUT.data_size, count=1)
    slot = pool.get_nowait()
    assert slot is not None
    views = slot.views(LAYOUT, dict(LAYOUT.offsets))
    views["b"].fill_(2.0)
    assert bytes(slot.buffer[-4:]) == struct.pack("<f", 2.0)  # over the buffer itself
    again = slot.refenced(ReadFence(len(slot.buffer)))
    assert again.views(LAYOUT, dict(LAYOUT.offsets)) is views
    # A body in another order: its own views, over the same bytes.
    w_bytes, b_bytes = LAYOUT.offsets["w"][1], LAYOUT.offsets["b"][1] - LAYOUT.offsets["b"][0]
    other = {"b": (0, b_bytes), "w": (b_bytes, b_bytes + w_bytes)}
    reordered = again.views(LAYOUT, other)
    assert reordered is not views and reordered.flat is None
    assert reordered["b"].data_ptr() == views["w"].data_ptr()


# -- refusals and their HTTP answers ---------------------------------------------------------


def test_every_kind_of_refusal_has_one_http_answer() -> None:
    kinds = {
        kind
        for _, kind in inspect.getmembers(errors, inspect.isclass)
        if issubclass(kind, errors.Refused) and kind is not errors.Refused
    }
    assert kinds == set(ANSWERS)


@pytest.mark.parametrize(
    ("refused", "answer"),
    [
        (errors.Unauthenticated(""), (401, "unauthorized")),
        (errors.NotSampled(""), (403, "not_sampled")),
        (errors.RoundClosed(""), (409, "round_closed")),
        (errors.AlreadyAnswered(""), (409, "duplicate")),
        (errors.UploadInProgress(""), (409, "duplicate")),
        (errors.StaleVersion(""), (410, "stale_version")),
        (errors.TooStale(""), (410, "too_stale")),
        (errors.AlreadyFolded(""), (409, "duplicate")),
        (errors.EvaluationNotAsked(""), (409, "stale_version")),
        (errors.UnknownVersion(""), (404, "unknown_version")),
        (errors.UnknownUpload(""), (404, "unknown_upload")),
        (errors.BadRange(""), (416, "bad_range")),
        (errors.TooSlow(""), (408, "too_slow")),
        (errors.Yielded(""), (503, "yielded")),
        (errors.BadValues(""), (422, "bad_values")),
    ],
)
def test_the_answers_clients_act_on_are_those_they_know(
    refused: errors.Refused, answer: tuple[int, str]
) -> None:
    assert answer_for(refused) == answer


def test_an_upload_off_its_pace_is_cut_with_the_rule_it_broke() -> None:
    progress = Progress(UploadPace(), size=1000, started=0.0, until=100.0)
    cuts = {rule: progress.cut(rule, site="s", now=50.0) for rule in ("idle", "rate", "round")}
    cuts["pace"] = progress.cut("pace", site="s", now=50.0)
    assert {rule: type(cut) for rule, cut in cuts.items()} == {
        "idle": errors.TooSlow,
        "rate": errors.TooSlow,
        "round": errors.RoundClosed,
        "pace": errors.Yielded,
    }
    assert all(cut.cut for cut in cuts.values())  # answered at once, the body not read on
