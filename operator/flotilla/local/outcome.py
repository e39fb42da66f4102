"""What `flotilla run` reports once its processes are gone: the job's own outcome.

The aggregator decides the job (summary.json, or the last /v1/status it served); the
runner only adds what went wrong around it. A job the aggregator reported done stays done
when the runner had to stop the aggregator afterwards (MLflow slow to take the last
records, Ctrl-C during the final registration), and a summary that could not be written
is said, not turned into a failed job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flotilla.fl.aggregator.ending import SUMMARY_WRITE_FAILED, os_error_text

FINISHED = ("done", "failed")
INTERRUPTED = "interrupted; the state directory keeps the last completed round"
CLIENTS_GONE = "every client exited while the job was still running"
_LOG_TAIL_BYTES = 64 * 1024
_OUTCOME_STANDS = "; the job's outcome stands"


class RunFailed(Exception):
    """The local run could not complete; the message says which part failed and why."""


def stop_reason(*, phase: str | None, interrupted: bool, aggregator_exited: bool) -> str | None:
    """Why the run failed on its own account, or None when the job's outcome stands.

    `phase` is the last one the aggregator reported; "done" or "failed" is final whatever
    happened to the processes after it."""
    if phase in FINISHED:
        return None
    if interrupted:
        return INTERRUPTED
    if not aggregator_exited:
        return CLIENTS_GONE
    return None  # the aggregator ended on its own: its summary says how


def settle_summary(
    path: Path, *, last_status: dict[str, Any] | None, aggregator_log: Path
) -> dict[str, Any] | None:
    """The job's summary: summary.json, else one made from the last status when that was
    final; None when neither says how the job ended. A summary the aggregator could not
    write is named in `summaryError`."""
    problem = summary_write_problem(aggregator_log)
    summary: dict[str, Any]
    try:
        loaded = json.loads(path.read_text())
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} holds {type(loaded).__name__}, not an object")
        summary = loaded
    except (OSError, ValueError) as error:
        if last_status is None or last_status.get("phase") not in FINISHED:
            return None
        summary = summary_from_status(last_status)
        if problem is None:
            reason = os_error_text(error) if isinstance(error, OSError) else str(error)
            problem = f"could not read the aggregator's summary {path}: {reason}"
    if problem is not None:
        summary["summaryError"] = problem
    return summary


def summary_from_status(status: dict[str, Any]) -> dict[str, Any]:
    """A summary as far as /v1/status tells: the outcome, without the per-round history."""
    return {
        "job": status.get("job"),
        "phase": status.get("phase"),
        "failure": status.get("failure"),
        "rounds": status.get("rounds"),
        "roundsCompleted": status.get("completedRounds"),
        "history": [],
        "tracking": status.get("tracking") or {},
        "privacy": status.get("privacy"),
    }


def summary_write_problem(aggregator_log: Path) -> str | None:
    """The aggregator's last "could not write summary" line, if its log holds one."""
    try:
        with open(aggregator_log, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(size - _LOG_TAIL_BYTES, 0))
            tail = handle.read().decode(errors="replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        if SUMMARY_WRITE_FAILED in line:
            found = line[line.index(SUMMARY_WRITE_FAILED) :]
            return found.split(_OUTCOME_STANDS)[0]
    return None


def job_failed(summary: dict[str, Any]) -> bool:
    return summary.get("phase") != "done"
