"""Where the job stands: its phase, the rounds done, the served model and the round in play.

Each field has one writer, this class's methods: the round loop (engine.py) and the client
desk (desk.py) change the state only through them, and each change wakes the long-polls.
Everything runs on one event loop, so no lock is needed beyond the fold's (fold.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import torch

from flotilla.fl.aggregator.changes import Changes, Clock
from flotilla.fl.aggregator.errors import AlreadyAnswered, NotSampled, RoundClosed
from flotilla.fl.aggregator.records import ClientReport
from flotilla.fl.wire import Layout

log = logging.getLogger(__name__)


class Phase(StrEnum):
    WAITING = "waiting"
    TRAINING = "training"
    EVALUATING = "evaluating"
    DONE = "done"
    FAILED = "failed"


@dataclass
class _Play:
    """The round (or final evaluation) in play: who is asked, who answered, until when."""

    asked: frozenset[str] = frozenset()  # emptied when it closes
    sampled: frozenset[str] = frozenset()  # as it opened: kept for its record
    answers: dict[str, ClientReport] = field(default_factory=dict)
    evaluated: set[str] = field(default_factory=set)
    started: float = 0.0
    deadline: float = 0.0


class EngineState:
    def __init__(
        self, *, rounds: int, model: bytearray, layout: Layout, changes: Changes, clock: Clock
    ) -> None:
        self.rounds = rounds
        self.changes = changes
        self._layout = layout
        self._clock = clock
        self._phase = Phase.WAITING
        self._message = "waiting for clients"
        self._failure: str | None = None
        self._completed = 0  # the global model's version: rounds aggregated
        self._persisted = 0  # rounds whose checkpoint is durable
        self._attempt = 0
        self._final_evaluated = False
        self._model = model
        self._views = layout.views(model)
        self._play = _Play()

    # -- reading ---------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def message(self) -> str:
        return self._message

    @property
    def failure(self) -> str | None:
        return self._failure

    @property
    def finished(self) -> bool:
        return self._phase in (Phase.DONE, Phase.FAILED)

    @property
    def completed(self) -> int:
        return self._completed

    @property
    def persisted(self) -> int:
        return self._persisted

    @property
    def attempt(self) -> int:
        return self._attempt

    @property
    def final_evaluated(self) -> bool:
        return self._final_evaluated

    @property
    def current_round(self) -> int:
        return min(self._completed + 1, self.rounds)

    @property
    def global_model(self) -> bytearray:
        """The served global model buffer: replaced, never mutated, once a round completes."""
        return self._model

    @property
    def global_views(self) -> Mapping[str, torch.Tensor]:
        return self._views

    @property
    def asked(self) -> frozenset[str]:
        """The sites the round (or the final evaluation) in play waits for."""
        return self._play.asked

    @property
    def sampled(self) -> frozenset[str]:
        """The sites the last round sampled as it opened, whoever answered or left since."""
        return self._play.sampled

    @property
    def answers(self) -> Mapping[str, ClientReport]:
        return self._play.answers

    def evaluation_asked_of(self, site: str) -> bool:
        """`site` is to evaluate the final model and has not yet: in O(1), as every waiting
        site asks this when the evaluation opens."""
        return site in self._play.asked and site not in self._play.evaluated

    @property
    def round_started(self) -> float:
        return self._play.started

    @property
    def deadline(self) -> float:
        return self._play.deadline

    def all_answered(self) -> bool:
        return len(self._play.answers) >= len(self._play.asked)

    def all_evaluated(self) -> bool:
        return len(self._play.evaluated) >= len(self._play.asked)

    def check_open(self, site: str, round_number: int) -> None:
        """Raises unless `site` may send its update of `round_number` now."""
        if self._phase is not Phase.TRAINING or round_number != self.current_round:
            raise RoundClosed(
                f"round {round_number} is not open (phase {self._phase.value}, "
                f"round {self.current_round})"
            )
        if site not in self._play.asked:
            raise NotSampled(f"{site!r} was not sampled for round {round_number}")
        if site in self._play.answers:
            raise AlreadyAnswered(f"{site!r} already sent its update for this round")

    # -- the phase -------------------------------------------------------------------------

    def set_phase(self, phase: Phase, message: str) -> None:
        self._phase = phase
        self._message = message
        # Waiting gives no client work: the long-polls of /v1/task sleep through it (twice
        # a round, 1,000 wake-ups each at 1,000 sites).
        self.changes.bump(work=phase is not Phase.WAITING)

    def say(self, message: str) -> None:
        """A new message for /v1/status, no change worth waking anyone for."""
        self._message = message

    def fail(self, reason: str) -> None:
        self._failure = reason
        log.error("job failed: %s", reason)
        self.set_phase(Phase.FAILED, reason)

    # -- rounds ----------------------------------------------------------------------------

    def open_round(self, sampled: Iterable[str], *, attempt: int, seconds: float) -> None:
        """Round `current_round` trains on `sampled` for `seconds` at most."""
        asked = frozenset(sampled)
        now = self._clock()
        self._play = _Play(asked=asked, sampled=asked, started=now, deadline=now + seconds)
        self._attempt = attempt
        self.set_phase(
            Phase.TRAINING, f"round {self.current_round}: training on {len(asked)} clients"
        )

    def answer(self, report: ClientReport) -> None:
        """A sampled site's update is folded (the caller checked `check_open` first)."""
        self._play.answers[report.site] = report
        self.changes.bump()

    def close_round(self) -> list[ClientReport]:
        """No more updates for the round in play; the reports of those folded."""
        self._play.asked = frozenset()
        self.set_phase(Phase.WAITING, f"round {self.current_round}: aggregating")
        return list(self._play.answers.values())

    def advance(self, model: bytearray) -> bytearray:
        """A round is aggregated: `model` is served from now on. Returns the retired model."""
        retired, self._model = self._model, model
        self._views = self._layout.views(model)
        self._completed += 1
        self.changes.bump()
        return retired

    def persisted_through(self, completed: int) -> None:
        """The checkpoint of round `completed` is durable: that round counts as completed."""
        self._persisted = completed
        self.changes.bump()

    def forget(self, sites: Iterable[str]) -> None:
        """Sites that left are no longer waited for; those that answered stay counted."""
        gone = set(sites) - set(self._play.answers) - self._play.evaluated
        self._play.asked = self._play.asked - gone

    # -- the final evaluation --------------------------------------------------------------

    def open_evaluation(self, sites: Iterable[str], *, seconds: float) -> None:
        """The clients `sites` evaluate the final model, for `seconds` at most."""
        asked = frozenset(sites)
        deadline = self._clock() + seconds
        self._play = _Play(asked=asked, sampled=self._play.sampled, deadline=deadline)
        self.set_phase(Phase.EVALUATING, f"evaluating model {self._completed} on the clients")

    def evaluated_by(self, site: str) -> None:
        self._play.evaluated.add(site)
        self.changes.bump()

    def close_evaluation(self) -> None:
        self._play.asked = frozenset()
        self._final_evaluated = True

    # -- resume ----------------------------------------------------------------------------

    def restore(self, *, model: bytearray, completed: int, final_evaluated: bool) -> None:
        """Where a checkpoint left the job: `completed` rounds, all durable."""
        self._model, self._views = model, self._layout.views(model)
        self._completed = self._persisted = completed
        # A finished job given more rounds must evaluate its new final model too.
        self._final_evaluated = final_evaluated and completed >= self.rounds
