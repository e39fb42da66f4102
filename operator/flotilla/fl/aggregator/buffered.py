"""Buffered asynchronous aggregation (FedBuff): the server steps every `size` updates.

Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation". There
are no sampled rounds: every ready client trains all the time, on the latest model it
was given, and uploads its delta against that model. Each update is folded the moment it
arrives (the fold is the synchronous rounds', fold.py: one accumulator, no list of
updates), scaled by its staleness (strategies/staleness.py). Once `size` updates are in,
the server steps with the strategy's server optimizer and the model's version advances:
one server update is what a round is everywhere else (a history row, a checkpoint, an
MLflow step, `round` in the status), so `spec.rounds` counts server updates. A slow
client never holds a step; its update counts less the staler it is, and not at all
beyond `maxStaleness` (410 `too_stale`; the client trains again on the current model).

Every fold is written down before its client is answered (journal.py), so an update
the aggregator acknowledged survives a restart: the restarted aggregator resumes the
buffer from the journal and, if the buffer was full but its server update not yet
durable, replays that step. An upload whose answer was lost and that its client sends
again (same upload id) is refused as a duplicate, not folded twice (buffer.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from flotilla.fl.aggregator.buffer import BufferedUpdate, UpdateBuffer
from flotilla.fl.aggregator.changes import Changes, Clock
from flotilla.fl.aggregator.errors import RoundClosed
from flotilla.fl.aggregator.fold import RoundFold
from flotilla.fl.aggregator.journal import BufferJournal
from flotilla.fl.aggregator.persist import Persister
from flotilla.fl.aggregator.records import ClientReport
from flotilla.fl.aggregator.roster import Roster
from flotilla.fl.aggregator.state import EngineState, Phase
from flotilla.fl.aggregator.terms import ReceivedUpdate
from flotilla.fl.strategies.base import ServerOptimizer
from flotilla.fl.wire import Layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Folded:
    """What a client's upload became: its staleness, and the server update it is in."""

    staleness: int
    version: int


