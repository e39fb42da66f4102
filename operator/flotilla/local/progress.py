"""What `flotilla run` prints: a bar per round as rounds complete, and a closing summary.

On a terminal the current round's line is redrawn as clients answer; anywhere
else (CI logs, pipes) only completed rounds are printed, one line each.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, TextIO

from flotilla.api import FederatedJob
from flotilla.fl.learning import SCORE_OF_TASK, SCORE_TITLES

BAR_WIDTH = 20


class Progress:
    def __init__(
        self, job: FederatedJob, *, out: TextIO | None = None, live: bool | None = None
    ) -> None:
        self._job = job
        self._out = out or sys.stdout
        self._live = self._out.isatty() if live is None else live
        self._score = SCORE_OF_TASK[job.spec.task]  # the headline score: accuracy or map50
        self._title = SCORE_TITLES[self._score]
        self._printed = 0  # rounds printed
        self._site_errors: dict[str, str] = {}  # as last shown
        self._pending = False  # a live line is on screen

    def started(self, *, state_dir: Path) -> None:
        spec = self._job.spec
        model = spec.model.name or spec.model.entrypoint
        buffered = spec.strategy.buffered
        # Buffered aggregation: a "round" is a server update, made every `size` updates.
        how = f" buffered by {buffered.size} updates" if buffered else ""
        self._print(
            f"Job {self._job.metadata.name}: {spec.rounds} rounds of {spec.strategy.name}{how}, "
            f"{len(spec.sites)} sites, model {model}\n"
            f"  state and logs: {state_dir}"
        )
        if spec.clients.node_selector:
            self._print(
                "  note: clients.nodeSelector picks nodes in a cluster; locally every site in "
                "spec.sites runs as a process"
            )

    def serving(self, url: str) -> None:
        self._print(f"  aggregator: {url}/v1/status, Prometheus metrics at {url}/metrics")

    def update(self, status: dict[str, Any]) -> None:
        for site, error in (status.get("siteErrors") or {}).items():
            if self._site_errors.get(site) != error:
                self.warn(f"site {site} cannot train; the rounds go on without it: {error}")
        self._site_errors = dict(status.get("siteErrors") or {})
        last = status.get("lastRound")
        if last and last["round"] > self._printed:
            self._clear_live()
            self._print(self._round_line(last))
            self._printed = last["round"]
        if self._live and status.get("phase") == "training":
            clients = status["clients"]
            line = (
                f"round {status['round']:>3}/{status['rounds']} training: "
                f"{clients['answered']}/{clients['sampled']} clients answered"
            )
            self._out.write("\r" + line.ljust(78))
            self._out.flush()
            self._pending = True

    def _round_line(self, record: dict[str, Any]) -> str:
        rounds = self._job.spec.rounds
        done = round(BAR_WIDTH * record["round"] / rounds)
        bar = "#" * done + "." * (BAR_WIDTH - done)
        return (
            f"round {record['round']:>3}/{rounds} [{bar}] "
            f"clients {len(record['answered'])}/{len(record['sampled'])}  "
            f"loss {_num(record['loss'])}  {self._title} {_num(record.get(self._score))}  "
            f"{record['duration_seconds']:.2f}s"
        )

    def finished(self, summary: dict[str, Any]) -> None:
        self._clear_live()
        for record in summary.get("history", [])[self._printed :]:
            self._print(
                f"round {record['round']:>3}/{summary['rounds']} "
                f"clients {record['clientsAnswered']}/{record['clientsSampled']}  "
                f"loss {_num(record['loss'])}  {self._title} {_num(record.get(self._score))}"
            )
        final = summary.get("final") or {}
        verdict = "succeeded" if summary.get("phase") == "done" else "FAILED"
        lines = [
            f"Job {summary['job']} {verdict}: {summary['roundsCompleted']}/{summary['rounds']} "
            "rounds"
        ]
        if summary.get("failure"):
            lines.append(f"  reason: {summary['failure']}")
        if final.get("central"):
            c = final["central"]
            lines.append(
                f"  test {self._title} {_num(c.get(self._score))}, loss {_num(c['loss'])} "
                f"({int(c['examples'])} held-out examples no client trained on)"
            )
        if final.get("federated"):
            f = final["federated"]
            lines.append(
                f"  client hold-out {self._title} {_num(f.get(self._score))}, loss "
                f"{_num(f['loss'])} ({int(f['clients'])} clients)"
            )
        for site, report in (summary.get("sites") or {}).items():
            if not report.get("ready"):
                lines.append(f"  site {site} could not read its data: {report.get('error')}")
        lines += _tracking_lines(summary.get("tracking") or {})
        lines.append(f"  state, checkpoints and logs: {summary['stateDir']}")
        self._print("\n".join(lines))

    def warn(self, text: str) -> None:
        self._clear_live()
        print(text, file=sys.stderr, flush=True)

    def _clear_live(self) -> None:
        if self._pending:
            self._out.write("\r" + " " * 78 + "\r")
            self._pending = False

    def _print(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()


def _tracking_lines(tracking: dict[str, Any]) -> list[str]:
    if not tracking.get("enabled"):
        reason = tracking.get("reason")
        return [f"  MLflow: not recorded ({reason})"] if reason else []
    lines = [f"  MLflow run {tracking['runId']} in experiment {tracking['experiment']!r}"]
    model = tracking.get("registeredModel")
    if model:
        lines.append(
            f"  model registered: models:/{model['name']}@{model['alias']} "
            f"(version {model['version']})"
        )
    promotion = tracking.get("promotion")
    if promotion:
        lines.append(f"  promotion: {promotion['outcome']}: {promotion['message']}")
    if tracking.get("state") != "synced":
        lines.append(
            f"  MLflow is behind ({tracking.get('pendingRounds')} rounds not sent: "
            f"{tracking.get('lastError')}); run again with the same --state-dir to send them"
        )
    uri = str(tracking.get("uri", ""))
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else uri
    lines.append(f"  browse it: {ui}")
    return lines


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "  -   "
    return f"{value:.4f}"
