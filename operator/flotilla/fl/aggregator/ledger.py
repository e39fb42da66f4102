"""The job's record of completed rounds and of the clients' evaluations of each model.

Federated metrics of round N's model arrive late (clients evaluate it when round
N+1 starts, or in the final evaluation), so a round's federated numbers are
computed from the evaluations whenever the ledger is read, never stored stale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from flotilla.fl.aggregator.records import (
    EvalReport,
    RoundRecord,
    federated_metrics,
    job_summary,
)


def _score(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


class Ledger:
    def __init__(self) -> None:
        self.rounds: list[RoundRecord] = []
        self.evaluations: dict[int, dict[str, EvalReport]] = {}

    def add_round(self, record: RoundRecord) -> None:
        self.rounds.append(record)

    def note_evaluation(self, site: str, version: int, report: Mapping[str, Any]) -> None:
        """Keep a client's hold-out metrics of model `version` (the model after that round)."""
        if version == 0 or not report.get("examples"):
            return  # the initial random model's metrics are no round's
        self.evaluations.setdefault(version, {})[site] = EvalReport(
            site=site,
            model_version=version,
            loss=float(report["loss"]),
            examples=int(report["examples"]),
            accuracy=_score(report.get("accuracy")),
            map50=_score(report.get("map50")),
        )

    def record_json(self, record: RoundRecord) -> dict[str, Any]:
        record.federated = federated_metrics(list(self.evaluations.get(record.round, {}).values()))
        return record.to_json() | record.headline()

    def history_json(self, *, after: int = 0) -> list[dict[str, Any]]:
        """The rows of rounds after `after`, oldest first."""
        return [self.record_json(record) for record in self.rounds if record.round > after]

    def last_json(self) -> dict[str, Any] | None:
        return self.record_json(self.rounds[-1]) if self.rounds else None

    def summary(self, *, job: str, phase: str, failure: str | None, rounds: int) -> dict[str, Any]:
        return job_summary(
            job=job, phase=phase, failure=failure, rounds=rounds, history=self.history_json()
        )

    def state_json(self) -> dict[str, Any]:
        return {
            "history": self.history_json(),
            "evaluations": {
                str(version): [asdict(report) for report in by_site.values()]
                for version, by_site in self.evaluations.items()
            },
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.rounds = [RoundRecord.from_json(r) for r in state.get("history", [])]
        self.evaluations = {
            int(version): {r["site"]: EvalReport(**r) for r in reports}
            for version, reports in state.get("evaluations", {}).items()
        }
