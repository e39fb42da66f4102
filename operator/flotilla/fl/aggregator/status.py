"""The job as others see it: /v1/status and the summary, read from the engine's parts.

Pure reads: nothing here changes a part, so the status is what the parts hold, whenever
it is asked for. The keys are the wire's (clients, the operator and `flotilla run` read
them): add keys, never rename one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flotilla.api import FederatedJob
from flotilla.fl.aggregator.buffer import UpdateBuffer
from flotilla.fl.aggregator.ledger import Ledger
from flotilla.fl.aggregator.links import LinkHealth
from flotilla.fl.aggregator.privacy import DifferentialPrivacy
from flotilla.fl.aggregator.roster import Roster
from flotilla.fl.aggregator.state import EngineState, Phase


@dataclass(frozen=True)
class StatusReader:
    """The parts the status is read from."""

    job: FederatedJob
    state: EngineState
    roster: Roster
    ledger: Ledger
    privacy: DifferentialPrivacy | None
    links: LinkHealth
    buffer: UpdateBuffer | None = None  # buffered aggregation's books

    def status(self, *, tracking: dict[str, Any]) -> dict[str, Any]:
        state, roster, buffer = self.state, self.roster, self.buffer
        training = state.phase is Phase.TRAINING
        present = roster.present()
        if buffer is not None:  # every present client trains; answers are buffered updates
            sampled, answered = len(present) if training else 0, buffer.count if training else 0
        else:
            sampled, answered = len(state.asked), len(state.answers) if training else 0
        return {
            "job": self.job.metadata.name,
            "phase": state.phase.value,
            "round": state.current_round,
            "rounds": state.rounds,
            "completedRounds": state.persisted,
            "modelVersion": state.completed,
            "attempt": state.attempt,
            "seq": state.changes.seq,
            "message": state.message,
            "failure": state.failure,
            "clients": {
                "known": len(roster.sites),
                "present": len(present),
                "sampled": sampled,
                "answered": answered,
            },
            "lastRound": self.ledger.last_json(),
            "tracking": tracking,
            "siteErrors": roster.site_problems(),
            "labelMismatches": roster.label_mismatches(),
            "privacy": self._privacy(),
            "links": self.links.json(),
            "buffer": buffer.status() if buffer is not None else None,
        }

    def summary(self, *, tracking: dict[str, Any]) -> dict[str, Any]:
        state = self.state
        return self.ledger.summary(
            job=self.job.metadata.name,
            phase=state.phase.value,
            failure=state.failure,
            rounds=state.rounds,
        ) | {
            "mlflowRunId": tracking.get("runId"),
            "tracking": tracking,
            "sites": dict(sorted(self.roster.site_reports.items())),
            "privacy": self._privacy(),
        }

    def _privacy(self) -> dict[str, Any] | None:
        return self.privacy.status() if self.privacy is not None else None
