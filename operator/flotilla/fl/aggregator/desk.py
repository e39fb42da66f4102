"""What the HTTP layer calls: presence, long-polled tasks and status, the model, uploads.

Every check happens before an upload touches the aggregate: the round must be open, the
site sampled and not yet answered, then the body is received (bounded, validated) and
folded under the fold lock, so a round that closes meanwhile takes nothing half-done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from flotilla.fl.aggregator.intake import ReceivedUpdate, Rejected, Resumable, UploadTerms
from flotilla.fl.aggregator.records import ClientReport
from flotilla.fl.aggregator.state import EngineState, Phase

log = logging.getLogger(__name__)


class ClientDesk(EngineState):
    def task_for(self, site: str) -> dict[str, Any]:
        if site not in self.site_reports and not self.finished:
            action = "report"  # new here, or this aggregator restarted: say how your data is
        elif self.phase is Phase.TRAINING and site in self._sampled and site not in self._reports:
            action = "train"
        elif self.phase is Phase.EVALUATING and site in self._sampled - self._evaluated:
            action = "evaluate"
        elif self.phase in (Phase.DONE, Phase.FAILED):
            action = self.phase.value
            if site not in self._released:
                self._released.add(site)
                self._bump()
        else:
            action = "wait"
        return {
            "action": action,
            "round": self.current_round,
            "rounds": self.rounds,
            "modelVersion": self.completed,
            "deadlineSeconds": max(self._deadline - self.clock(), 0.0),
            "proximalMu": self.strategy.proximal_mu,
        }

    def receive_site_report(self, site: str, report: Mapping[str, Any]) -> None:
        """A client says its data is ready (with its label report) or why it is not."""
        before = self.site_reports.get(site)
        self.site_reports[site] = dict(report)
        if report.get("ready"):
            if before is not None and not before.get("ready"):
                log.info("site %s: its data is ready now; it joins the next round", site)
            ignored = (report.get("data") or {}).get("ignoredLabels")
            if ignored:
                log.warning("site %s: ignores labels the job does not know: %s", site, ignored)
        elif before != report:
            log.error(
                "site %s cannot train: %s; the rounds go on without it", site, report["error"]
            )
        self._bump()

    async def wait_task(self, site: str, *, timeout: float) -> dict[str, Any]:
        """The site's next action, once it has one (long-poll): never "wait" before timeout."""
        end = self.clock() + timeout
        while (task := self.task_for(site))["action"] == "wait":
            remaining = end - self.clock()
            if remaining <= 0:
                break
            await self._wait_changed(remaining)
        return task

    async def wait_released(self, *, timeout: float) -> None:
        """Give connected clients a moment to learn that the job ended, those whose data
        failed too: otherwise they would retry a gone aggregator until they give up."""
        end = self.clock() + timeout
        while not set(self.connected()) <= self._released and (remaining := end - self.clock()) > 0:
            await self._wait_changed(remaining)

    async def wait_status(self, *, after: int, timeout: float) -> dict[str, Any]:
        end = self.clock() + timeout
        while self.seq <= after and not self.finished and (remaining := end - self.clock()) > 0:
            await self._wait_changed(remaining)
        return self.status()

    def model_payload(self, version: int) -> bytearray:
        if version != self.completed:
            raise Rejected(
                410 if version < self.completed else 404,
                "stale_version" if version < self.completed else "unknown_version",
                f"model version {version} is not served; the current version is {self.completed}",
            )
        return self._global

    async def receive_update(
        self,
        *,
        site: str,
        round_number: int,
        body: AsyncIterator[bytes],
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
        self._check_open(site, round_number)
        minus = self._global_views if weights else None  # this round's, even if it ends meanwhile
        # The upload may not outlive its round: past the deadline it holds a buffer in vain.
        terms = UploadTerms(
            site=site,
            size=size or 0,
            seconds_left=self._deadline - self.clock(),
            round_number=round_number,
            weights=weights,
            resumable=resumable,
        )
        receiving = self.intake.receive(body, terms=terms, zstd=zstd, minus=minus)
        async with receiving as received, self._fold_lock:
            self._check_open(site, round_number)  # the round may have closed meanwhile
            await self._fold(site, received, examples, metrics)
        return {"accepted": True, "round": round_number, "updateNorm": received.update.norm}

    async def upload_held(self, *, site: str, round_number: int, upload_id: str) -> int:
        """The payload bytes of the site's broken upload that its resume builds on."""
        self._check_open(site, round_number)
        return await self.intake.held(site, upload_id, round_number)

    async def _fold(
        self, site: str, received: ReceivedUpdate, examples: int, metrics: Mapping[str, Any]
    ) -> None:
        aggregate = self._aggregate
        assert aggregate is not None
        if self._accumulator_zeroing is not None:  # the recycled accumulator, still being zeroed
            await self._accumulator_zeroing
        update = received.update
        weight, scales = float(examples), update.scales
        if self.privacy is not None:
            # DP-FedAvg: uniform weights, each delta clipped as it is folded (a scale, no copy).
            weight = 1.0
            scales = self.privacy.clipped_scales(scales, update.tensors, norm=update.norm)
        await asyncio.to_thread(
            aggregate.add, update.tensors, weight=weight, scales=scales, minus=update.minus
        )
        train = metrics.get("train", {})
        self._reports[site] = ClientReport(
            site=site,
            examples=examples,
            train_loss=float(train.get("loss", float("nan"))),
            train_accuracy=float(train.get("accuracy", float("nan"))),
            train_seconds=float(train.get("seconds", float("nan"))),
            wire_bytes=received.wire_bytes,
            norm=update.norm,
        )
        self._note_evaluation(site, metrics.get("eval"))
        self._bump()

    def receive_evaluation(self, *, site: str, version: int, metrics: Mapping[str, Any]) -> None:
        if self.phase is not Phase.EVALUATING or site not in self._sampled:
            raise Rejected(409, "not_evaluating", f"no evaluation is requested from {site!r} now")
        if version != self.completed:
            raise Rejected(409, "stale_version", f"evaluation of version {version} is not asked")
        self._note_evaluation(site, dict(metrics) | {"modelVersion": version})
        self._evaluated.add(site)
        self._bump()

    def _note_evaluation(self, site: str, report: Any) -> None:
        if isinstance(report, Mapping) and report.get("modelVersion") == self.completed:
            self.ledger.note_evaluation(site, self.completed, report)

    def _check_open(self, site: str, round_number: int) -> None:
        if self.phase is not Phase.TRAINING or round_number != self.current_round:
            raise Rejected(
                409,
                "round_closed",
                f"round {round_number} is not open (phase {self.phase.value}, "
                f"round {self.current_round})",
            )
        if site not in self._sampled:
            raise Rejected(403, "not_sampled", f"{site!r} was not sampled for round {round_number}")
        if site in self._reports:
            raise Rejected(409, "duplicate", f"{site!r} already sent its update for this round")