class BufferedAggregation:
    def __init__(
        self,
        *,
        state: EngineState,
        roster: Roster,
        fold: RoundFold,
        buffer: UpdateBuffer,
        journal: BufferJournal,
        persister: Persister,
        optimizer: ServerOptimizer,
        layout: Layout,
        clock: Clock,
    ) -> None:
        self.buffer = buffer
        self.journal = journal
        self.journal_failures = 0  # fold writes that failed (the update stays in memory)
        self._state = state
        self._roster = roster
        self._fold = fold
        self._persister = persister
        self._optimizer = optimizer
        self._layout = layout
        self._clock = clock
        self._open = False  # uploads may fold: from `open` to the last server update

    @property
    def changes(self) -> Changes:
        return self._state.changes

    # -- the clients' side (the desk calls these) -------------------------------------------

    def check(self, site: str, round_number: int, upload_id: str | None) -> int:
        """Raises unless an upload of `round_number` may be folded now; its staleness."""
        state = self._state
        if not self._open or state.finished or state.completed >= state.rounds:
            raise RoundClosed(
                f"no server update takes updates now (phase {state.phase.value}, "
                f"{state.completed} of {state.rounds} made)"
            )
        self.buffer.check_new(site, upload_id)
        return self.buffer.staleness(round_number, version=state.completed)

    async def fold(
        self,
        received: ReceivedUpdate,
        *,
        report: ClientReport,
        round_number: int,
        upload_id: str | None,
    ) -> Folded:
        """Fold a checked upload into the open buffer, once it has room (a full buffer is
        being stepped: the update goes into the next one, its staleness counted then), and
        write the buffer down before the client hears of it."""
        while True:
            async with self._fold.turn():
                staleness = self.check(report.site, round_number, upload_id)
                if not self.buffer.full:
                    base = round_number - 1
                    update = BufferedUpdate(report=report, base=base, staleness=staleness)
                    await self._fold.add(
                        received.update,
                        examples=report.examples,
                        staleness=staleness,
                        release=received.release,
                    )
                    self.buffer.add(update, upload_id=upload_id)
                    await self._write_down()
                    self._say()
                    self.changes.bump()
                    return Folded(staleness=staleness, version=self._state.completed + 1)
            await self.changes.wait(1.0)  # the step opens the next buffer

    # -- the engine's side ------------------------------------------------------------------

    async def open(self) -> None:
        """Take the job up where the journal left it: a buffer written down for the next
        server update is resumed, and stepped at once if it was full. Uploads fold from here."""
        state = self._state
        await self.forget_durable()
        if state.completed >= state.rounds:
            return
        async with self._fold.turn():
            await self._open_next()
            while self.buffer.full and state.completed < state.rounds:
                log.info(
                    "server update %d: its buffer was full when the aggregator stopped; "
                    "stepping it again from the journal",
                    state.completed + 1,
                )
                await self._step()
                if state.completed < state.rounds:
                    await self._open_next()

    async def play(self) -> None:
        """Make server updates until `spec.rounds` are made; then no upload folds."""
        state = self._state
        while state.completed < state.rounds and not state.finished:
            self._say()
            while not self.buffer.full:
                await self.changes.wait(1.0)
            async with self._fold.turn():
                await self._step()
                if state.completed < state.rounds:
                    await self._open_next()
        async with self._fold.turn():
            self._open = False

    async def forget_durable(self) -> None:
        """Drop the buffers of server updates whose checkpoint is durable."""
        await asyncio.to_thread(self.journal.forget, through=self._state.persisted)

    def start_training(self) -> None:
        """The clients are there: every ready one is asked to train from now on. A server
        update with nothing folded yet counts its time from here, as a round would."""
        if self.buffer.count == 0:
            self.buffer.open(now=self._clock())
        self._state.set_phase(Phase.TRAINING, self._message())

    async def _open_next(self) -> None:
        """The buffer of the next server update: the journal's, or a fresh one."""
        version = self._state.completed + 1
        identity = self._persister.identity()
        written = await asyncio.to_thread(
            self.journal.load, version, self._layout, identity=identity
        )
        if written is None:
            await asyncio.to_thread(self.journal.forget, first=version)
            self._fold.begin()
            self.buffer.open(now=self._clock())
        else:
            self._fold.resume(
                written.accumulator, total_weight=written.total_weight, count=written.count
            )
            self.buffer.restore(written.books, now=self._clock())
            log.info(
                "server update %d: resumed its buffer of %d updates from the journal",
                version,
                written.count,
            )
        self._open = True
        self.changes.bump()

    async def _step(self) -> None:
        """In the fold's turn: the buffer's mean moves the model; the next version is served."""
        state, started = self._state, self._clock()
        taken = self._fold.take()
        assert taken is not None, "no buffer is open"
        aggregate, accumulator = taken
        count = self.buffer.count  # no privacy here: the counts are the rule's business only
        await self._fold.finish(aggregate, accumulator, answered=count, sampled=count)
        await self._persister.settle()  # the last server update's checkpoint is durable
        await self.forget_durable()
        await asyncio.to_thread(
            self._optimizer.step,
            global_weights=state.global_views,
            update=self._layout.views(accumulator),
        )
        record = self.buffer.record(
            version=state.completed + 1,
            present=self._roster.present(),
            seconds=self._clock() - self.buffer.opened,
            aggregation_seconds=self._clock() - started,
        )
        # The retired model's last reader, the checkpoint, finished before the step.
        self._fold.recycle(state.advance(accumulator))
        self._persister.keep(record, accumulator)

    async def _write_down(self) -> None:
        """The buffer as it stands, on disk (journal.py); a failed write is logged and the
        update stays folded: it is in the next server update unless the aggregator dies first."""
        held = self._fold.held()
        assert held is not None
        accumulator, total_weight, count = held
        try:
            await asyncio.to_thread(
                self.journal.save,
                version=self._state.completed + 1,
                accumulator=accumulator,
                total_weight=total_weight,
                count=count,
                books=self.buffer.to_json(),
                identity=self._persister.identity(),
            )
        except OSError as error:
            self.journal_failures += 1
            log.error(
                "server update %d: the buffer could not be written down (%s); its %d updates "
                "are lost if the aggregator stops before the step",
                self._state.completed + 1,
                error,
                count,
            )

    def _say(self) -> None:
        if self._state.phase is Phase.TRAINING:
            self._state.say(self._message())

    def _message(self) -> str:
        state, buffer = self._state, self.buffer
        return (
            f"server update {state.current_round}: {buffer.count} of {buffer.size} updates "
            f"buffered; {len(self._roster.present())} clients training"
        )
