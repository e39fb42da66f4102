"""How the round engine's parts are wired: who holds whom, in one place.

    Changes  <- EngineState, Roster          (each bumps it on its own changes)
    RoundFold  -> DifferentialPrivacy        (clips each update as it folds)
    ClientDesk -> EngineState, Roster, UpdateIntake, RoundFold, Ledger
    Persister  -> EngineState, Ledger, CheckpointStore, DifferentialPrivacy
    StatusReader -> EngineState, Roster, Ledger, DifferentialPrivacy, the intake's links
    BufferedAggregation -> EngineState, Roster, RoundFold, UpdateBuffer, BufferJournal,
                           Persister       (only with spec.strategy.buffered)

The engine (engine.py) holds them all and plays the rounds; no part writes another's
fields, each changes another only through its methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flotilla.api import FederatedJob
from flotilla.fl.aggregator.buffer import UpdateBuffer
from flotilla.fl.aggregator.buffered import BufferedAggregation
from flotilla.fl.aggregator.changes import Changes, Clock
from flotilla.fl.aggregator.checkpoint import CheckpointStore
from flotilla.fl.aggregator.desk import ClientDesk
from flotilla.fl.aggregator.evaluation import Evaluator
from flotilla.fl.aggregator.fold import RoundFold
from flotilla.fl.aggregator.intake import UpdateIntake
from flotilla.fl.aggregator.journal import BufferJournal
from flotilla.fl.aggregator.ledger import Ledger
from flotilla.fl.aggregator.pace import UploadPace
from flotilla.fl.aggregator.persist import Persister
from flotilla.fl.aggregator.privacy import DifferentialPrivacy
from flotilla.fl.aggregator.roster import Roster
from flotilla.fl.aggregator.state import EngineState
from flotilla.fl.aggregator.status import StatusReader
from flotilla.fl.strategies import Strategy
from flotilla.fl.wire import Layout


@dataclass(frozen=True)
class EngineParts:
    changes: Changes
    state: EngineState
    roster: Roster
    ledger: Ledger
    privacy: DifferentialPrivacy | None
    intake: UpdateIntake
    fold: RoundFold
    desk: ClientDesk
    persister: Persister
    status: StatusReader
    buffered: BufferedAggregation | None


def assemble(
    *,
    job: FederatedJob,
    sites: Sequence[str],
    strategy: Strategy,
    layout: Layout,
    update_layout: Layout,
    initial_model: bytearray,
    store: CheckpointStore,
    evaluator: Evaluator | None,
    clock: Clock,
    upload_pace: UploadPace | None = None,
) -> EngineParts:
    changes = Changes(clock)
    state = EngineState(
        rounds=job.spec.rounds, model=initial_model, layout=layout, changes=changes, clock=clock
    )
    roster = Roster(sites, changes=changes, clock=clock)
    ledger = Ledger()
    spec = job.spec.privacy
    clients = max(len(roster.sites), 1)
    privacy = DifferentialPrivacy(spec, clients=clients) if spec is not None else None
    intake = UpdateIntake(
        update_layout,
        max_norm=job.spec.limits.max_update_norm,
        parking=store.directory.parent / "uploads",  # broken uploads, until resumed
        buffers=job.spec.limits.receive_buffers,
        pace=upload_pace,
    )
    fold = RoundFold(rule=strategy.rule, layout=layout, privacy=privacy)
    buffered_spec = job.spec.strategy.buffered
    # An upload's body may take at most the round deadline, as in a synchronous round.
    upload_seconds = job.spec.clients.round_deadline_seconds
    buffer = (
        UpdateBuffer(buffered_spec, upload_seconds=upload_seconds)
        if buffered_spec is not None
        else None
    )
    persister = Persister(
        job=job,
        state=state,
        ledger=ledger,
        store=store,
        optimizer=strategy.optimizer,
        layout=layout,
        evaluator=evaluator,
        privacy=privacy,
        buffer=buffer,
    )
    buffered = (
        BufferedAggregation(
            state=state,
            roster=roster,
            fold=fold,
            buffer=buffer,
            journal=BufferJournal(store.directory.parent / "buffer"),
            persister=persister,
            optimizer=strategy.optimizer,
            layout=layout,
            clock=clock,
        )
        if buffer is not None
        else None
    )
    desk = ClientDesk(
        state=state,
        roster=roster,
        intake=intake,
        fold=fold,
        ledger=ledger,
        clock=clock,
        proximal_mu=strategy.proximal_mu,
        buffered=buffered,
    )
    status = StatusReader(
        job=job,
        state=state,
        roster=roster,
        ledger=ledger,
        privacy=privacy,
        links=intake.links,
        buffer=buffer,
    )
    return EngineParts(
        changes=changes,
        state=state,
        roster=roster,
        ledger=ledger,
        privacy=privacy,
        intake=intake,
        fold=fold,
        desk=desk,
        persister=persister,
        status=status,
        buffered=buffered,
    )
