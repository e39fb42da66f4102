"""What clients ask of the aggregator: their next task, the model, folding their update.

The desk holds no state of its own: it reads the engine's state and the roster, and
changes them through their methods. Every check happens before an upload touches the
aggregate: the round must be open, the site sampled and not yet answered; then the body
is received (bounded, validated) and folded in the fold's turn, so a round that closes
meanwhile takes nothing half-done. With buffered aggregation (buffered.py) there is no
round to be sampled for: every ready site is asked to train, and its upload is folded into
the open buffer with its staleness.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Callable, Mapping
from typing import Any

from flotilla.fl.aggregator.buffered import BufferedAggregation
from flotilla.fl.aggregator.changes import Clock
from flotilla.fl.aggregator.errors import (
    BadUpdateKind,
    EvaluationNotAsked,
    NotEvaluating,
    StaleVersion,
    UnknownVersion,
)
from flotilla.fl.aggregator.fold import RoundFold
from flotilla.fl.aggregator.intake import UpdateIntake
from flotilla.fl.aggregator.ledger import Ledger
from flotilla.fl.aggregator.records import ClientReport
from flotilla.fl.aggregator.roster import Roster
from flotilla.fl.aggregator.state import EngineState, Phase
from flotilla.fl.aggregator.terms import ReceivedUpdate, Resumable, UploadTerms

log = logging.getLogger(__name__)


class ClientDesk:
    def __init__(
        self,
        *,
        state: EngineState,
        roster: Roster,
        intake: UpdateIntake,
        fold: RoundFold,
        ledger: Ledger,
        clock: Clock,
        proximal_mu: float = 0.0,
        buffered: BufferedAggregation | None = None,
    ) -> None:
        self._state = state
        self._roster = roster
        self._intake = intake
        self._fold = fold
        self._ledger = ledger
        self._clock = clock
        self._proximal_mu = proximal_mu  # sent with each task (FedProx)
        self._buffered = buffered

    def seen(self, site: str, alive: Callable[[], bool]) -> None:
        """Presence: `site` asked something; `alive` tells later whether its link still is.
        (Who the site is, its token said: the HTTP layer checked that first.)"""
        self._roster.seen(site, alive)

    def task_for(self, site: str) -> dict[str, Any]:
        state = self._state
        if not self._roster.has_reported(site) and not state.finished:
            action = "report"  # new here, or this aggregator restarted: say how your data is
        elif state.phase is Phase.TRAINING and self._trains(site):
            action = "train"
        elif state.phase is Phase.EVALUATING and state.evaluation_asked_of(site):
            action = "evaluate"
        elif state.finished:
            action = state.phase.value
            self._roster.release(site)
        else:
            action = "wait"
        return {
            "action": action,
            "round": state.current_round,
            "rounds": state.rounds,
            "modelVersion": state.completed,
            "deadlineSeconds": self._seconds_left(),
            "proximalMu": self._proximal_mu,
        }

    def _trains(self, site: str) -> bool:
        """Whether the site is asked for an update now (the training phase is on)."""
        state = self._state
        if self._buffered is not None:  # every ready site, all the time
            return self._roster.is_ready(site)
        return site in state.asked and site not in state.answers

    def _seconds_left(self) -> float:
        if self._buffered is not None:  # no round deadline: the upload's own bound
            return self._buffered.buffer.upload_seconds
        return max(self._state.deadline - self._clock(), 0.0)

    async def wait_task(self, site: str, *, timeout: float) -> dict[str, Any]:
        """The site's next action, once it has one (long-poll): never "wait" before timeout.
        Only a phase that hands out work turns a "wait" into something else (the site's own
        report and upload are its own requests), so only its start wakes this."""
        end, changes = self._clock() + timeout, self._state.changes
        while (task := self.task_for(site))["action"] == "wait" and not changes.closed:
            remaining = end - self._clock()
            if remaining <= 0:
                break
            await self._state.changes.wait(remaining, work=True)
        return task

    async def wait_released(self, *, timeout: float) -> None:
        """Give connected clients a moment to learn that the job ended, those whose data
        failed too: otherwise they would retry a gone aggregator until they give up."""
        end, changes = self._clock() + timeout, self._state.changes
        while (
            not self._roster.all_released()
            and not changes.closed
            and (remaining := end - self._clock()) > 0
        ):
            await changes.wait(remaining)

    def receive_site_report(self, site: str, report: Mapping[str, Any]) -> None:
        """A client says its data is ready (with its label report) or why it is not."""
        self._roster.take_report(site, report)

    def model_payload(self, version: int) -> bytearray:
        completed = self._state.completed
        if version != completed:
            refused = StaleVersion if version < completed else UnknownVersion
            raise refused(
                f"model version {version} is not served; the current version is {completed}"
            )
        return self._state.global_model

    async def receive_update(
        self,
        *,
        site: str,
        round_number: int,
        body: AsyncIterable[bytes],
        zstd: bool,
        examples: int,
        metrics: Mapping[str, Any],
        weights: bool = False,
        size: int | None = None,
        resumable: Resumable | None = None,
    ) -> dict[str, Any]:
        """Fold one upload: a delta, or (`weights`) trained weights, from which the round's
        global model is subtracted on arrival. `size`: the body's announced bytes.
        `resumable`: its id, and where it resumes a broken one."""
        if self._buffered is not None:
            return await self._receive_buffered(
                site=site,
                round_number=round_number,
                body=body,
                zstd=zstd,
                examples=examples,
                metrics=metrics,
                weights=weights,
                size=size,
                resumable=resumable,
            )
        state = self._state
        state.check_open(site, round_number)
        minus = state.global_views if weights else None  # this round's, even if it ends meanwhile
        # The upload may not outlive its round: past the deadline it holds a buffer in vain.
        terms = UploadTerms(
            site=site,
            size=size or 0,
            seconds_left=state.deadline - self._clock(),
            round_number=round_number,
            weights=weights,
            resumable=resumable,
        )
        receiving = self._intake.receive(body, terms=terms, zstd=zstd, minus=minus)
        async with receiving as received, self._fold.turn():
            state.check_open(site, round_number)  # the round may have closed meanwhile
            await self._fold.add(received.update, examples=examples, release=received.release)
            state.answer(self._report(site, received, examples, metrics))
        return {"accepted": True, "round": round_number, "updateNorm": received.update.norm}

    async def _receive_buffered(
        self,
        *,
        site: str,
        round_number: int,
        body: AsyncIterable[bytes],
        zstd: bool,
        examples: int,
        metrics: Mapping[str, Any],
        weights: bool,
        size: int | None,
        resumable: Resumable | None,
    ) -> dict[str, Any]:
        """Fold one delta into the open buffer (buffered.py), whatever version it is on."""
        buffered = self._buffered
        assert buffered is not None
        if weights:  # the model it was trained on may be gone: only a delta says the change
            raise BadUpdateKind("buffered aggregation takes deltas, not weights")
        upload_id = resumable.upload_id if resumable is not None else None
        buffered.check(site, round_number, upload_id)
        terms = UploadTerms(
            site=site,
            size=size or 0,
            seconds_left=buffered.buffer.upload_seconds,
            round_number=round_number,
            resumable=resumable,
        )
        async with self._intake.receive(body, terms=terms, zstd=zstd) as received:
            folded = await buffered.fold(
                received,
                report=self._report(site, received, examples, metrics),
                round_number=round_number,
                upload_id=upload_id,
            )
        return {
            "accepted": True,
            "round": round_number,
            "updateNorm": received.update.norm,
            "staleness": folded.staleness,
            "serverUpdate": folded.version,
        }

    async def upload_held(self, *, site: str, round_number: int, upload_id: str) -> int:
        """The payload bytes of the site's broken upload that its resume builds on."""
        if self._buffered is not None:
            self._buffered.check(site, round_number, upload_id)
        else:
            self._state.check_open(site, round_number)
        return await self._intake.held(site, upload_id, round_number)

    def receive_evaluation(self, *, site: str, version: int, metrics: Mapping[str, Any]) -> None:
        state = self._state
        if state.phase is not Phase.EVALUATING or site not in state.asked:
            raise NotEvaluating(f"no evaluation is requested from {site!r} now")
        if version != state.completed:
            raise EvaluationNotAsked(f"evaluation of version {version} is not asked")
        self._note_evaluation(site, dict(metrics) | {"modelVersion": version})
        state.evaluated_by(site)

    def _report(
        self, site: str, received: ReceivedUpdate, examples: int, metrics: Mapping[str, Any]
    ) -> ClientReport:
        """What the site said with its update; its evaluation of the model it trained on
        goes to the ledger."""
        train = metrics.get("train", {})
        self._note_evaluation(site, metrics.get("eval"))
        return ClientReport(
            site=site,
            examples=examples,
            train_loss=float(train.get("loss", float("nan"))),
            train_accuracy=float(train.get("accuracy", float("nan"))),
            train_seconds=float(train.get("seconds", float("nan"))),
            wire_bytes=received.wire_bytes,
            norm=received.update.norm,
        )

    def _note_evaluation(self, site: str, report: Any) -> None:
        """A site's hold-out metrics of a model it was served (in a synchronous round, the
        current one; buffered, any the job made, as the site trained on it)."""
        if not isinstance(report, Mapping):
            return
        version = report.get("modelVersion")
        if type(version) is int and 0 < version <= self._state.completed:
            self._ledger.note_evaluation(site, version, report)
